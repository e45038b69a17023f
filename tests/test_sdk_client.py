"""pyiii.sdk against an in-memory fake engine: frame order, replay, calls, handlers."""

from __future__ import annotations

import asyncio

import pytest

import pyiii
from pyiii.protocol import Frame
from pyiii.sdk import (
    III,
    InitOptions,
    InvocationError,
    ReconnectionConfig,
    RegistrationRejectedError,
    TriggerAction,
    TriggerConfig,
    TriggerHandler,
    TriggerRequest,
    register_worker,
)
try:
    from tests.test_sdk_fakes import FakeEngine, FakeLink
except ImportError:  # tests/ without __init__.py
    from test_sdk_fakes import FakeEngine, FakeLink

FAST = ReconnectionConfig(initial_delay_ms=5, max_delay_ms=20, jitter_factor=0.0)


def opts(engine: FakeEngine, **kw) -> InitOptions:
    kw.setdefault("worker_name", "w1")
    return InitOptions(connector=engine.connector, reconnection_config=FAST, **kw)


class Recorder(TriggerHandler):
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, TriggerConfig]] = []
        self.fail = fail

    async def register_trigger(self, config: TriggerConfig) -> None:
        self.calls.append(("register", config))
        if self.fail:
            raise ValueError("bad config")

    async def unregister_trigger(self, config: TriggerConfig) -> None:
        self.calls.append(("unregister", config))


async def start(engine: FakeEngine, **kw) -> tuple[III, FakeLink]:
    client = register_worker("ws://127.0.0.1:1", opts(engine, **kw))
    link = await engine.link(0)
    return client, link


async def connected(engine: FakeEngine, **kw) -> tuple[III, FakeLink, dict]:
    """A client whose first link is up and whose register call was consumed."""
    client, link = await start(engine, **kw)
    await client.wait_connected(1)
    reg = await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    return client, link, reg


async def test_first_connection_frame_order(monkeypatch):
    monkeypatch.delenv("III_WORKER_NAME", raising=False)
    monkeypatch.delenv("III_NAMESPACE", raising=False)
    monkeypatch.setenv("III_ISOLATION", "in-process")
    engine = FakeEngine()
    client = register_worker("ws://x", opts(engine, worker_description="desc"))
    client.register_trigger_type({"id": "webhook", "description": "hooks"}, Recorder())
    client.register_function("math::add", lambda d: d["a"] + d["b"], description="adds")
    trig = client.register_trigger({"type": "webhook", "function_id": "math::add", "config": {"p": 1}})
    link = await engine.link(0)
    await link.expect(Frame.REGISTER_TRIGGER_TYPE, id="webhook", description="hooks")
    await link.expect(Frame.REGISTER_FUNCTION, id="math::add", description="adds")
    t = await link.expect(Frame.REGISTER_TRIGGER, trigger_type="webhook", function_id="math::add",
                          config={"p": 1}, id=trig.id)
    assert "namespace" not in t
    reg = await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register",
                            action={"type": "void"})
    assert "invocation_id" not in reg
    data = reg["data"]
    assert data["runtime"] == "python" and data["version"] == pyiii.__version__
    assert data["name"] == "w1" and data["description"] == "desc"
    assert data["isolation"] == "in-process" and data["features"] == ["large-messages.v1"]
    assert "namespace" not in data and isinstance(data["pid"], int)
    await client.wait_connected(1)
    assert client.get_connection_state() == "connected"
    assert client.worker_id == link.worker_id
    await link.nothing()
    await client.shutdown_async()


async def test_registration_after_connect_sent_at_once():
    engine = FakeEngine()
    client, link = await start(engine)
    await client.wait_connected(1)
    await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    ref = client.register_function("late::fn", lambda d: d)
    await link.expect(Frame.REGISTER_FUNCTION, id="late::fn")
    ref.unregister()
    await link.expect(Frame.UNREGISTER_FUNCTION, id="late::fn")
    ref.unregister()
    await link.nothing()
    await client.shutdown_async()


