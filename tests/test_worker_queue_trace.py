"""Trace context through iii-queue (spec/workers.md §4.4): the traceparent and baggage given at
enqueue are stored with the job and sent on every delivery's `invokefunction` frame, so the
handler's span is a child of the producer's trace — retries included."""

from __future__ import annotations

import pytest

from pyiii.sdk import TriggerAction
from tests.test_worker_queue import (adapter_of, client,  # noqa: F401 - fixtures
                                     start_queue)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BAGGAGE = "tenant=acme,req=42"


@pytest.mark.parametrize("adapter", ["sqlite", "memory", "redis"])
async def test_delivery_carries_the_enqueue_trace_context_also_on_retry(engine, client, raw,
                                                                         tmp_path, adapter,
                                                                         adapter_of):
    worker = await start_queue(engine, tmp_path, {
        "adapter": adapter_of(adapter), "queue_configs": {"jobs": {"max_retries": 3, "backoff_ms": 50}}})
    handler = await raw("traced-worker")
    await handler.send({"type": "registerfunction", "id": "job::traced"})
    await handler.sync()
    try:
        answer = await client.trigger_async({
            "function_id": "job::traced", "payload": {"n": 1},
            "action": TriggerAction.Enqueue(queue="jobs"),
            "traceparent": TRACEPARENT, "baggage": BAGGAGE})
        first = await handler.recv_type("invokefunction")
        assert first["function_id"] == "job::traced" and first["data"] == {"n": 1}
        assert first["traceparent"] == TRACEPARENT
        assert first["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert first["baggage"] == BAGGAGE
        await handler.send({"type": "invocationresult", "invocation_id": first["invocation_id"],
                            "function_id": "job::traced",
                            "error": {"code": "boom", "message": "first attempt fails"}})
        retry = await handler.serve_one({"ok": True})
        assert retry["data"] == {"n": 1}
        assert (retry["traceparent"], retry["baggage"]) == (TRACEPARENT, BAGGAGE)
        assert retry["invocation_id"] != first["invocation_id"]

        # without trace context nothing is invented
        await client.trigger_async({"function_id": "job::traced", "payload": {"n": 2},
                                    "action": TriggerAction.Enqueue(queue="jobs")})
        plain = await handler.serve_one(None)
        assert plain["data"] == {"n": 2}
        assert "traceparent" not in plain and "baggage" not in plain
        assert answer["messageReceiptId"]
    finally:
        await worker.stop()
