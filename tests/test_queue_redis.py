"""Scenario 22: two real `iii` engines share iii-queue's Redis adapter (spec/workers.md §13).

E1 and E2 point iii-queue at the same private Redis (``visibility_timeout_ms: 2000``), each with
a worker registering `job::run`. A job blocks in E1's worker; E1 is SIGKILLed; within 5 s the job
runs on E2's worker and is acknowledged: no entry stays pending in the consumer group `iii`, the
job hash is empty and the DLQ is empty.

Further tests: Redis outages and flushed scripts, topic destinations shared by two engines, and
the blocking reads of §4.5 (jobs of other engines start at once despite a long
``poll_interval_ms``, idle cost, prompt stop, due retries, FIFO order and concurrency).
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


# -- blocking reads: the consumer waits on Redis, not on its poll timer (§4.5) -----------------

LONG_POLL = {"poll_interval_ms": 5000}


def blocked_reads(r: redis.Redis) -> int:
    """Connections of the private server blocked in XREADGROUP right now (a consumer is not
    while it runs its periodic CLAIM)."""
    return sum(1 for c in r.client_list() if c["cmd"] == "xreadgroup" and "b" in c["flags"])


def script_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def unblocks(r: redis.Redis) -> int:
    """CLIENT UNBLOCK calls the server has seen (how a consumer cuts its read short)."""
    return int(r.info("commandstats").get("cmdstat_client|unblock", {}).get("calls", 0))


async def test_job_from_another_store_starts_at_once_despite_long_poll(engine, tmp_path,
                                                                      redis_server,
                                                                      redis_prefix):
    """With ``poll_interval_ms: 5000``, a job pushed by another store on the same prefix (what
    another engine does) starts on this engine's blocked consumer within 200 ms, each time."""
    from pyiii.storage.redis_link import RedisConfig
    from pyiii.workers.queue.config import FN_QUEUE_PREFIX
    from pyiii.workers.queue.redis_store import RedisQueueStore
    from pyiii.workers.queue.storage import Job
    from tests.test_worker_queue import start_queue, until

    adapter = {"name": "redis", "config": {"redis_url": redis_server.url,
                                           "key_prefix": redis_prefix}}
    worker = await start_queue(engine, tmp_path, {"adapter": adapter,
                                                  "queue_configs": {"default": LONG_POLL}})
    iii = register_worker(engine.url, InitOptions(worker_name="blocked-consumer"))
    other = RedisQueueStore(RedisConfig(redis_server.url, redis_prefix))
    r = redis.Redis.from_url(redis_server.url)
    starts: dict[int, float] = {}
    try:
        await iii.wait_connected(5)
        iii.register_function("job::run", lambda data: starts.setdefault(data["n"],
                                                                         time.monotonic()))
        await until(lambda: blocked_reads(r) == 1)
        latencies = []
        for n in range(5):
            await asyncio.sleep(0.13)  # a different phase against the stale scans each time
            pushed = time.monotonic()
            assert await other.push(Job(id=f"job-{n}", queue=FN_QUEUE_PREFIX + "default",
                                        topic="default", function_id="job::run",
                                        data={"n": n}))
            await until(lambda: n in starts, 2.0)
            latencies.append(starts[n] - pushed)
        print(f"\n[blocking read] start latencies ms: {[round(x * 1000, 1) for x in latencies]}")
        assert max(latencies) < 0.2, latencies
        await until(lambda: r.hlen(redis_prefix + QUEUE_BASE + "jobs") == 0)
    finally:
        await iii.shutdown_async()
        await worker.stop()
        await other.close()


async def test_idle_blocked_consumer_is_cheap_and_stops_at_once(engine, tmp_path, redis_server,
                                                                redis_prefix):
    """An idle consumer with ``poll_interval_ms: 5000`` sits in a blocking XREADGROUP; over one
    second it runs only the periodic stale-scan CLAIM (every 0.25 s) besides that read; stopping
    the worker ends the read at once instead of waiting out the block."""
    from tests.test_worker_queue import start_queue, until

    adapter = {"name": "redis", "config": {"redis_url": redis_server.url,
                                           "key_prefix": redis_prefix}}
    worker = await start_queue(engine, tmp_path, {"adapter": adapter,
                                                  "queue_configs": {"default": LONG_POLL}})
    r = redis.Redis.from_url(redis_server.url)
    stopped = False
    try:
        await until(lambda: blocked_reads(r) == 1)
        before = script_calls(r)
        await asyncio.sleep(1.0)
        calls = script_calls(r) - before
        assert 2 <= calls <= 6, calls  # the stale scans, nothing spinning
        await until(lambda: blocked_reads(r) == 1)  # not in the middle of a scan
        interrupted = unblocks(r)
        t0 = time.monotonic()
        await worker.stop()
        stopped = True
        took = time.monotonic() - t0
        print(f"\n[blocking read] worker stopped in {took * 1000:.1f} ms")
        assert took < 1.0
        assert blocked_reads(r) == 0
        # the stop cut the read short (or, rarely, the read had just ended by itself: then the
        # stop did not have to wait either)
        assert unblocks(r) > interrupted or took < 0.05, (took, interrupted)
    finally:
        if not stopped:
            await worker.stop()


