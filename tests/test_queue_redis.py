"""Scenario 22: two real `iii` engines share iii-queue's Redis adapter (spec/workers.md §13).

E1 and E2 point iii-queue at the same private Redis (``visibility_timeout_ms: 2000``), each with
a worker registering `job::run`. A job blocks in E1's worker; E1 is SIGKILLed; within 5 s the job
runs on E2's worker and is acknowledged: no entry stays pending in the consumer group `iii`, the
job hash is empty and the DLQ is empty.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import redis

from pyiii.sdk import InitOptions, ReconnectionConfig, TriggerAction, register_worker
from tests.iii_process import free_port, iii_procs, manager_config  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)

QUEUE_BASE = "queue:__fn_queue::default:"


def queue_block(url: str, prefix: str) -> str:
    return ("  - name: iii-queue\n"
            "    config:\n"
            f"      adapter: {{name: redis, config: {{redis_url: '{url}', key_prefix: '{prefix}',"
            " visibility_timeout_ms: 2000}}\n"
            "      queue_configs: {default: {backoff_ms: 200}}\n")


class JobWorker:
    """A pyiii.sdk worker (own event-loop thread) whose `job::run` records each start."""

    def __init__(self, url: str, name: str, block: bool) -> None:
        self.starts: list[tuple[float, Any]] = []
        self.release = threading.Event()
        self.iii = register_worker(url, InitOptions(
            worker_name=name, reconnection_config=ReconnectionConfig(
                initial_delay_ms=100, max_delay_ms=300, backoff_multiplier=1.5, jitter_factor=0.1)))
        self.iii._wait_until_connected()

        async def run(data: Any) -> Any:
            self.starts.append((time.monotonic(), data))
            if block:  # held until its engine is gone (and the test ends)
                while not self.release.is_set():
                    await asyncio.sleep(0.05)
            return {"done": data}

        self.iii.register_function("job::run", run)
        # barrier: the engine applies frames in order, so this answer follows the registration
        self.iii.trigger({"function_id": "engine::functions::list", "payload": {},
                          "timeout_ms": 10_000})

    def close(self) -> None:
        self.release.set()
        time.sleep(0.1)  # a held handler returns before its loop stops
        self.iii.shutdown()


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s")
        time.sleep(0.02)


def test_scenario_22_job_of_a_killed_engine_runs_on_the_other(iii_procs, redis_server,
                                                              redis_prefix):
    r = redis.Redis.from_url(redis_server.url)
    block = queue_block(redis_server.url, redis_prefix)
    workers: list[JobWorker] = []
    iii_procs.on_close(lambda: [w.close() for w in workers])

    port1 = free_port()
    e1 = iii_procs.engine(iii_procs.project("e1", manager_config(port1, block)))
    url1 = e1.wait_ready(30)
    w1 = JobWorker(url1, "w1", block=True)
    workers.append(w1)
    receipt = w1.iii.trigger({"function_id": "job::run", "payload": {"job": 22},
                              "action": TriggerAction.Enqueue(queue="default"),
                              "timeout_ms": 10_000})
    wait_for(lambda: w1.starts, 5, "the job starting on E1's worker")
    stream = redis_prefix + QUEUE_BASE + "stream"
    assert r.xpending(stream, "iii")["pending"] == 1

    # E2 comes up while E1 still holds the job: its lease is renewed, so E2 leaves it alone
    port2 = free_port()
    e2 = iii_procs.engine(iii_procs.project("e2", manager_config(port2, block)))
    url2 = e2.wait_ready(30)
    w2 = JobWorker(url2, "w2", block=False)
    workers.append(w2)
    time.sleep(2.5)  # longer than the visibility timeout
    assert w2.starts == [] and len(w1.starts) == 1

    e1.kill()
    killed_at = time.monotonic()
    wait_for(lambda: w2.starts, 5, "the job running on E2's worker after SIGKILL of E1")
    ran_at, data = w2.starts[0]
    assert data == {"job": 22}
    print(f"\n[scenario 22] job ran on E2 {ran_at - killed_at:.2f}s after E1 was killed")
    assert ran_at - killed_at < 5.0

    # acknowledged: nothing pending in group iii, no job left, DLQ empty
    wait_for(lambda: r.hlen(redis_prefix + QUEUE_BASE + "jobs") == 0, 3, "the ack on E2")
    assert r.xpending(stream, "iii")["pending"] == 0
    assert r.xlen(stream) == 0
    assert r.zcard(redis_prefix + QUEUE_BASE + "dlq") == 0
    dlq = w2.iii.trigger({"function_id": "engine::queue::dlq_messages",
                          "payload": {"topic": "default"}, "timeout_ms": 10_000})
    assert dlq == []
    stats = w2.iii.trigger({"function_id": "engine::queue::topic_stats",
                            "payload": {"topic": "default"}, "timeout_ms": 10_000})
    assert (stats["depth"], stats["in_flight"], stats["dlq_depth"]) == (0, 0, 0)
    time.sleep(0.5)
    assert len(w2.starts) == 1 and len(w1.starts) == 1
    assert receipt["messageReceiptId"]


async def test_redis_down_at_start_then_up(engine, tmp_path):
    """§1.3: with Redis unreachable iii-queue still starts, an enqueue fails with a message
    beginning `redis unavailable:`, and once Redis answers, jobs flow without a restart."""
    from tests.redis_server import start_redis
    from tests.test_worker_queue import start_queue

    port = free_port()
    worker = await start_queue(engine, tmp_path, {"adapter": {"name": "redis", "config": {
        "redis_url": f"redis://127.0.0.1:{port}", "key_prefix": "down:",
        "connect_timeout_ms": 500}}})
    iii = register_worker(engine.url, InitOptions(worker_name="outage"))
    await iii.wait_connected(5)
    got: list[Any] = []
    iii.register_function("job::later", lambda data: got.append(data))
    server = None
    try:
        with pytest.raises(Exception) as failed:
            await iii.trigger_async({"function_id": "job::later", "payload": {"n": 1},
                                     "action": TriggerAction.Enqueue(queue="default")})
        assert getattr(failed.value, "code", None) == "enqueue_error"
        assert "redis unavailable:" in failed.value.message
        server = start_redis(tmp_path / "late-redis", port)
        answer = await iii.trigger_async({"function_id": "job::later", "payload": {"n": 2},
                                          "action": TriggerAction.Enqueue(queue="default")})
        assert answer["messageReceiptId"]
        deadline = time.monotonic() + 8
        while not got:
            assert time.monotonic() < deadline, "job not delivered after Redis came back"
            await asyncio.sleep(0.02)
        assert got == [{"n": 2}]
    finally:
        await iii.shutdown_async()
        await worker.stop()
        if server is not None:
            server.stop()


async def test_scripts_flushed_from_redis_are_loaded_again(engine, tmp_path, redis_server,
                                                           redis_prefix):
    """After a Redis restart the Lua scripts are gone (NOSCRIPT): iii-queue loads them again
    and the calls that failed are sent once more, so nobody sees an error."""
    from tests.test_worker_queue import start_queue

    worker = await start_queue(engine, tmp_path, {"adapter": {"name": "redis", "config": {
        "redis_url": redis_server.url, "key_prefix": redis_prefix}}})
    iii = register_worker(engine.url, InitOptions(worker_name="noscript"))
    await iii.wait_connected(5)
    got: list[Any] = []
    iii.register_function("job::again", lambda data: got.append(data))
    try:
        for n in (1, 2):
            redis.Redis.from_url(redis_server.url).script_flush()
            answer = await iii.trigger_async({"function_id": "job::again", "payload": {"n": n},
                                              "action": TriggerAction.Enqueue(queue="default")})
            assert answer["messageReceiptId"]
            deadline = time.monotonic() + 5
            while len(got) < n:
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.02)
        assert got == [{"n": 1}, {"n": 2}]
    finally:
        await iii.shutdown_async()
        await worker.stop()


async def test_two_engines_share_topic_destinations(engine, tmp_path, redis_server,
                                                    redis_prefix):
    """With `redis`, a publish on E2 stores a copy for a durable subscriber bound only on E1
    (§1.7), E1 delivers it, and E2 lists the topic with its subscriber."""
    from tests.conftest import start_engine
    from tests.test_worker_queue import start_queue

    adapter = {"name": "redis", "config": {"redis_url": redis_server.url,
                                           "key_prefix": redis_prefix}}
    e2 = await start_engine()
    q1 = await start_queue(engine, tmp_path / "e1", {"adapter": adapter})
    q2 = await start_queue(e2, tmp_path / "e2", {"adapter": adapter})
    sub = register_worker(engine.url, InitOptions(worker_name="sub-on-e1"))
    pub = register_worker(e2.url, InitOptions(worker_name="pub-on-e2"))
    got: list[Any] = []
    try:
        await sub.wait_connected(5)
        await pub.wait_connected(5)
        sub.register_function("orders::on", lambda data: got.append(data))
        sub.register_trigger({"type": "durable:subscriber", "function_id": "orders::on",
                              "config": {"topic": "orders"}})
        await asyncio.sleep(0.2)
        for n in (1, 2):
            assert await pub.trigger_async({"function_id": "iii::durable::publish",
                                            "payload": {"topic": "orders",
                                                        "data": {"id": n}}}) is None
        deadline = time.monotonic() + 5
        while len(got) < 2:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert sorted(x["id"] for x in got) == [1, 2]
        listed = await pub.trigger_async({"function_id": "engine::queue::list_topics",
                                          "payload": {}})
        assert {"name": "orders", "broker_type": "builtin", "subscriber_count": 1} in listed
    finally:
        await sub.shutdown_async()
        await pub.shutdown_async()
        await q1.stop()
        await q2.stop()
        await e2.listener.close()
        await e2.engine.stop()