async def test_reconnect_replays_with_reattach_and_stable_ids():
    engine = FakeEngine()
    states: list[str] = []
    client, link = await start(engine)
    client.add_connection_state_listener(states.append)
    client.register_trigger_type({"id": "tt"}, Recorder())
    client.register_function("a::f", lambda d: d)
    trig = client.register_trigger({"type": "tt", "function_id": "a::f"})
    await client.wait_connected(1)
    first = [await link.next() for _ in range(4)]
    first_trigger = next(f for f in first if f["type"] == Frame.REGISTER_TRIGGER)

    engine.gate = asyncio.Event()  # hold the reconnect until a call is queued offline
    link.drop()  # a *normal* close: the SDK reconnects anyway
    while client.get_connection_state() == "connected":
        await asyncio.sleep(0.001)
    void = asyncio.ensure_future(client.trigger_async(
        {"function_id": "x::y", "payload": 1, "action": TriggerAction.Void()}))
    await asyncio.sleep(0.01)
    engine.gate.set()
    link2 = await engine.link(1)
    await void
    await link2.expect(Frame.REATTACH, previous_worker_id=link.worker_id, reattach_token=link.token)
    await link2.expect(Frame.REGISTER_TRIGGER_TYPE, id="tt", description="")
    await link2.expect(Frame.REGISTER_FUNCTION, id="a::f")
    again = await link2.expect(Frame.REGISTER_TRIGGER)
    assert again["id"] == first_trigger["id"] == trig.id
    await link2.expect(Frame.INVOKE_FUNCTION, function_id="x::y", data=1)  # queued while offline
    await link2.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    await client.wait_connected(1)
    assert client.worker_id == link2.worker_id
    assert "reconnecting" in states and states[-1] == "connected"

    trig.unregister()
    await link2.expect(Frame.UNREGISTER_TRIGGER, id=trig.id, trigger_type="tt")
    link2.drop()
    link3 = await engine.link(2)
    await link3.expect(Frame.REATTACH, previous_worker_id=link2.worker_id)
    await link3.expect(Frame.REGISTER_TRIGGER_TYPE)
    await link3.expect(Frame.REGISTER_FUNCTION)
    await link3.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    await client.shutdown_async()
    assert states[-1] == "disconnected"


async def test_connect_retries_with_backoff():
    engine = FakeEngine(refuse=3)
    client = register_worker("ws://x", opts(engine))
    await client.wait_connected(2)
    assert len(engine.links) == 1
    await client.shutdown_async()


async def test_max_retries_fails():
    engine = FakeEngine(refuse=100)
    cfg = ReconnectionConfig(initial_delay_ms=1, max_delay_ms=2, jitter_factor=0, max_retries=2)
    client = III("ws://x", InitOptions(connector=engine.connector, reconnection_config=cfg))
    with pytest.raises(ConnectionError):
        await client.wait_connected(2)
    assert client.get_connection_state() == "failed"
    await client.shutdown_async()


async def test_trigger_result_error_timeout():
    engine = FakeEngine()
    client, link = await start(engine)
    await client.wait_connected(1)
    await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")

    call = asyncio.ensure_future(client.trigger_async({"function_id": "math::add", "payload": {"a": 1},
                                                       "metadata": {"m": 1}}))
    frame = await link.expect(Frame.INVOKE_FUNCTION, function_id="math::add", data={"a": 1},
                              metadata={"m": 1})
    assert "action" not in frame and "namespace" not in frame
    link.push({"type": Frame.INVOCATION_RESULT, "invocation_id": frame["invocation_id"], "result": {"c": 5}})
    assert await call == {"c": 5}

    call = asyncio.ensure_future(client.trigger_async(TriggerRequest(function_id="m::boom")))
    frame = await link.expect(Frame.INVOKE_FUNCTION, function_id="m::boom")
    link.push({"type": Frame.INVOCATION_RESULT, "invocation_id": frame["invocation_id"],
               "error": {"code": "invocation_failed", "message": "boom", "stacktrace": "Traceback x"}})
    with pytest.raises(InvocationError) as err:
        await call
    assert (err.value.code, err.value.message, err.value.stacktrace) == ("invocation_failed", "boom", "Traceback x")
    assert err.value.function_id == "m::boom"

    with pytest.raises(InvocationError) as err:
        await client.trigger_async({"function_id": "slow::f", "timeout_ms": 30})
    assert err.value.code == "TIMEOUT"
    late = await link.expect(Frame.INVOKE_FUNCTION, function_id="slow::f")
    link.push({"type": Frame.INVOCATION_RESULT, "invocation_id": late["invocation_id"], "result": 1})
    assert not client._pending

    assert await client.trigger_async({"function_id": "n::v", "action": TriggerAction.Void()}) is None
    frame = await link.expect(Frame.INVOKE_FUNCTION, function_id="n::v", action={"type": "void"})
    assert "invocation_id" not in frame

    call = asyncio.ensure_future(client.trigger_async(
        {"function_id": "o::ship", "payload": {"id": 7}, "action": TriggerAction.Enqueue(queue="q1")}))
    frame = await link.expect(Frame.INVOKE_FUNCTION, function_id="o::ship",
                              action={"type": "enqueue", "queue": "q1"})
    link.push({"type": Frame.INVOCATION_RESULT, "invocation_id": frame["invocation_id"],
               "result": {"messageReceiptId": "r1"}})
    assert await call == {"messageReceiptId": "r1"}
    await client.shutdown_async()