async def test_retry_runs_at_its_due_time_while_blocked(engine, tmp_path, redis_server,
                                                        redis_prefix):
    """A retry (backoff 300 ms, doubling) starts at its due time although the consumer is
    blocked in XREADGROUP with ``poll_interval_ms: 5000``: the due time cuts the read short."""
    from tests.test_worker_queue import enqueue, start_queue, until

    adapter = {"name": "redis", "config": {"redis_url": redis_server.url,
                                           "key_prefix": redis_prefix}}
    worker = await start_queue(engine, tmp_path, {
        "adapter": adapter,
        "queue_configs": {"default": {**LONG_POLL, "backoff_ms": 300, "max_retries": 3}}})
    iii = register_worker(engine.url, InitOptions(worker_name="retrying"))
    calls: list[float] = []

    def flaky(data: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return data

    try:
        await iii.wait_connected(5)
        iii.register_function("job::flaky", flaky)
        await enqueue(iii, "job::flaky", {"n": 1})
        await until(lambda: len(calls) == 3, 5.0)
        gaps = [(b - a) * 1000 for a, b in zip(calls, calls[1:])]
        print(f"\n[blocking read] retry gaps ms: {[round(g, 1) for g in gaps]}")
        # on time, not after the 5 s block (+150 ms: the machine may be busy with other tests)
        assert 295 <= gaps[0] <= 450 and 595 <= gaps[1] <= 750, gaps
        await until(lambda: redis.Redis.from_url(redis_server.url).hlen(
            redis_prefix + QUEUE_BASE + "jobs") == 0)
    finally:
        await iii.shutdown_async()
        await worker.stop()


async def test_fifo_jobs_of_another_store_keep_order_and_concurrency(engine, tmp_path,
                                                                     redis_server, redis_prefix):
    """Jobs of three FIFO groups pushed by another store while this engine's consumer blocks
    (``concurrency: 2``): each group runs one job at a time in push order, never more than two
    jobs run at once, and all of them run."""
    from pyiii.storage.redis_link import RedisConfig
    from pyiii.workers.queue.config import FN_QUEUE_PREFIX
    from pyiii.workers.queue.redis_store import RedisQueueStore
    from pyiii.workers.queue.storage import Job
    from tests.test_worker_queue import start_queue, until

    adapter = {"name": "redis", "config": {"redis_url": redis_server.url,
                                           "key_prefix": redis_prefix}}
    worker = await start_queue(engine, tmp_path, {"adapter": adapter, "queue_configs": {
        "lanes": {**LONG_POLL, "type": "fifo", "message_group_field": "g", "concurrency": 2}}})
    iii = register_worker(engine.url, InitOptions(worker_name="fifo-lanes"))
    other = RedisQueueStore(RedisConfig(redis_server.url, redis_prefix))
    r = redis.Redis.from_url(redis_server.url)
    running: list[str] = []
    peak = {"all": 0}
    order: dict[str, list[int]] = {}

    async def lane(data: Any) -> Any:
        group = data["g"]
        assert group not in running  # one job per group at a time
        running.append(group)
        peak["all"] = max(peak["all"], len(running))
        order.setdefault(group, []).append(data["n"])
        await asyncio.sleep(0.05)
        running.remove(group)
        return None

    try:
        await iii.wait_connected(5)
        iii.register_function("job::lane", lane)
        await until(lambda: blocked_reads(r) == 2)  # the consumers of `lanes` and `default`
        for n in range(4):
            for group in ("a", "b", "c"):
                assert await other.push(Job(
                    id=f"{group}-{n}", queue=FN_QUEUE_PREFIX + "lanes", topic="lanes",
                    function_id="job::lane", data={"g": group, "n": n}, group=group))
        await until(lambda: sum(len(v) for v in order.values()) == 12, 5.0)
        assert order == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]}
        assert peak["all"] == 2
        await until(lambda: r.hlen(redis_prefix + "queue:__fn_queue::lanes:jobs") == 0)
    finally:
        await iii.shutdown_async()
        await worker.stop()
        await other.close()


async def test_entries_of_a_failed_adopt_are_adopted_by_the_next_wait(redis_server, redis_prefix):
    """The blocking read delivered an entry but ADOPT failed (a broken connection, say): the
    waiter keeps it and leases it on its next ``wait``, instead of leaving it pending until
    XAUTOCLAIM counts it as a lost delivery."""
    from pyiii.storage.redis_link import RedisConfig
    from pyiii.workers.queue.config import FN_QUEUE_PREFIX
    from pyiii.workers.queue.redis_store import RedisQueueStore
    from pyiii.workers.queue.storage import Job

    queue = FN_QUEUE_PREFIX + "default"
    store = RedisQueueStore(RedisConfig(redis_server.url, redis_prefix))
    try:
        assert (await store.claim(queue, 1, False, 30_000, "c1")).jobs == []  # makes the group
        waiter = store.waiter(queue, "c1")
        real_run = store._run
        failures = []

        async def adopt_fails_once(script: str, *args: Any) -> Any:
            if script == "ADOPT" and not failures:
                failures.append(args)
                raise ConnectionError("connection lost while adopting")
            return await real_run(script, *args)

        store._run = adopt_fails_once  # type: ignore[method-assign]
        await store.push(Job(id="j1", queue=queue, topic="default", function_id="job::run",
                             data={"n": 1}))
        store.stale_scan[queue] = time.time() + 5  # no scan due: the waiter may block
        with pytest.raises(ConnectionError):
            await waiter.wait(1, 2.0)
        assert len(failures) == 1
        t0 = time.monotonic()
        jobs = await waiter.wait(1, 2.0)
        assert time.monotonic() - t0 < 0.5  # no read needed: the kept entry is adopted
        assert [(j.id, j.data, j.attempts_made) for j in jobs] == [("j1", {"n": 1}, 0)]
        assert jobs[0].lease_token is not None and jobs[0].lease_token.startswith("c1|")
        assert await store.ack(jobs[0])
        assert await waiter.wait(1, 0.2) == []  # nothing left, nothing adopted twice
    finally:
        await store.close()
