"""iii-queue durable topics: `durable:subscriber` and `iii::durable::publish` (§4.3-4.4, scenario 20)."""

from __future__ import annotations

import asyncio

import pytest

from pyiii.sdk import InitOptions, InvocationError, register_worker

from .test_worker_queue import adapter_of, call, start_queue, until  # noqa: F401 - fixture


async def connect(engine, name):
    iii = register_worker(engine.url, InitOptions(worker_name=name))
    await iii.wait_connected(5)
    return iii


def subscribe(iii, function_id, topic, **config):
    return iii.register_trigger({"type": "durable:subscriber", "function_id": function_id,
                                 "config": {"topic": topic, **config}})


async def publish(iii, topic, data):
    return await call(iii, "iii::durable::publish", {"topic": topic, "data": data})


@pytest.mark.parametrize("adapter", ["sqlite", "memory", "redis"])
async def test_scenario_20_fan_out_and_missed_messages(engine, tmp_path, adapter, adapter_of):
    worker = await start_queue(engine, tmp_path, {"adapter": adapter_of(adapter)})
    a = await connect(engine, "sub-a")
    b = await connect(engine, "sub-b")
    got: dict[str, list] = {"a": [], "b": []}
    try:
        a.register_function("fnA", lambda data: got["a"].append(data))
        b.register_function("fnB", lambda data: got["b"].append(data))
        subscribe(a, "fnA", "orders")
        subscribe(a, "fnA", "orders")  # same destination: one copy
        subscribe(b, "fnB", "orders")
        await asyncio.sleep(0.1)
        assert await publish(a, "orders", {"id": 1}) is None
        await until(lambda: got["a"] and got["b"])
        await asyncio.sleep(0.2)
        assert got == {"a": [{"id": 1}], "b": [{"id": 1}]}

        await b.shutdown_async()  # fnB's worker goes away; its destination is kept
        await asyncio.sleep(0.1)
        await publish(a, "orders", {"id": 2})
        await publish(a, "orders", {"id": 3})
        await until(lambda: len(got["a"]) == 3)
        stats = await call(a, "engine::queue::topic_stats", {"topic": "orders"})
        assert stats["depth"] == 2 and stats["config"] is None
        b = await connect(engine, "sub-b")
        b.register_function("fnB", lambda data: got["b"].append(data))
        subscribe(b, "fnB", "orders")
        await until(lambda: len(got["b"]) == 3)
        assert sorted(x["id"] for x in got["b"]) == [1, 2, 3]
        assert [x["id"] for x in got["a"]] == [1, 2, 3]
        listed = await call(a, "engine::queue::list_topics", {})
        assert {"name": "orders", "broker_type": "builtin", "subscriber_count": 2} in listed
        with pytest.raises(InvocationError) as err:
            await publish(a, "", 1)
        assert err.value.code == "topic_not_set"
        assert await publish(a, "nobody", 1) is None  # nothing stored
        assert (await call(a, "engine::queue::topic_stats", {"topic": "nobody"}))["depth"] == 0
    finally:
        await a.shutdown_async()
        await b.shutdown_async()
        await worker.stop()


async def test_condition_false_acknowledges_and_metadata_arrives(engine, tmp_path):
    worker = await start_queue(engine, tmp_path, {"adapter": "memory"})
    c = await connect(engine, "sub")
    got, meta = [], []
    try:
        c.register_function("cond::no", lambda data: False)
        c.register_function("cond::yes", lambda data: {"any": "object"})
        c.register_function("skip::me", got.append)
        c.register_function("run::me", lambda data, metadata: meta.append((data, metadata)))
        subscribe(c, "skip::me", "t", condition_function_id="cond::no")
        c.register_trigger({"type": "durable:subscriber", "function_id": "run::me",
                            "config": {"topic": "t", "condition_function_id": "cond::yes"},
                            "metadata": {"tenant": "x"}})
        await asyncio.sleep(0.1)
        await publish(c, "t", 5)
        await until(lambda: meta)
        await asyncio.sleep(0.2)
        assert got == [] and meta == [(5, {"tenant": "x"})]
        stats = await call(c, "engine::queue::topic_stats", {"topic": "t"})
        assert (stats["depth"], stats["in_flight"], stats["dlq_depth"]) == (0, 0, 0)
    finally:
        await c.shutdown_async()
        await worker.stop()


