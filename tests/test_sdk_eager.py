"""The SDK's eager handler path (pyiii/sdk/eager.py) with in-process workers: a handler's first
step runs during the delivery and gets a task only when it waits. Whatever path it takes, the
handler must see task semantics (current task, timeouts, task groups, cancellation), its own
copy of the context, and the same results, errors and deadlines as before."""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, InvocationError, TriggerAction, register_worker
from pyiii.sdk import calls
from pyiii.sdk.calls import SYNC_STREAK_MAX

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test_var", default="unset")


@pytest.fixture
async def pair(engine):
    """A callee ``a`` and a caller ``b``, both in the engine's process."""
    a = register_worker("inproc://a", InitOptions(worker_name="a",
                                                   connector=local_connector(engine.engine)))
    b = register_worker("inproc://b", InitOptions(worker_name="b",
                                                   connector=local_connector(engine.engine)))
    await a.wait_connected(5)
    await b.wait_connected(5)
    yield a, b
    await b.shutdown_async()
    await a.shutdown_async()


async def registered(engine: Any, *function_ids: str) -> None:
    """Function registrations travel as frames; wait until the engine knows them all."""
    for _ in range(300):
        if all(engine.engine.functions.get("default", f) is not None for f in function_ids):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"functions not registered: {function_ids}")


def call(client: Any, function_id: str, payload: Any = None, **extra: Any) -> Any:
    return client.trigger_async({"function_id": function_id, "payload": payload, **extra})


async def test_a_handler_that_waits_has_task_semantics(pair, engine):
    a, b = pair
    seen: dict[str, Any] = {}

    async def timed(data: Any) -> str:
        task = asyncio.current_task()
        seen["task_before_wait"] = task is not None
        async with asyncio.timeout(0.05):
            await asyncio.sleep(data["sleep"])
        seen["task_after_wait"] = asyncio.current_task() is not None
        return "ok"

    async def group(data: Any) -> int:
        async with asyncio.TaskGroup() as tg:
            one = tg.create_task(asyncio.sleep(0.01, result=1))
            two = tg.create_task(asyncio.sleep(0.02, result=2))
        return one.result() + two.result()

    async def immediate_timeout(data: Any) -> str:
        # asyncio.timeout needs the current task before the first wait (eager step)
        async with asyncio.timeout(5):
            return "quick"

    a.register_function("e::timed", timed)
    a.register_function("e::group", group)
    a.register_function("e::quick", immediate_timeout)
    await registered(engine, "e::timed", "e::group", "e::quick")

    assert await call(b, "e::timed", {"sleep": 0}) == "ok"
    assert seen == {"task_before_wait": True, "task_after_wait": True}
    with pytest.raises(InvocationError) as failed:
        await call(b, "e::timed", {"sleep": 1})
    assert failed.value.code == "invocation_failed"
    assert "TimeoutError" in (failed.value.stacktrace or "")
    assert await call(b, "e::group") == 3
    assert await call(b, "e::quick") == "quick"


async def test_contextvars_are_isolated_between_invocations(pair, engine):
    a, b = pair

    async def set_then_read(data: Any) -> list[str]:
        before = VAR.get()
        VAR.set(data["v"])
        await asyncio.sleep(0.01 * data["wait"])  # others run and set their own value meanwhile
        return [before, VAR.get()]

    def sync_reader(data: Any) -> str:
        VAR.set("thread")
        return VAR.get()

    a.register_function("e::var", set_then_read)
    a.register_function("e::var_sync", sync_reader)
    await registered(engine, "e::var", "e::var_sync")

    VAR.set("caller")
    results = await asyncio.gather(*[call(b, "e::var", {"v": f"v{i}", "wait": 5 - i % 5})
                                     for i in range(20)])
    # in-process, the handler's context is a copy of the delivering context: the caller's
    # value is visible, and no invocation sees another's value or leaks its own back
    assert results == [["caller", f"v{i}"] for i in range(20)]
    assert VAR.get() == "caller"
    assert await call(b, "e::var_sync") == "thread"
    assert VAR.get() == "caller"


async def test_deep_in_process_chains_and_errors(pair, engine):
    a, b = pair

    async def chain(data: Any) -> int:
        n = data["n"]
        if n == 0:
            return 0
        return 1 + await b.trigger_async({"function_id": "e::chain", "payload": {"n": n - 1}})

    def chain_sync_leaf(data: Any) -> int:
        return data * 2

    async def boom(data: Any) -> None:
        raise ValueError("bad input")

    async def boom_after_wait(data: Any) -> None:
        await asyncio.sleep(0)
        raise KeyError("later")

    a.register_function("e::chain", chain)
    a.register_function("e::double", chain_sync_leaf)
    a.register_function("e::boom", boom)
    a.register_function("e::boom2", boom_after_wait)
    await registered(engine, "e::chain", "e::double", "e::boom", "e::boom2")

    assert await call(b, "e::chain", {"n": 30}) == 30
    assert await call(b, "e::chain", {"n": 200}) == 200  # deeper than the eager nesting limit
    assert sorted(set(await asyncio.gather(*[call(b, "e::chain", {"n": 3})
                                             for _ in range(100)]))) == [3]
    assert await call(b, "e::double", 21) == 42
    with pytest.raises(InvocationError) as failed:
        await call(b, "e::boom")
    assert (failed.value.code, failed.value.message) == ("invocation_failed", "bad input")
    with pytest.raises(InvocationError) as failed:
        await call(b, "e::boom2")
    assert (failed.value.code, failed.value.message) == ("invocation_failed", "'later'")