async def test_pending_call_survives_reconnect():
    engine = FakeEngine()
    client, link = await start(engine)
    await client.wait_connected(1)
    await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    call = asyncio.ensure_future(client.trigger_async({"function_id": "s::f", "timeout_ms": 2000}))
    frame = await link.expect(Frame.INVOKE_FUNCTION, function_id="s::f")
    link.drop()
    link2 = await engine.link(1)
    await link2.expect(Frame.REATTACH)
    await link2.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    assert not call.done()
    link2.push({"type": Frame.INVOCATION_RESULT, "invocation_id": frame["invocation_id"],
                "error": {"code": "invocation_stopped", "message": "Invocation stopped"}})
    with pytest.raises(InvocationError) as err:
        await call
    assert err.value.code == "invocation_stopped"
    await client.shutdown_async()


async def test_namespaces(monkeypatch):
    monkeypatch.setenv("III_NAMESPACE", "orders")
    engine = FakeEngine()
    client, link, reg = await connected(engine)
    trig = client.register_trigger({"type": "cron", "function_id": "o::tick", "config": {"e": "* * *"}})
    await link.expect(Frame.REGISTER_TRIGGER, id=trig.id, namespace="orders")
    assert reg["data"]["namespace"] == "orders"
    for fid, ns, expected in (("o::x", None, "orders"), ("engine::functions::list", None, "default"),
                              ("o::y", "other", "other")):
        await client.trigger_async({"function_id": fid, "namespace": ns, "action": TriggerAction.Void()})
        await link.expect(Frame.INVOKE_FUNCTION, function_id=fid, namespace=expected)
    with pytest.raises(ValueError):
        await client.trigger_async({"function_id": "o::z", "namespace": "  "})
    with pytest.raises(ValueError):
        III("ws://x", InitOptions(namespace=" ", connector=engine.connector))
    await client.shutdown_async()


async def test_handlers_sync_async_metadata_and_errors():
    engine = FakeEngine()
    client, link, _ = await connected(engine)

    def sync_add(data):
        return {"c": data["a"] + data["b"]}

    async def async_meta(data, metadata):
        return {"data": data, "meta": metadata}

    def kw_meta(data, *, metadata=None):
        return metadata

    def extra(data, other=None):
        return other

    def boom(data):
        raise ValueError("boom")

    for fid, fn in (("m::add", sync_add), ("m::meta", async_meta), ("m::kw", kw_meta),
                    ("m::extra", extra), ("m::boom", boom)):
        client.register_function(fid, fn)
    client.register_function("m::http", {"url": "https://fn.example.com/run", "timeout_ms": 5000})
    for _ in range(6):
        await link.expect(Frame.REGISTER_FUNCTION)
    assert link.sent[-1]["invocation"] == {"url": "https://fn.example.com/run", "timeout_ms": 5000}

    async def call(fid, data, metadata=None, inv="i-1"):
        frame = {"type": Frame.INVOKE_FUNCTION, "invocation_id": inv, "function_id": fid, "data": data}
        if metadata is not None:
            frame["metadata"] = metadata
        link.push(frame)
        return await link.expect(Frame.INVOCATION_RESULT, invocation_id=inv, function_id=fid)

    assert (await call("m::add", {"a": 2, "b": 3}))["result"] == {"c": 5}
    res = await call("m::meta", [1], {"k": "v"})
    assert res["result"] == {"data": [1], "meta": {"k": "v"}}
    assert (await call("m::kw", None, {"k": 1}))["result"] == {"k": 1}
    assert (await call("m::extra", 1, {"k": 1}))["result"] is None
    res = await call("m::boom", {})
    assert res["error"]["code"] == "invocation_failed" and res["error"]["message"] == "boom"
    assert "ValueError" in res["error"]["stacktrace"] and "result" not in res
    res = await call("nope::x", {})
    assert res["error"]["code"] == "function_not_found"
    await client.shutdown_async()