async def test_empty_topic_binding_is_refused(engine, tmp_path, raw):
    worker = await start_queue(engine, tmp_path, {"adapter": "memory"})
    try:
        c = await raw("c")
        await c.send({"type": "registertrigger", "id": "empty", "trigger_type": "durable:subscriber",
                      "function_id": "c::f", "config": {"topic": ""}})
        answer = await c.recv_type("triggerregistrationresult")
        assert answer["error"]["code"] == "trigger_registration_failed"
        assert "topic" in answer["error"]["message"]
    finally:
        await worker.stop()


async def test_topic_dlq_and_redrive_reach_only_the_failed_destination(engine, tmp_path):
    worker = await start_queue(engine, tmp_path, {})
    c = await connect(engine, "sub")
    good, bad = [], []
    state = {"broken": True}

    def flaky(data):
        bad.append(data)
        if state["broken"]:
            raise RuntimeError("forced")

    try:
        c.register_function("good::fn", good.append)
        c.register_function("bad::fn", flaky)
        subscribe(c, "good::fn", "ev")
        subscribe(c, "bad::fn", "ev", queue_config={"maxRetries": 1, "backoffDelayMs": 20})
        await asyncio.sleep(0.1)
        await publish(c, "ev", {"n": 1})
        await until(lambda: len(bad) == 2)  # maxRetries 1 → 2 deliveries
        await asyncio.sleep(0.1)
        dlq = await call(c, "engine::queue::dlq_messages", {"topic": "ev"})
        assert len(dlq) == 1 and dlq[0]["retries"] == 2 and dlq[0]["function_id"] == "bad::fn"
        state["broken"] = False
        assert await call(c, "iii::queue::redrive", {"topic": "ev"}) == {"queue": "ev",
                                                                        "redriven": 1}
        await until(lambda: len(bad) == 3)
        await asyncio.sleep(0.1)
        assert good == [{"n": 1}] and bad[-1] == {"n": 1}
    finally:
        await c.shutdown_async()
        await worker.stop()


async def test_fifo_topic_keeps_publish_order_across_retries(engine, tmp_path):
    worker = await start_queue(engine, tmp_path, {"adapter": "memory"})
    c = await connect(engine, "sub")
    seen: list[int] = []
    failed: set[int] = set()

    async def handler(n):
        seen.append(n)
        await asyncio.sleep(0.005)
        if n == 2 and n not in failed:
            failed.add(n)
            raise RuntimeError("once")

    try:
        c.register_function("ordered::fn", handler)
        subscribe(c, "ordered::fn", "seq", queue_config={"type": "fifo", "backoffDelayMs": 20})
        await asyncio.sleep(0.1)
        for n in range(1, 6):
            await publish(c, "seq", n)
        await until(lambda: len(seen) == 6)
        assert seen == [1, 2, 2, 3, 4, 5]
    finally:
        await c.shutdown_async()
        await worker.stop()


async def test_destination_expires_after_retention(engine, tmp_path):
    worker = await start_queue(engine, tmp_path, {"adapter": "memory",
                                                  "subscription_retention_ms": 300})
    c = await connect(engine, "sub")
    try:
        c.register_function("gone::fn", lambda data: None)
        binding = subscribe(c, "gone::fn", "news")
        await asyncio.sleep(0.1)
        binding.unregister()
        await asyncio.sleep(0.05)
        await publish(c, "news", {"kept": True})  # waits for the subscriber to come back
        assert (await call(c, "engine::queue::topic_stats", {"topic": "news"}))["depth"] == 1
        await asyncio.sleep(0.6)
        dlq = await call(c, "engine::queue::dlq_messages", {"topic": "news"})
        assert [(e["payload"], e["error"]) for e in dlq] == [({"kept": True},
                                                             "subscription expired")]
        await publish(c, "news", {"dropped": True})
        assert (await call(c, "engine::queue::topic_stats", {"topic": "news"}))["depth"] == 0
    finally:
        await c.shutdown_async()
        await worker.stop()
