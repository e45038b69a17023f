"""iii-pubsub in-process, with subscribers in pyiii.sdk and in official-SDK processes (§6)."""

from __future__ import annotations

import asyncio

import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, InvocationError, register_worker
from pyiii.workers import pubsub
from pyiii.workers.base import WorkerContext

from .conftest_peers import fn, make_spec


@pytest.fixture
async def pubsub_worker(engine, tmp_path):
    worker = await pubsub.start(WorkerContext("iii-pubsub", {}, tmp_path, False, url=engine.url,
                                              connector=local_connector(engine.engine)))
    yield worker
    await worker.stop()


@pytest.fixture
async def client(engine):
    iii = register_worker(engine.url, InitOptions(worker_name="publisher"))
    await iii.wait_connected(5)
    yield iii
    await iii.shutdown_async()


async def test_scenario_28_publish_and_unsubscribe(engine, pubsub_worker, client):
    got: dict[str, list] = {"a": [], "b": []}
    client.register_function("sub::a", lambda data: got["a"].append(data))
    client.register_function("sub::b", lambda data: got["b"].append(data))
    first = client.register_trigger({"type": "subscribe", "function_id": "sub::a",
                                     "config": {"topic": "t"}})
    client.register_trigger({"type": "subscribe", "function_id": "sub::b",
                             "config": {"topic": "t"}})
    await asyncio.sleep(0.1)
    publish = {"function_id": "publish", "payload": {"topic": "t", "data": 5}}
    assert await client.trigger_async(publish) is None
    for _ in range(100):
        if got["a"] and got["b"]:
            break
        await asyncio.sleep(0.02)
    assert got == {"a": [5], "b": [5]}
    first.unregister()
    await asyncio.sleep(0.1)
    await client.trigger_async({"function_id": "publish", "payload": {"topic": "t", "data": 6}})
    for _ in range(100):
        if len(got["b"]) == 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    assert got == {"a": [5], "b": [5, 6]}
    assert await client.trigger_async({"function_id": "publish",
                                       "payload": {"topic": "unused", "data": 1}}) is None
    with pytest.raises(InvocationError) as err:
        await client.trigger_async({"function_id": "publish", "payload": {"topic": ""}})
    assert (err.value.code, err.value.message) == ("topic_not_set", "Topic is not set")


async def test_empty_topic_binding_is_refused(engine, pubsub_worker, raw):
    c = await raw("c")
    await c.send({"type": "registertrigger", "id": "empty", "trigger_type": "subscribe",
                  "function_id": "c::f", "config": {"topic": ""}})
    answer = await c.recv_type("triggerregistrationresult")
    assert answer["error"]["code"] == "trigger_registration_failed"
    assert "topic" in answer["error"]["message"]


async def test_message_reaches_subscribers_in_two_official_sdk_processes(
        engine, pubsub_worker, client, peers):
    subscribe = [{"type": "subscribe", "function_id": "{fid}", "config": {"topic": "news"}}]
    py = await peers.astart("s25", engine.url, make_spec(
        "sub-py", [fn("py::on_news", "echo")],
        triggers=[dict(subscribe[0], function_id="py::on_news")]))
    js = await peers.astart("n22", engine.url, make_spec(
        "sub-js", [fn("js::on_news", "echo")],
        triggers=[dict(subscribe[0], function_id="js::on_news")]))
    await asyncio.sleep(0.2)
    await client.trigger_async({"function_id": "publish",
                                "payload": {"topic": "news", "data": {"headline": "hi"}}})
    assert (await py.event("invoke", function_id="py::on_news"))["data"] == {"headline": "hi"}
    assert (await js.event("invoke", function_id="js::on_news"))["data"] == {"headline": "hi"}
