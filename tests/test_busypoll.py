"""pyiii.busypoll: after a WebSocket message the loop keeps polling for one window, then
sleeps; on both loops pyiii runs on, and through the real wire (engine + pyiii.sdk)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest
import uvloop

from pyiii import busypoll
from pyiii.sdk import InitOptions, register_worker

pytestmark = pytest.mark.timeout(60)

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def window() -> Iterator[None]:
    saved = busypoll.window_s()
    yield
    busypoll.set_window_s(saved)


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the spinner's turns (each gives the CPU away once)."""
    count = [0]

    def counting_yield() -> None:
        count[0] += 1

    monkeypatch.setattr(busypoll, "_yield", counting_yield)
    return count


@pytest.mark.parametrize("raw, expected_us", [
    (None, 100.0), ("", 100.0), ("  ", 100.0), ("0", 0.0), ("250", 250.0), ("12.5", 12.5),
    ("-3", 0.0),
])
def test_window_from_the_environment(raw: str | None, expected_us: float) -> None:
    assert busypoll.parse_window_us(raw) == pytest.approx(expected_us / 1e6)


def test_a_window_above_the_maximum_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyiii.busypoll"):
        assert busypoll.parse_window_us("1e12") == pytest.approx(0.01)
    assert "PYIII_BUSY_POLL_US='1e12' is above the 10000 µs maximum; using 10000" in caplog.text


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_an_endless_window_is_refused(bad: float, window: None) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        busypoll.set_window_s(bad)


@pytest.mark.parametrize("raw", ["fast", "1e", "nan", "inf"])
def test_a_value_that_is_not_a_number_is_reported_and_the_default_used(
        raw: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyiii.busypoll"):
        assert busypoll.parse_window_us(raw) == pytest.approx(100e-6)
    assert f"PYIII_BUSY_POLL_US={raw!r} is not a number of microseconds; using 100" in caplog.text


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_the_loop_polls_for_one_window_then_sleeps(loop_name: str, window: None,
                                                   yields: list[int]) -> None:
    busypoll.set_window_s(0.02)

    async def scenario() -> tuple[bool, int, int, int, float]:
        loop = asyncio.get_running_loop()
        busypoll.touch(loop)
        armed = busypoll.polling(loop)
        await asyncio.sleep(0.01)  # inside the window: the spinner runs turn after turn
        during = yields[0]
        await asyncio.sleep(0.05)  # the window has closed
        after_window = yields[0]
        cpu0 = time.process_time()
        await asyncio.sleep(0.3)  # idle: the loop sleeps in the kernel again
        idle_cpu = time.process_time() - cpu0
        return armed, during, after_window, yields[0] - after_window, idle_cpu

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        armed, during, after_window, idle_turns, idle_cpu = runner.run(scenario())
    assert armed is True
    assert during >= 2  # zero-timeout polls, not one sleep (a sleeping loop makes none)
    assert idle_turns == 0
    assert idle_cpu < 0.05


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_each_message_extends_the_window(loop_name: str, window: None, yields: list[int]) -> None:
    busypoll.set_window_s(0.2)

    async def scenario() -> tuple[list[bool], bool]:
        loop = asyncio.get_running_loop()
        seen = []
        busypoll.touch(loop)
        for _ in range(4):  # a message every 50 ms keeps the 200 ms window open throughout
            await asyncio.sleep(0.05)
            seen.append(busypoll.polling(loop))
            busypoll.touch(loop)
        await asyncio.sleep(0.35)
        return seen, busypoll.polling(loop)

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        seen, after = runner.run(scenario())
    assert seen == [True, True, True, True]
    assert after is False


def test_the_standard_loop_polls_in_its_selector_and_queues_nothing(window: None,
                                                                   yields: list[int]) -> None:
    busypoll.set_window_s(0.3)

    async def scenario() -> tuple[int, float, int]:
        loop = asyncio.get_running_loop()
        busypoll.touch(loop)
        busypoll.touch(loop)  # the selector is wrapped once
        ready = len(loop._ready)  # type: ignore[attr-defined]
        started = time.perf_counter()
        await asyncio.sleep(0.005)  # a timer due inside the window still fires on time
        late = time.perf_counter() - started
        return ready, late, yields[0]

    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        selector = runner.get_loop()._selector  # type: ignore[attr-defined]
        ready, late, polls = runner.run(scenario())
        wrapped = runner.get_loop()._selector  # type: ignore[attr-defined]
    assert ready == 0
    assert late < 0.15  # 5 ms, not the 300 ms window
    assert polls > 0
    assert type(wrapped).__name__ == "_PollingSelector" and wrapped._inner is selector


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_window_zero_turns_it_off(loop_name: str, window: None, yields: list[int]) -> None:
    busypoll.set_window_s(0)

    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        busypoll.touch(loop)
        polling_at_once = busypoll.polling(loop)
        await asyncio.sleep(0.02)
        return polling_at_once, busypoll.polling(loop)

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        assert runner.run(scenario()) == (False, False)
    assert yields[0] == 0  # neither the callback nor the selector polled


async def test_messages_on_the_wire_open_the_window(engine, window: None) -> None:
    busypoll.set_window_s(0.3)  # wide enough to observe from the test
    loop = asyncio.get_running_loop()
    client = register_worker(engine.url, InitOptions(worker_name="poller"))
    try:
        await client.wait_connected(5)
        client.register_function("poll::echo", lambda data: data)
        await asyncio.sleep(0.1)  # the registration reaches the engine
        before = time.perf_counter()
        result = await client.trigger_async({"function_id": "poll::echo", "payload": {"n": 7}})
        assert result == {"n": 7}
        assert busypoll.polling(loop) is True  # engine and client share this loop here
        # the call's own messages opened the window: it ends a full window after them
        assert busypoll._spinner_of(loop).until >= before + 0.3
    finally:
        await client.shutdown_async()


def test_a_closed_loop_is_not_kept_alive(window: None) -> None:
    import gc
    import weakref

    busypoll.set_window_s(0.001)
    loop = asyncio.new_event_loop()
    busypoll.touch(loop)
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None