async def test_ping_pong_and_ignored_frames():
    engine = FakeEngine()
    client, link = await start(engine)
    await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    link.push({"type": "observerack", "id": "x"})
    link.push({"type": "whatever"})
    link.push({"type": Frame.PING})
    await link.expect(Frame.PONG)
    await link.nothing()
    await client.shutdown_async()


async def test_trigger_provider_callbacks():
    engine = FakeEngine()
    client, link, _ = await connected(engine)
    ok, bad = Recorder(), Recorder(fail=True)
    client.register_trigger_type({"id": "ok"}, ok)
    client.register_trigger_type({"id": "bad"}, bad)
    for _ in range(2):
        await link.expect(Frame.REGISTER_TRIGGER_TYPE)

    binding = {"type": Frame.REGISTER_TRIGGER, "id": "t1", "trigger_type": "ok", "function_id": "c::f",
               "config": {"path": "/x"}, "metadata": {"k": "v"}, "namespace": "orders"}
    link.push(binding)
    ans = await link.expect(Frame.TRIGGER_REGISTRATION_RESULT, id="t1", trigger_type="ok", function_id="c::f")
    assert "error" not in ans
    kind, cfg = ok.calls[0]
    assert kind == "register" and (cfg.id, cfg.function_id, cfg.config, cfg.metadata, cfg.namespace) == (
        "t1", "c::f", {"path": "/x"}, {"k": "v"}, "orders")

    link.push({**binding, "trigger_type": "bad", "id": "t2"})
    ans = await link.expect(Frame.TRIGGER_REGISTRATION_RESULT, id="t2")
    assert ans["error"] == {"code": "trigger_registration_failed", "message": "bad config"}

    link.push({"type": Frame.UNREGISTER_TRIGGER, "id": "t1", "trigger_type": "ok", "function_id": "c::f",
               "config": {"path": "/x"}})
    for _ in range(50):
        if len(ok.calls) == 2:
            break
        await asyncio.sleep(0.005)
    assert ok.calls[1][0] == "unregister" and ok.calls[1][1].config == {"path": "/x"}

    client.unregister_trigger_type({"id": "ok"})
    await link.expect(Frame.UNREGISTER_TRIGGER_TYPE, id="ok")
    link.push({**binding, "id": "t3"})
    ans = await link.expect(Frame.TRIGGER_REGISTRATION_RESULT, id="t3")
    assert ans["error"]["code"] == "trigger_type_not_found"
    await client.shutdown_async()


async def test_function_conflict_is_not_fatal():
    engine = FakeEngine()
    client, link = await start(engine)
    await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    link.push({"type": Frame.REGISTRATION_REJECTED, "code": "FUNCTION_NAMESPACE_CONFLICT",
               "namespace": "default", "function_id": "dup::fn", "owner_worker_id": "o", "message": "m"})
    link.push({"type": Frame.PING})
    await link.expect(Frame.PONG)
    assert client.get_connection_state() == "connected"
    assert client.rejections[0]["function_id"] == "dup::fn"
    await client.shutdown_async()


async def test_worker_name_conflict_is_fatal():
    engine = FakeEngine()
    client, link = await start(engine)
    await client.wait_connected(1)
    await link.expect(Frame.INVOKE_FUNCTION, function_id="engine::workers::register")
    call = asyncio.ensure_future(client.trigger_async({"function_id": "a::b"}))
    await link.expect(Frame.INVOKE_FUNCTION, function_id="a::b")
    link.push({"type": Frame.REGISTRATION_REJECTED, "code": "WORKER_NAMESPACE_CONFLICT",
               "namespace": "default", "worker_name": "w1", "owner_worker_id": "other", "message": "taken"})
    with pytest.raises(RegistrationRejectedError) as err:
        await call
    assert err.value.worker_name == "w1" and err.value.owner_worker_id == "other"
    assert client.get_connection_state() == "failed"
    await asyncio.sleep(0.1)
    assert len(engine.links) == 1  # no reconnection
    with pytest.raises(RegistrationRejectedError):
        await client.trigger_async({"function_id": "a::b"})
    with pytest.raises(RegistrationRejectedError):
        await client.wait_connected(1)
    await client.shutdown_async()


