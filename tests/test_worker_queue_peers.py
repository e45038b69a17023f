"""iii-queue with official-SDK workers: Python iii-sdk 0.25 (S25) and Node iii-sdk 0.22 (N22)."""

from __future__ import annotations

import asyncio

from .conftest_peers import fn, make_spec
from .test_worker_queue import call, client, start_queue  # noqa: F401 - fixture

ENQUEUE = {"type": "enqueue", "queue": "default"}


async def test_jobs_enqueued_by_either_sdk_run_on_either_sdk(engine, tmp_path, peers):
    worker = await start_queue(engine, tmp_path, {})
    try:
        py, js = await asyncio.gather(
            peers.astart("s25", engine.url, make_spec("py-w", [fn("py::job", "echo")])),
            peers.astart("n22", engine.url, make_spec("js-w", [fn("js::job", "echo")])))
        for producer in (py, js):
            for target, consumer in (("py::job", py), ("js::job", js)):
                payload = {"from": producer.lang, "to": target, "n": [1, 2]}
                answer = await producer.acall(target, payload, action=ENQUEUE)
                assert "error" not in answer, answer
                receipt = answer["result"]["messageReceiptId"]
                assert isinstance(receipt, str) and len(receipt) == 36
                got = await consumer.event("invoke", function_id=target, timeout=5,
                                           predicate=lambda e, p=payload: e.get("data") == p)
                assert got["data"] == payload
        await asyncio.sleep(0.2)
        invokes = [e for p in (py, js) for e in p.history if e.get("event") == "invoke"]
        assert len(invokes) == 4  # each job exactly once
        missing = await py.acall("py::job", {}, action={"type": "enqueue", "queue": "nope"})
        assert missing["error"]["code"] == "enqueue_error"
        assert "Queue 'nope' not found" in missing["error"]["message"]
    finally:
        await worker.stop()


async def test_official_sdk_durable_subscribers(engine, tmp_path, peers, client):  # noqa: F811
    worker = await start_queue(engine, tmp_path, {"adapter": "memory"})
    try:
        bind = {"type": "durable:subscriber", "config": {"topic": "orders"}}
        py, js = await asyncio.gather(
            peers.astart("s25", engine.url, make_spec(
                "py-sub", [fn("py::on_order", "echo")],
                triggers=[dict(bind, function_id="py::on_order")])),
            peers.astart("n22", engine.url, make_spec(
                "js-sub", [fn("js::on_order", "echo")],
                triggers=[dict(bind, function_id="js::on_order")])))
        await asyncio.sleep(0.2)
        await call(client, "iii::durable::publish", {"topic": "orders", "data": {"id": 7}})
        assert (await py.event("invoke", function_id="py::on_order"))["data"] == {"id": 7}
        assert (await js.event("invoke", function_id="js::on_order"))["data"] == {"id": 7}
        answer = await js.acall("iii::durable::publish", {"topic": "orders", "data": {"id": 8}})
        assert answer == {"result": None}
        assert (await py.event("invoke", function_id="py::on_order",
                               predicate=lambda e: e["data"] == {"id": 8}))["data"] == {"id": 8}
    finally:
        await worker.stop()