async def test_deadlines_per_timeout_value_and_shutdown(pair, engine):
    a, b = pair
    started = asyncio.Event()

    async def slow(data: Any) -> str:
        started.set()
        await asyncio.sleep(data.get("s", 5))
        return "late"

    a.register_function("e::slow", slow)
    await registered(engine, "e::slow")
    loop = asyncio.get_running_loop()

    t0 = loop.time()
    outcomes = await asyncio.gather(call(b, "e::slow", {}, timeout_ms=100),
                                    call(b, "e::slow", {}, timeout_ms=300),
                                    call(b, "e::slow", {"s": 0.05}, timeout_ms=1000),
                                    return_exceptions=True)
    took = loop.time() - t0
    assert [getattr(o, "code", o) for o in outcomes] == ["TIMEOUT", "TIMEOUT", "late"]
    assert outcomes[0].message == "Invocation of e::slow timed out after 100 ms"
    assert outcomes[1].message == "Invocation of e::slow timed out after 300 ms"
    assert 0.15 <= took < 1.0

    started.clear()
    pending = asyncio.ensure_future(call(b, "e::slow", {}))
    await asyncio.wait_for(started.wait(), 2)
    await a.shutdown_async()  # the callee leaves: the engine fails its open calls
    with pytest.raises(InvocationError) as stopped:
        await asyncio.wait_for(pending, 3)
    assert stopped.value.code == "invocation_stopped"


async def test_trigger_nowait_and_sync_streaks(pair, engine, monkeypatch):
    monkeypatch.setattr(calls, "TURN_BUDGET_S", 60.0)  # counts only: a slow machine must not matter
    a, b = pair
    order: list[str] = []

    def plain(data: Any) -> Any:
        return data

    async def echo(data: Any) -> Any:
        return data

    a.register_function("e::echo", echo)
    a.register_function("e::plain", plain)
    await registered(engine, "e::echo", "e::plain")

    future = b.trigger_nowait({"function_id": "e::echo", "payload": {"x": 1}})
    assert await future == {"x": 1}

    async def ticker() -> None:
        for i in range(5):
            order.append(f"tick{i}")
            await asyncio.sleep(0)

    ticks = asyncio.ensure_future(ticker())
    # a long run of calls that all finish during the send must still let others run: the
    # caller yields once after every SYNC_STREAK_MAX of them
    for i in range(3 * (SYNC_STREAK_MAX + 1)):
        assert await call(b, "e::echo", i) == i
    assert order == ["tick0", "tick1", "tick2"]  # exactly one yield per streak
    for i in range(2 * (SYNC_STREAK_MAX + 1)):
        assert await call(b, "e::echo", i) == i
    assert order == [f"tick{i}" for i in range(5)]

    async def streak_of_other_task() -> int:
        done = 0
        while "y" not in order:
            await call(b, "e::echo", done)
            done += 1
        return done

    # a second caller task starts its own streak after the first one yields
    order.append("x")
    other = asyncio.ensure_future(streak_of_other_task())
    for i in range(SYNC_STREAK_MAX + 1):
        await call(b, "e::echo", i)  # the last one yields: `other` runs a whole streak
    order.append("y")
    assert await other == SYNC_STREAK_MAX + 1
    assert ticks.done()
    assert await call(b, "e::plain", [1, 2]) == [1, 2]


async def test_sync_answers_yield_once_the_turn_budget_is_spent(pair, engine, monkeypatch):
    monkeypatch.setattr(calls, "TURN_BUDGET_S", 0.002)
    a, b = pair

    async def busy(data: Any) -> Any:  # answers without waiting, after 1 ms of work
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
        return data

    a.register_function("e::busy", busy)
    await registered(engine, "e::busy")
    await call(b, "e::busy", 0)
    await asyncio.sleep(0)  # a fresh turn of the loop: its budget starts at the next answer
    ran: list[int] = []
    done = 0

    async def other() -> None:
        ran.append(done)

    asyncio.ensure_future(other())
    while not ran and done < 10:
        await call(b, "e::busy", done)
        done += 1
    # the 2 ms budget starts at the first answer and is spent after the 3rd or 4th (sooner if
    # the machine stalls), far below SYNC_STREAK_MAX: that answer yields, the other task runs
    assert ran and 1 <= ran[0] <= 3, (ran, done)


async def test_a_loop_of_void_calls_lets_other_tasks_run(pair, engine, monkeypatch):
    """Void calls never wait for anything: without the streak rule a loop of them would keep
    the event loop (and the handlers they start, and the socket) waiting until it ends."""
    monkeypatch.setattr(calls, "TURN_BUDGET_S", 60.0)  # counts only
    a, b = pair
    got: list[int] = []

    async def sink(data: Any) -> None:
        await asyncio.sleep(0)  # a handler that waits: it can finish only when the caller yields
        got.append(data)

    a.register_function("e::sink", sink)
    await registered(engine, "e::sink")
    order: list[str] = []

    async def ticker() -> None:
        for i in range(3):
            order.append(f"tick{i}")
            await asyncio.sleep(0)

    ticks = asyncio.ensure_future(ticker())
    void = {"action": TriggerAction.Void()}
    for i in range(3 * (SYNC_STREAK_MAX + 1)):
        assert await call(b, "e::sink", i, **void) is None
    assert order == ["tick0", "tick1", "tick2"]  # exactly one yield per streak
    assert 0 < len(got) < 3 * (SYNC_STREAK_MAX + 1)  # handlers ran while the loop went on
    await ticks
    for _ in range(100):
        if len(got) == 3 * (SYNC_STREAK_MAX + 1):
            break
        await asyncio.sleep(0.01)
    assert sorted(got) == list(range(3 * (SYNC_STREAK_MAX + 1)))