async def test_shutdown_fails_pending_and_stops():
    engine = FakeEngine()
    client, link = await start(engine)
    await client.wait_connected(1)
    call = asyncio.ensure_future(client.trigger_async({"function_id": "a::b"}))
    await asyncio.sleep(0.01)
    await client.shutdown_async()
    with pytest.raises(InvocationError) as err:
        await call
    assert err.value.code == "SHUTDOWN"
    assert link.closed and client.get_connection_state() == "disconnected"
    await asyncio.sleep(0.05)
    assert len(engine.links) == 1


async def test_sync_api_refused_on_loop_thread():
    engine = FakeEngine()
    client, _ = await start(engine)
    with pytest.raises(RuntimeError, match="trigger_async"):
        client.trigger({"function_id": "a::b"})
    with pytest.raises(RuntimeError, match="shutdown_async"):
        client.shutdown()
    await client.shutdown_async()


async def test_sync_handler_can_call_blocking_trigger():
    engine = FakeEngine()
    engine.answers["other::fn"] = lambda frame: {"echo": frame["data"]}
    client, link, _ = await connected(engine)

    def handler(data):
        return client.trigger({"function_id": "other::fn", "payload": data})

    client.register_function("me::fn", handler)
    await link.expect(Frame.REGISTER_FUNCTION)
    link.push({"type": Frame.INVOKE_FUNCTION, "invocation_id": "i9", "function_id": "me::fn", "data": 4})
    res = await link.expect(Frame.INVOCATION_RESULT, timeout=3, invocation_id="i9")
    assert res["result"] == {"echo": 4}
    await client.shutdown_async()


def test_own_loop_mode_blocking_api():
    """No running loop: the client runs its own loop thread and the sync API works."""
    engine = FakeEngine()
    engine.answers["math::add"] = lambda frame: {"c": frame["data"]["a"] + frame["data"]["b"]}
    states: list[str] = []
    client = register_worker("ws://x", opts(engine))
    try:
        assert client.get_connection_state() == "connected"
        client.add_connection_state_listener(states.append)
        assert client.trigger({"function_id": "math::add", "payload": {"a": 2, "b": 3}}) == {"c": 5}
        assert client.trigger({"function_id": "x::y", "action": TriggerAction.Void()}) is None

        async def from_another_loop():
            return await client.trigger_async({"function_id": "math::add", "payload": {"a": 1, "b": 1}})

        assert asyncio.run(from_another_loop()) == {"c": 2}
    finally:
        client.shutdown()
    assert states == ["connected", "disconnected"]
    assert not client._thread.is_alive()


async def test_registrations_during_replay_are_not_lost():
    engine = FakeEngine()
    engine.slow = True
    client = register_worker("ws://x", opts(engine))
    refs = [client.register_function(f"r::{i}", lambda d: d) for i in range(20)]
    link = await engine.link(0)
    while len(link.sent) < 3:  # replay under way
        await asyncio.sleep(0)
    assert client._replay_buf is not None
    client.register_function("r::late", lambda d: d)
    refs[0].unregister()
    void = asyncio.ensure_future(client.trigger_async({"function_id": "v::x", "action": TriggerAction.Void()}))
    await client.wait_connected(1)
    await void
    frames = [await link.next() for _ in range(24)]
    kinds = [(f["type"], f.get("id") or f.get("function_id")) for f in frames]
    assert kinds[:20] == [(Frame.REGISTER_FUNCTION, f"r::{i}") for i in range(20)]
    assert kinds[20:24] == [(Frame.REGISTER_FUNCTION, "r::late"), (Frame.UNREGISTER_FUNCTION, "r::0"),
                            (Frame.INVOKE_FUNCTION, "v::x"), (Frame.INVOKE_FUNCTION, "engine::workers::register")]
    await link.nothing()
    await client.shutdown_async()
