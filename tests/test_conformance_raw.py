"""spec/protocol.md §12 conformance scenarios driven by raw JSON clients."""

from __future__ import annotations

import asyncio
import re
import uuid

import aiohttp
import pytest

from .conftest import GRACE_MS, Raw, settle

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


async def workers(client: Raw) -> list[dict]:
    return (await client.call("engine::workers::list", {}))["result"]["workers"]


async def test_01_greeting(raw):
    a = await raw(register=False)
    assert set(a.greeting) == {"type", "worker_id", "reattach_token"}
    assert a.greeting["type"] == "workerregistered"
    assert UUID.match(a.worker_id) and UUID.match(a.token) and a.worker_id != a.token
    await a.no_frame()


async def test_02_routes(engine):
    base = engine.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/") as resp:
            assert resp.status == 426
        for path in ("/nope", "/ws/channels/x?key=y&dir=read"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(base + path)
            assert err.value.status == 404


async def test_03_register_metadata(raw):
    a = await raw(register=False)
    await a.register("alpha", runtime="python", version="9", pid=42, description="a\u202eb")
    await a.no_frame()
    b = await raw(register=False)
    rows = await workers(b)
    assert [r["name"] for r in rows] == ["alpha"]
    row = rows[0]
    assert row["description"] == "ab" and row["namespace"] == "default"
    assert row["status"] == "connected" and row["isolation"] is None
    assert row["function_count"] == 0 and row["runtime"] == "python" and row["version"] == "9"


async def test_04_held_registrations_namespaces(raw):
    a = await raw(register=False)
    await a.send({"type": "registerfunction", "id": "ns::f"})
    await asyncio.sleep(0.1)
    await a.register("held-a", namespace="orders")
    await a.sync()
    b = await raw("b")
    i1 = await b.call("ns::f", {})
    assert i1["error"] == {"code": "function_not_found", "message":
                           "Function ns::f not found in namespace default. "
                           "It is registered in namespace(s): orders."}
    iid = str(uuid.uuid4())
    await b.send({"type": "invokefunction", "invocation_id": iid, "function_id": "ns::f",
                  "namespace": "orders", "data": {}})
    call = await a.recv_type("invokefunction")
    assert call["invocation_id"] == iid


async def test_05_grace_fallback(raw):
    a = await raw(register=False)
    await a.send({"type": "registerfunction", "id": "g::f"})
    b = await raw("b")
    await asyncio.sleep(0.05)
    first = await b.call("g::f", {})
    assert first["error"]["code"] == "function_not_found"
    await asyncio.sleep(GRACE_MS / 1000 + 0.3)
    iid = str(uuid.uuid4())
    await b.send({"type": "invokefunction", "invocation_id": iid, "function_id": "g::f"})
    assert (await a.recv_type("invokefunction"))["invocation_id"] == iid
    await a.register("late", namespace="x")
    rows = {r["name"]: r for r in await workers(b)}
    assert rows["late"]["namespace"] == "default"
    iid2 = str(uuid.uuid4())
    await b.send({"type": "invokefunction", "invocation_id": iid2, "function_id": "g::f"})
    assert (await a.recv_type("invokefunction"))["invocation_id"] == iid2


async def test_06_held_invocations_keep_order(raw):
    a = await raw(register=False)
    iid = str(uuid.uuid4())
    await a.send({"type": "registerfunction", "id": "self::f"})
    await a.send({"type": "invokefunction", "invocation_id": iid, "function_id": "self::f"})
    await a.register("selfie")
    call = await a.recv_type("invokefunction")
    assert call["function_id"] == "self::f" and call["invocation_id"] == iid


async def test_07_sync_call(raw):
    a = await raw("alpha")
    await a.send({"type": "registerfunction", "id": "math::add"})
    await a.sync()
    b = await raw("beta")
    iid = str(uuid.uuid4())
    await b.send({"type": "invokefunction", "invocation_id": iid, "function_id": "math::add",
                  "data": {"a": 2, "b": 3}})
    call = await a.recv_type("invokefunction")
    assert call == {"type": "invokefunction", "invocation_id": iid, "function_id": "math::add",
                    "data": {"a": 2, "b": 3},
                    "caller": {"worker_id": b.worker_id, "worker_name": "beta"}}
    await a.send({"type": "invocationresult", "invocation_id": iid, "function_id": "math::add",
                  "result": {"c": 5}})
    assert await b.recv() == {"type": "invocationresult", "invocation_id": iid,
                              "function_id": "math::add", "result": {"c": 5}}


async def test_09_unknown_function(raw):
    b = await raw("b")
    answer = await b.call("nope::x", {})
    assert answer["error"] == {"code": "function_not_found",
                               "message": "Function nope::x not found in namespace default."}


async def test_10_frame_details(raw):
    a = await raw("echoer")
    await a.send({"type": "registerfunction", "id": "util::echo"})
    await a.sync()
    b = await raw("b")
    # (a) void with an id: a leg id goes to A, nothing comes back to B
    await b.send({"type": "invokefunction", "invocation_id": str(uuid.uuid4()),
                  "function_id": "util::echo", "action": {"type": "void"}, "data": 1})
    call = await a.serve_one({"x": 1})
    assert UUID.match(call["invocation_id"])
    await b.no_frame()
    # (b) no data: A receives "data": null
    task = asyncio.ensure_future(b.call("util::echo"))
    call = await a.serve_one(None)
    assert "data" in call and call["data"] is None
    # (c) metadata travels apart from data; a null result has neither result nor error
    answer = await task
    assert "result" not in answer and "error" not in answer
    task = asyncio.ensure_future(b.call("util::echo", {"d": 1}, metadata={"m": 1}))
    call = await a.serve_one(None)
    assert call["metadata"] == {"m": 1} and call["data"] == {"d": 1}
    await task
    # (d) a binding without config reaches the provider with "config": null
    p = await raw("provider")
    await p.send({"type": "registertriggertype", "id": "webhook"})
    c = await raw("consumer")
    await c.send({"type": "registertrigger", "id": "td", "trigger_type": "webhook",
                  "function_id": "c::f"})
    frame = await p.recv_type("registertrigger")
    assert "config" in frame and frame["config"] is None


async def test_11a_callee_disconnects(raw):
    a = await raw("slowpoke")
    await a.send({"type": "registerfunction", "id": "slow::f"})
    await a.sync()
    b = await raw("b")
    task = asyncio.ensure_future(b.call("slow::f", {}))
    await a.recv_type("invokefunction")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await a.close()
    answer = await task
    assert loop.time() - started < 1.0
    assert answer["error"] == {"code": "invocation_stopped", "message": "Invocation stopped"}
    assert (await b.call("slow::f", {}))["error"]["code"] == "function_not_found"


async def test_11b_caller_disconnects_and_stranger_answers(raw, engine):
    a = await raw("callee")
    await a.send({"type": "registerfunction", "id": "slow::g"})
    await a.sync()
    b = await raw("b")
    c = await raw("c")
    await b.send({"type": "invokefunction", "invocation_id": str(uuid.uuid4()),
                  "function_id": "slow::g"})
    leg = (await a.recv_type("invokefunction"))["invocation_id"]
    await b.close()
    await settle(0.1)
    await c.send({"type": "invocationresult", "invocation_id": leg, "result": 1})
    await a.send({"type": "invocationresult", "invocation_id": leg, "result": 2})
    await a.sync()
    await c.sync()
    rows = {r["name"]: r for r in await workers(c)}
    assert rows["callee"]["active_invocations"] == 0
    assert engine.engine.router.legs == {}


async def test_11c_stranger_answer_ignored(raw):
    a = await raw("callee")
    await a.send({"type": "registerfunction", "id": "slow::h"})
    await a.sync()
    b = await raw("b")
    c = await raw("c")
    iid = str(uuid.uuid4())
    await b.send({"type": "invokefunction", "invocation_id": iid, "function_id": "slow::h"})
    leg = (await a.recv_type("invokefunction"))["invocation_id"]
    await c.send({"type": "invocationresult", "invocation_id": leg, "result": "forged"})
    await c.sync()
    await a.send({"type": "invocationresult", "invocation_id": leg, "result": "real"})
    answer = await b.recv_type("invocationresult")
    assert answer["result"] == "real"


async def test_12_reattach(raw):
    a = await raw("r")
    await a.send({"type": "registerfunction", "id": "r::f"})
    await a.sync()
    a2 = await raw(register=False)
    await a2.send({"type": "reattach", "previous_worker_id": a.worker_id,
                   "reattach_token": a.token})
    await a2.send({"type": "registerfunction", "id": "r::f"})
    await a2.register("r")
    assert await a.closed() == 1000
    b = await raw("b")
    task = asyncio.ensure_future(b.call("r::f", {}))
    await a2.serve_one("second")
    assert (await task)["result"] == "second"


async def test_12_reattach_wrong_token(raw):
    a = await raw("r")
    await a.send({"type": "registerfunction", "id": "r::f"})
    await a.sync()
    a2 = await raw(register=False)
    await a2.send({"type": "reattach", "previous_worker_id": a.worker_id,
                   "reattach_token": str(uuid.uuid4())})
    await a2.send({"type": "registerfunction", "id": "r::f"})
    await a2.register("r")
    rejected = await a2.recv()
    assert rejected["type"] == "registrationrejected"
    assert rejected["code"] == "WORKER_NAMESPACE_CONFLICT"
    assert rejected["worker_name"] == "r" and rejected["owner_worker_id"] == a.worker_id
    assert await a2.closed() == 1008
    b = await raw("b")
    task = asyncio.ensure_future(b.call("r::f", {}))
    await a.serve_one("first")
    assert (await task)["result"] == "first"


async def test_14_function_conflict(raw):
    a = await raw("a")
    await a.send({"type": "registerfunction", "id": "dup::fn"})
    await a.sync()
    b = await raw("b")
    await b.send({"type": "registerfunction", "id": "dup::fn"})
    rejected = await b.recv()
    message = rejected.pop("message")
    assert "dup::fn" in message
    assert rejected == {"type": "registrationrejected", "code": "FUNCTION_NAMESPACE_CONFLICT",
                        "namespace": "default", "function_id": "dup::fn",
                        "owner_worker_id": a.worker_id}
    c = await raw("c")
    task = asyncio.ensure_future(c.call("dup::fn", {}))
    await a.serve_one("a")
    assert (await task)["result"] == "a"
    await a.close()
    await settle(0.1)
    assert (await c.call("dup::fn", {}))["error"]["code"] == "function_not_found"
    await b.sync()  # b stayed open


async def test_15_reserved_ids(raw):
    b = await raw("b")
    await b.send({"type": "registerfunction", "id": "engine::functions::list"})
    r1 = await b.recv()
    assert r1["code"] == "FUNCTION_NAMESPACE_CONFLICT" and r1["owner_worker_id"] == ""
    b2 = await raw("b2", namespace="orders")
    await b2.send({"type": "registerfunction", "id": "engine::queue::x"})
    r2 = await b2.recv()
    assert r2["code"] == "FUNCTION_NAMESPACE_CONFLICT" and r2["owner_worker_id"] == ""
    assert r2["namespace"] == "orders"
    b3 = await raw("b3")
    await b3.send({"type": "registerfunction", "id": "engine::queue::x"})
    await b3.no_frame()
    listed = await b.call("engine::functions::list", {})
    ids = [r["function_id"] for r in listed["result"]["functions"]]
    assert "engine::queue::x" in ids


async def test_17_binding_before_provider(raw):
    c = await raw("c")
    await c.send({"type": "registertrigger", "id": "t1", "trigger_type": "webhook",
                  "function_id": "c::on_hook", "config": {"path": "/x"},
                  "metadata": {"k": "v"}})
    await c.no_frame()
    listed = await c.call("engine::registered-triggers::list", {"include_pending": True})
    rows = listed["result"]["registered_triggers"]
    assert [(r["id"], r["status"]) for r in rows] == [("t1", "pending")]
    p = await raw("p")
    await p.send({"type": "registertriggertype", "id": "webhook"})
    assert await p.recv() == {"type": "registertrigger", "id": "t1", "trigger_type": "webhook",
                              "function_id": "c::on_hook", "config": {"path": "/x"},
                              "metadata": {"k": "v"}}
    listed = await c.call("engine::registered-triggers::list", {})
    assert [r["status"] for r in listed["result"]["registered_triggers"]] == ["active"]


async def test_18_provider_rejection(raw):
    p = await raw("p")
    await p.send({"type": "registertriggertype", "id": "webhook"})
    await p.sync()
    c = await raw("c")
    await c.send({"type": "registertrigger", "id": "t2", "trigger_type": "webhook",
                  "function_id": "c::f", "config": {}})
    assert (await p.recv_type("registertrigger"))["id"] == "t2"
    error = {"code": "trigger_registration_failed", "message": "bad config"}
    await p.send({"type": "triggerregistrationresult", "id": "t2", "error": error})
    assert await c.recv() == {"type": "triggerregistrationresult", "id": "t2",
                              "trigger_type": "webhook", "function_id": "c::f", "error": error}
    listed = await c.call("engine::registered-triggers::list", {"include_pending": True})
    assert listed["result"]["registered_triggers"][0]["status"] == "pending"
    await p.send({"type": "registertriggertype", "id": "webhook"})
    assert (await p.recv_type("registertrigger"))["id"] == "t2"


async def test_19_unbind_and_consumer_departure(raw):
    p = await raw("p")
    await p.send({"type": "registertriggertype", "id": "webhook"})
    c = await raw("c")
    await c.send({"type": "registertrigger", "id": "t1", "trigger_type": "webhook",
                  "function_id": "c::on_hook", "config": {"a": 1}, "metadata": {"m": 2}})
    await p.recv_type("registertrigger")
    d = await raw("d")
    await d.send({"type": "unregistertrigger", "id": "t1", "trigger_type": "webhook"})
    await d.sync()
    await p.no_frame()
    await c.send({"type": "unregistertrigger", "id": "t1", "trigger_type": "webhook"})
    assert await p.recv() == {"type": "unregistertrigger", "id": "t1", "trigger_type": "webhook",
                              "function_id": "c::on_hook", "config": {"a": 1},
                              "metadata": {"m": 2}}
    c2 = await raw("c2")
    await c2.send({"type": "registertrigger", "id": "t3", "trigger_type": "webhook",
                   "function_id": "c2::f"})
    assert (await p.recv_type("registertrigger"))["id"] == "t3"
    await c2.close()
    frame = await p.recv()
    assert frame["type"] == "unregistertrigger" and frame["id"] == "t3"


async def test_20_provider_departure_standby(raw):
    p1 = await raw("p1")
    await p1.send({"type": "registertriggertype", "id": "webhook"})
    c = await raw("c")
    await c.send({"type": "registertrigger", "id": "t4", "trigger_type": "webhook",
                  "function_id": "c::f", "config": {"z": 1}, "metadata": {"y": 2}})
    await p1.recv_type("registertrigger")
    p2 = await raw("p2")
    await p2.send({"type": "registertriggertype", "id": "webhook"})
    await p2.no_frame()
    await p1.close()
    frame = await p2.recv()
    assert frame == {"type": "registertrigger", "id": "t4", "trigger_type": "webhook",
                     "function_id": "c::f", "config": {"z": 1}, "metadata": {"y": 2}}
    info = await c.call("engine::triggers::info", {"id": "webhook"})
    assert info["result"]["worker_name"] == "p2"
    await p2.close()
    await settle(0.1)
    listed = await c.call("engine::registered-triggers::list", {"include_pending": True})
    assert listed["result"]["registered_triggers"][0]["status"] == "pending"
    p3 = await raw("p3")
    await p3.send({"type": "registertriggertype", "id": "webhook"})
    assert (await p3.recv_type("registertrigger"))["id"] == "t4"


async def test_21_rehoming_and_strict_provider_namespace(raw):
    p0 = await raw("p0")
    await p0.send({"type": "registertriggertype", "id": "webhook"})
    await p0.sync()
    c = await raw("c", namespace="orders")
    await c.send({"type": "registertrigger", "id": "t6", "trigger_type": "webhook",
                  "function_id": "c::f", "namespace": "orders"})
    assert (await p0.recv_type("registertrigger"))["id"] == "t6"
    po = await raw("po", namespace="orders")
    await po.send({"type": "registertriggertype", "id": "webhook"})
    moved = await po.recv_type("registertrigger")
    assert moved["id"] == "t6" and moved["trigger_namespace"] == "orders"
    gone = await p0.recv()
    assert gone["type"] == "unregistertrigger" and gone["id"] == "t6"
    await c.send({"type": "registertrigger", "id": "t7", "trigger_type": "webhook",
                  "function_id": "c::f", "trigger_namespace": "nowhere"})
    await c.sync()
    await p0.no_frame(0.2)
    await po.no_frame(0.2)
    info = await c.call("engine::registered-triggers::info", {"id": "t7"})
    assert info["result"]["status"] == "pending"


async def test_22_trigger_id_conflict(raw):
    c = await raw("c")
    await c.send({"type": "registertrigger", "id": "t8", "trigger_type": "webhook",
                  "function_id": "c::f"})
    await c.sync()
    e = await raw("e")
    await e.send({"type": "registertrigger", "id": "t8", "trigger_type": "webhook",
                  "function_id": "e::g"})
    answer = await e.recv()
    assert answer["type"] == "triggerregistrationresult"
    assert answer["error"]["code"] == "TRIGGER_ID_CONFLICT"
    info = await e.call("engine::registered-triggers::info", {"id": "t8"})
    assert info["result"]["function_id"] == "c::f"


async def test_23_durable_bindings(raw):
    p = await raw("p")
    await p.send({"type": "registertriggertype", "id": "webhook"})
    await p.sync()
    b = await raw("b")
    task = asyncio.ensure_future(b.call("engine::register_trigger", {
        "trigger_type": "webhook", "function_id": "c::on_hook", "config": {}}))
    sent = await p.recv_type("registertrigger")
    await p.send({"type": "triggerregistrationresult", "id": sent["id"]})
    first = (await task)["result"]["id"]
    assert UUID.match(first) and sent["id"] == first
    await b.close()
    c = await raw("c")
    listed = await c.call("engine::registered-triggers::list", {})
    assert [r["id"] for r in listed["result"]["registered_triggers"]] == [first]
    task = asyncio.ensure_future(c.call("engine::register_trigger", {
        "trigger_type": "webhook", "function_id": "c::on_hook", "config": {}}))
    second = await p.recv_type("registertrigger")
    await p.send({"type": "triggerregistrationresult", "id": second["id"],
                  "error": {"code": "trigger_registration_failed", "message": "nope"}})
    failed = await task
    assert failed["error"] == {"code": "trigger_registration_failed",
                               "message": "trigger_registration_failed: nope"}
    third = await c.call("engine::register_trigger", {"trigger_type": "nosuch",
                                                       "function_id": "c::on_hook"})
    info = await c.call("engine::registered-triggers::info", {"id": third["result"]["id"]})
    assert info["result"]["status"] == "pending"
    removed = await c.call("engine::unregister_trigger", {"id": first})
    assert removed["result"] == {"removed": True}
    assert (await p.recv_type("unregistertrigger"))["id"] == first
    again = await c.call("engine::unregister_trigger", {"id": first})
    assert again["result"] == {"removed": False}


async def test_25_introspection(raw):
    a = await raw("mathy")
    await a.send({"type": "registerfunction", "id": "math::add", "description": "adds"})
    await a.sync()
    b = await raw("b")
    listed = (await b.call("engine::functions::list", {}))["result"]["functions"]
    ids = [r["function_id"] for r in listed]
    assert ids == sorted(ids) and "math::add" in ids
    assert not [i for i in ids if i.startswith("engine::") and not i.startswith("engine::queue::")]
    internal = (await b.call("engine::functions::list", {"include_internal": True}))["result"]
    assert "engine::channels::create" in [r["function_id"] for r in internal["functions"]]
    both = await b.call("engine::functions::info", {"function_id": "a", "function_ids": ["a"]})
    assert both["error"]["code"] == "INVALID_ARGUMENTS"
    batch = await b.call("engine::functions::info", {"function_ids": ["math::add", "nope"]})
    rows = batch["result"]["functions"]
    assert rows[0]["function_id"] == "math::add" and rows[0]["description"] == "adds"
    assert rows[0]["worker_name"] == "mathy"
    assert rows[1] == {"function_id": "nope", "error": "not_found"}
    wrong = await b.call("engine::functions::info", {"function_ids": "x"})
    assert wrong["error"]["code"] == "deserialization_error"
    assert wrong["error"]["message"].startswith(
        "Failed to deserialize input for engine::functions::info: ")
    missing = await b.call("engine::triggers::info", {"id": "zz"})
    assert missing["error"] == {"code": "NOT_FOUND", "message":
                                "Trigger type 'zz' is not registered in namespace 'default'."}


async def test_27_enqueue(raw):
    b = await raw("b")
    no_queue = await b.call("orders::ship", {"id": 7}, namespace="orders",
                            action={"type": "enqueue", "queue": "q1"})
    assert no_queue["error"]["code"] == "enqueue_error"
    assert "engine::queue::enqueue" in no_queue["error"]["message"]
    q = await raw("queue")
    await q.send({"type": "registerfunction", "id": "engine::queue::enqueue"})
    await q.sync()
    task = asyncio.ensure_future(b.call("orders::ship", {"id": 7}, namespace="orders",
                                        action={"type": "enqueue", "queue": "q1"}))
    call = await q.serve_one({})
    data = call["data"]
    assert set(data) == {"queue", "function_id", "data", "messageReceiptId", "traceparent",
                         "baggage", "namespace"}
    assert data["namespace"] == "orders" and data["queue"] == "q1" and data["data"] == {"id": 7}
    assert "caller" not in call
    assert (await task)["result"] == {"messageReceiptId": data["messageReceiptId"]}


async def test_28_robustness(raw):
    a = await raw("robust")
    for junk in ('{"type":"ping"}', "not json", "[]", '{"type":"observe","id":"o"}',
                 '{"type":"unregistertriggertype","id":"none"}',
                 '{"type":"invokefunction","invocation_id":"I"}'):
        await a.send(junk)
    assert await a.recv() == {"type": "pong"}
    invalid = await a.recv()
    assert invalid["invocation_id"] == "I" and invalid["error"]["code"] == "invalid_message"
    assert "function_id" in invalid["error"]["message"]
    ok = await a.call("engine::workers::list", {})
    assert "result" in ok


async def test_29_size_limits_raw(raw):
    big = await raw("big")
    await big.send({"type": "registerfunction", "id": "big::two"})
    await big.sync()
    r = await raw(register=False)
    await r.register("small", features=[])
    task = asyncio.ensure_future(r.call("big::two", {}))
    await big.serve_one("x" * (2 * 1024 * 1024))
    answer = await task
    assert answer["error"]["code"] == "payload_too_large"
    assert "channel" in answer["error"]["message"]
    await r.send("x" * (65 * 1024 * 1024))
    assert await r.closed(10) == 1009


async def test_30_liveness_engine_pings(engine):
    from pyiii.engine.listener import Listener, ListenerConfig

    fast = Listener(engine.engine, ListenerConfig(host="127.0.0.1", port=0,
                                                  ping_interval_s=0.3, ping_timeout_s=0.3))
    await fast.start()
    try:
        url = f"ws://127.0.0.1:{fast.port}"
        ok = await Raw.open(url, ping_interval=None)  # the library answers pings: it stays
        silent = await Raw.open(url, ping_interval=None)
        # stop answering pings: drop the client's reader so no pong is ever written
        silent.ws.transport.pause_reading()
        await asyncio.sleep(1.2)
        assert ok.ws.close_code is None
        silent.ws.transport.resume_reading()
        assert await silent.closed(3) == 1011
        await ok.close()
    finally:
        await fast.close()


async def test_34_engine_log_and_baggage(raw, caplog):
    b = await raw("b")
    with caplog.at_level("INFO"):
        logged = await b.call("engine::log::info", {"message": "hi"})
    assert "result" not in logged and "error" not in logged
    assert any(r.getMessage().startswith("hi") for r in caplog.records)
    bag = await b.call("engine::baggage::get", {"key": "tenant"}, baggage="tenant=acme")
    assert bag["result"] == {"value": "acme"}
