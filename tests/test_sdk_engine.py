"""pyiii.sdk against the real pyiii engine (``engine`` fixture of conftest.py), over
WebSocket and over the engine's in-process connector."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyiii.sdk import (
    InitOptions,
    InvocationError,
    ReconnectionConfig,
    TriggerAction,
    TriggerConfig,
    TriggerHandler,
    register_worker,
)

FAST = ReconnectionConfig(initial_delay_ms=20, max_delay_ms=100, jitter_factor=0)


async def worker(url: str, name: str, **kw):
    client = register_worker(url, InitOptions(worker_name=name, reconnection_config=FAST, **kw))
    await client.wait_connected(5)
    return client


async def test_call_between_two_sdk_workers(engine):
    a = await worker(engine.url, "alpha")
    b = await worker(engine.url, "beta")
    try:
        a.register_function("math::add", lambda d: {"c": d["a"] + d["b"]})

        async def boom(data):
            raise ValueError("boom")

        async def meta(data, metadata=None):
            return metadata

        a.register_function("math::boom", boom)
        a.register_function("math::meta", meta)
        await asyncio.sleep(0.05)
        assert await b.trigger_async({"function_id": "math::add", "payload": {"a": 2, "b": 3}}) == {"c": 5}
        with pytest.raises(InvocationError) as err:
            await b.trigger_async({"function_id": "math::boom", "payload": {}})
        assert err.value.code == "invocation_failed" and err.value.message == "boom"
        assert "ValueError" in err.value.stacktrace
        assert await b.trigger_async({"function_id": "math::meta", "payload": 1, "metadata": {"m": 1}}) == {"m": 1}
        with pytest.raises(InvocationError) as err:
            await b.trigger_async({"function_id": "nope::x"})
        assert err.value.code == "function_not_found"
        assert await b.trigger_async({"function_id": "math::add", "payload": {"a": 1, "b": 1},
                                      "action": TriggerAction.Void()}) is None
        listed = await b.trigger_async({"function_id": "engine::workers::list", "payload": {}})
        names = {w["name"] for w in listed["workers"]}
        assert {"alpha", "beta"} <= names
    finally:
        await a.shutdown_async()
        await b.shutdown_async()


async def test_in_process_connector(engine):
    local = pytest.importorskip("pyiii.engine.inprocess")
    a = await worker(engine.url, "inproc", connector=local.local_connector(engine.engine))
    b = await worker(engine.url, "remote")
    try:
        a.register_function("ip::echo", lambda d: d)
        await asyncio.sleep(0.05)
        assert await b.trigger_async({"function_id": "ip::echo", "payload": {"x": [1]}}) == {"x": [1]}
        assert await a.trigger_async({"function_id": "ip::echo", "payload": 7}) == 7
    finally:
        await a.shutdown_async()
        await b.shutdown_async()


class Hooks(TriggerHandler):
    def __init__(self) -> None:
        self.seen: list[tuple[str, TriggerConfig]] = []

    async def register_trigger(self, config: TriggerConfig) -> None:
        self.seen.append(("register", config))

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        self.seen.append(("unregister", config))


async def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_trigger_provider_and_reconnect_keeps_trigger_id(engine):
    provider = await worker(engine.url, "provider")
    consumer = await worker(engine.url, "consumer")
    try:
        hooks = Hooks()
        provider.register_trigger_type({"id": "webhook", "description": "hooks"}, hooks)
        consumer.register_function("c::on_hook", lambda d: d)
        trig = consumer.register_trigger({"type": "webhook", "function_id": "c::on_hook",
                                          "config": {"path": "/x"}, "metadata": {"k": "v"}})
        await wait_for(lambda: len(hooks.seen) == 1)
        kind, cfg = hooks.seen[0]
        assert (kind, cfg.id, cfg.function_id, cfg.config, cfg.metadata) == (
            "register", trig.id, "c::on_hook", {"path": "/x"}, {"k": "v"})

        old_id = consumer.worker_id
        await consumer._link.close()  # cut the consumer's link: it reconnects and replays
        await wait_for(lambda: consumer.worker_id not in (None, old_id) and
                       consumer.get_connection_state() == "connected")
        await wait_for(lambda: len(hooks.seen) >= 3)
        assert [k for k, _ in hooks.seen[1:3]] == ["unregister", "register"]
        assert hooks.seen[2][1].id == trig.id
        assert await provider.trigger_async({"function_id": "c::on_hook", "payload": 5}) == 5

        trig.unregister()
        await wait_for(lambda: hooks.seen[-1][0] == "unregister")
    finally:
        await provider.shutdown_async()
        await consumer.shutdown_async()


async def test_channel_between_workers(engine):
    a = await worker(engine.url, "chan-a")
    b = await worker(engine.url, "chan-b")
    try:
        async def consume(data):
            reader = data["body"]
            messages: list[str] = []
            reader.on_message(messages.append)
            chunks = [len(c) async for c in reader]
            return {"chunks": chunks, "messages": messages}

        b.register_function("chan::consume", consume)
        await asyncio.sleep(0.05)
        channel = await a.create_channel_async()
        call = asyncio.ensure_future(a.trigger_async({"function_id": "chan::consume",
                                                      "payload": {"body": channel.reader_ref}}))
        channel.writer.send_message('{"type":"set_status","status_code":201}')
        await channel.writer.write(b"z" * 70_000)
        await channel.writer.close()
        result = await asyncio.wait_for(call, 5)
        assert sum(result["chunks"]) == 70_000 and result["chunks"][0] == 65_536
        assert result["messages"] == ['{"type":"set_status","status_code":201}']
    finally:
        await a.shutdown_async()
        await b.shutdown_async()


def test_blocking_mode_against_engine(engine_in_thread):
    url = engine_in_thread
    a = register_worker(url, InitOptions(worker_name="sync-a"))
    b = register_worker(url, InitOptions(worker_name="sync-b"))
    try:
        a.register_function("sync::double", lambda d: d * 2)
        import time
        time.sleep(0.1)
        assert b.trigger({"function_id": "sync::double", "payload": 21}) == 42
    finally:
        a.shutdown()
        b.shutdown()


@pytest.fixture
def engine_in_thread():
    """An engine on its own loop in a thread, for the blocking (own-loop) client mode."""
    import threading

    from tests.conftest import start_engine

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start_engine(), loop).result(10)
    try:
        yield running.url
    finally:
        async def stop():
            await running.listener.close()
            await running.engine.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


async def test_a_script_client_in_its_own_thread_beside_the_engines_loop(engine):
    """pyiii.sdk's own loop (a background thread) and the engine's loop (this thread) both use
    pyiii.wswire; each thread batches and flushes only its own connections."""
    import threading

    server = await worker(engine.url, "server")
    server.register_function("twice::x", lambda d: {"v": d["v"] * 2})
    here = await worker(engine.url, "here")
    await asyncio.sleep(0.05)
    results: list[Any] = []
    errors: list[BaseException] = []

    def script() -> None:  # a plain script: the client runs its own loop in a thread
        client = register_worker(engine.url, InitOptions(worker_name="script", reconnection_config=FAST))
        try:
            for v in range(200):
                results.append(client.trigger({"function_id": "twice::x", "payload": {"v": v},
                                               "timeout_ms": 5000})["v"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.shutdown()

    thread = threading.Thread(target=script)
    thread.start()
    try:
        ours = await asyncio.gather(*(here.trigger_async({"function_id": "twice::x", "payload": {"v": v}})
                                      for v in range(200)))
        assert [r["v"] for r in ours] == [2 * v for v in range(200)]
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive() and errors == []
        assert results == [2 * v for v in range(200)]
    finally:
        await server.shutdown_async()
        await here.shutdown_async()


def test_write_batching_is_per_thread():
    """While this thread is inside a read (its writes are held until the read returns), a
    write made by another thread's loop must go to that thread's own batch."""
    import threading

    from pyiii import wswire

    wswire._state.batching = True  # as inside data_received on this thread
    try:
        seen: dict[str, Any] = {}

        def other_thread() -> None:
            seen["batching"], seen["dirty"] = wswire._state.batching, wswire._state.dirty

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(5)
        assert seen["batching"] is False
        assert seen["dirty"] is not wswire._state.dirty
    finally:
        wswire._state.batching = False
