"""Bad input to iii-queue loses nothing: a job too large for its consumer ends in the DLQ intact.

The consumer here is a raw worker that declares no `large-messages.v1` feature, so the engine
may send it at most 1 MiB (spec/protocol.md §1.4); a 2 MiB job cannot be delivered to it.
"""

from __future__ import annotations

import asyncio

from tests.test_worker_queue import call, client, enqueue, start_queue, until  # noqa: F401


async def test_job_too_large_for_its_consumer_lands_in_the_dlq_intact(engine, client, raw, tmp_path):
    worker = await start_queue(engine, tmp_path, {"queue_configs": {
        "jobs": {"max_retries": 2, "backoff_ms": 50}}})
    consumer = await raw("small-consumer", features=[])
    await consumer.send({"type": "registerfunction", "id": "big::job"})
    await consumer.sync()
    try:
        blob = "x" * (2 * 1024 * 1024)
        answer = await enqueue(client, "big::job", {"blob": blob}, "jobs")
        assert set(answer) == {"messageReceiptId"}
        entries: list = []

        deadline = asyncio.get_running_loop().time() + 5
        while not entries:
            assert asyncio.get_running_loop().time() < deadline, "job never reached the DLQ"
            await asyncio.sleep(0.05)
            entries = await call(client, "engine::queue::dlq_messages", {"topic": "jobs"})
        [entry] = entries
        assert entry["payload"] == {"blob": blob}
        assert entry["function_id"] == "big::job"
        assert entry["retries"] == 2
        assert entry["error"] == (
            "payload_too_large: the invocation is 2097364 bytes, over the recipient's limit of "
            "1048576 bytes; pass large data through a channel (engine::channels::create) instead")
        await consumer.no_frame(0.2)  # the oversize call never reached the worker
        # a job of normal size still reaches the same consumer
        await enqueue(client, "big::job", {"n": 1}, "jobs")
        delivered = await consumer.serve_one({"ok": True})
        assert delivered["data"] == {"n": 1}
    finally:
        await worker.stop()
