"""iii-queue in-process, driven through pyiii.sdk (spec/workers.md §4, scenarios 16-19)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from pyiii.engine.inprocess import local_connector
from pyiii.sdk import InitOptions, InvocationError, TriggerAction, register_worker
from pyiii.workers import queue
from pyiii.workers.base import WorkerContext
from pyiii.workers.queue.config import parse_settings


async def start_queue(engine, tmp_path: Path, config: dict | None = None,
                      ephemeral: bool = False):
    ctx = WorkerContext("iii-queue", config or {}, tmp_path, ephemeral,
                        url=engine.url, connector=local_connector(engine.engine))
    return await queue.start(ctx)


@pytest.fixture
def adapter_of(request):
    """The adapter block for a parametrized adapter name; ``redis`` uses the private test
    Redis under a key prefix of its own (started only by the tests that need it)."""
    def make(name: str):
        if name != "redis":
            return name
        server = request.getfixturevalue("redis_server")
        return {"name": "redis", "config": {"redis_url": server.url,
                                            "key_prefix": request.getfixturevalue("redis_prefix")}}
    return make


@pytest.fixture
async def client(engine):
    iii = register_worker(engine.url, InitOptions(worker_name="tester"))
    await iii.wait_connected(5)
    yield iii
    await iii.shutdown_async()


async def enqueue(iii, function_id, payload, name="default"):
    return await iii.trigger_async({"function_id": function_id, "payload": payload,
                                    "action": TriggerAction.Enqueue(queue=name)})


async def call(iii, function_id, payload=None):
    return await iii.trigger_async({"function_id": function_id, "payload": payload})


async def until(check, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("adapter", ["sqlite", "memory", "redis"])
async def test_scenario_16_enqueue_runs_once_within_milliseconds(engine, client, tmp_path, adapter,
                                                                 adapter_of):
    worker = await start_queue(engine, tmp_path, {"adapter": adapter_of(adapter)})
    started: list[tuple[float, object]] = []
    client.register_function("email::send",
                             lambda data: started.append((time.perf_counter(), data)))
    await asyncio.sleep(0.05)
    try:
        answer = await enqueue(client, "email::send", {"to": "a"})
        assert set(answer) == {"messageReceiptId"} and len(answer["messageReceiptId"]) == 36
        await until(lambda: started)
        await asyncio.sleep(0.2)
        assert [data for _, data in started] == [{"to": "a"}]
        latencies = []
        for i in range(30):  # idle queue each time: enqueue-to-start latency
            t0 = time.perf_counter()
            await enqueue(client, "email::send", {"i": i})
            await until(lambda: len(started) == i + 2)
            latencies.append((started[-1][0] - t0) * 1000)
        median = statistics.median(latencies)
        print(f"\n[{adapter}] enqueue-to-start ms: median {median:.2f}, "
              f"p90 {sorted(latencies)[26]:.2f}, max {max(latencies):.2f}")
        assert median < 15, latencies
        assert [data for _, data in started[1:]] == [{"i": i} for i in range(30)]
        # the last handler has started; its ack follows once its result is back
        deadline = time.monotonic() + 2
        while True:
            stats = await call(client, "engine::queue::topic_stats", {"topic": "default"})
            if stats["in_flight"] == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert stats["depth"] == 0 and stats["in_flight"] == 0 and stats["dlq_depth"] == 0
    finally:
        await worker.stop()


async def test_enqueue_errors(engine, client, tmp_path):
    worker = await start_queue(engine, tmp_path, {
        "adapter": "memory",
        "queue_configs": {"pay": {"type": "fifo", "message_group_field": "tx"}}})
    try:
        with pytest.raises(InvocationError) as err:
            await enqueue(client, "x::y", {}, "nope")
        assert err.value.code == "enqueue_error"
        assert "Queue 'nope' not found" in err.value.message
        for payload in ({"amount": 1}, {"tx": None}, [1, 2], "text"):
            with pytest.raises(InvocationError) as err:
                await enqueue(client, "x::y", payload, "pay")
            assert err.value.code == "enqueue_error"
            assert "Queue 'pay' requires field 'tx'" in err.value.message
        # direct calls: clear codes, and the worker keeps serving
        with pytest.raises(InvocationError) as err:
            await call(client, "engine::queue::enqueue", {"queue": "default"})
        assert err.value.code == "deserialization_error"
        assert "function_id" in err.value.message
        with pytest.raises(InvocationError) as err:
            await call(client, "engine::queue::enqueue",
                       {"queue": "nope", "function_id": "f", "data": 1, "messageReceiptId": "r"})
        assert (err.value.code, err.value.message) == ("queue_not_found", "Queue 'nope' not found")
        with pytest.raises(InvocationError) as err:
            await call(client, "iii::durable::publish", {"topic": ""})
        assert err.value.code == "topic_not_set"
        with pytest.raises(InvocationError) as err:
            await call(client, "engine::queue::dlq_messages", {})
        assert err.value.code == "topic_required"
        with pytest.raises(InvocationError) as err:
            await call(client, "iii::queue::redrive_message", {"queue": "default"})
        assert err.value.code == "message_id_not_set"
        assert (await enqueue(client, "x::y", {"tx": 7}, "pay"))["messageReceiptId"]
    finally:
        await worker.stop()


async def test_enqueue_without_queue_worker(engine, client):
    with pytest.raises(InvocationError) as err:
        await enqueue(client, "email::send", {"to": "a"})
    assert err.value.code == "enqueue_error" and "engine::queue::enqueue" in err.value.message


def test_config_validation():
    with pytest.raises(ValueError, match="bad.*message_group_field"):
        parse_settings({"queue_configs": {"bad": {"type": "fifo"}}}, False)
    with pytest.raises(ValueError, match="concurrency"):
        parse_settings({"queue_configs": {"q": {"concurrency": 0}}}, False)
    with pytest.raises(ValueError, match="type"):
        parse_settings({"queue_configs": {"q": {"type": "lifo"}}}, False)
    with pytest.raises(ValueError, match="backoff_ms"):
        parse_settings({"queue_configs": {"q": {"backoff_ms": -1}}}, False)
    with pytest.raises(ValueError, match="unknown key config.queue_configs.q.retries"):
        parse_settings({"queue_configs": {"q": {"retries": 1}}}, False)
    with pytest.raises(ValueError, match="unknown key config.nope"):
        parse_settings({"nope": 1}, False)
    ok = parse_settings({"queue_configs": {"q": {"max_priority": 3}},
                         "adapter": {"name": "sqlite", "config": {"visibility_timeout_ms": 500}}},
                        True)
    assert ok.adapter.name == "memory" and ok.visibility_timeout_ms == 500
    assert set(ok.queues) == {"q", "default"}


async def test_invalid_config_does_not_start_and_reload_keeps_old(engine, client, tmp_path):
    with pytest.raises(ValueError, match="bad"):
        await start_queue(engine, tmp_path, {"queue_configs": {"bad": {"type": "fifo"}}})
    worker = await start_queue(engine, tmp_path, {"adapter": "memory",
                                                  "queue_configs": {"jobs": {}}})
    try:
        with pytest.raises(ValueError, match="bad"):
            await worker.reconfigure({"adapter": "memory",
                                      "queue_configs": {"bad": {"type": "fifo"}}})
        got = []
        client.register_function("j::run", got.append)
        await asyncio.sleep(0.05)
        await enqueue(client, "j::run", 1, "jobs")
        await until(lambda: got == [1])
        await worker.reconfigure({"adapter": "memory", "queue_configs": {"other": {}}})
        await enqueue(client, "j::run", 2, "other")
        await until(lambda: got == [1, 2])
        with pytest.raises(InvocationError):
            await enqueue(client, "j::run", 3, "jobs")
    finally:
        await worker.stop()


@pytest.mark.parametrize("adapter", ["sqlite", "memory", "redis"])
async def test_scenario_17_retries_with_exponential_backoff(engine, client, tmp_path, adapter,
                                                            adapter_of):
    worker = await start_queue(engine, tmp_path, {
        "adapter": adapter_of(adapter),
        "queue_configs": {"jobs": {"max_retries": 3, "backoff_ms": 100}}})
    times: list[float] = []

    def flaky(data):
        times.append(time.monotonic())
        if len(times) < 3:
            raise RuntimeError("not yet")
        return {"ok": True}

    client.register_function("job::flaky", flaky)
    await asyncio.sleep(0.05)
    try:
        await enqueue(client, "job::flaky", {"n": 1}, "jobs")
        await until(lambda: len(times) == 3)
        await asyncio.sleep(0.3)
        assert len(times) == 3
        gaps = [(b - a) * 1000 for a, b in zip(times, times[1:])]
        assert 90 <= gaps[0] <= 200 and 190 <= gaps[1] <= 320, gaps
        assert await call(client, "engine::queue::dlq_messages", {"topic": "jobs"}) == []
    finally:
        await worker.stop()


@pytest.mark.parametrize("adapter", ["sqlite", "memory", "redis"])
async def test_scenario_18_dlq_redrive_and_discard(engine, client, tmp_path, adapter, adapter_of):
    worker = await start_queue(engine, tmp_path, {
        "adapter": adapter_of(adapter),
        "queue_configs": {"jobs": {"max_retries": 3, "backoff_ms": 50}}})
    calls: list[tuple[float, object]] = []
    broken = {"yes": True}

    def handler(data):
        calls.append((time.monotonic(), data))
        if broken["yes"]:
            raise RuntimeError("forced")

    client.register_function("job::run", handler)
    await asyncio.sleep(0.05)
    try:
        first = (await enqueue(client, "job::run", {"k": 1}, "jobs"))["messageReceiptId"]
        await until(lambda: len(calls) == 3)
        gaps = [(b[0] - a[0]) * 1000 for a, b in zip(calls, calls[1:])]
        assert 45 <= gaps[0] <= 130 and 95 <= gaps[1] <= 200, gaps
        await asyncio.sleep(0.3)
        assert len(calls) == 3  # exactly max_retries deliveries
        dlq = await call(client, "engine::queue::dlq_messages", {"topic": "jobs"})
        assert len(dlq) == 1
        entry = dlq[0]
        assert entry["id"] == first and entry["payload"] == {"k": 1}
        assert "forced" in entry["error"] and entry["retries"] == 3
        assert entry["function_id"] == "job::run" and entry["size_bytes"] == len('{"k":1}')
        assert abs(entry["failed_at"] - time.time()) < 5
        stats = await call(client, "engine::queue::topic_stats", {"queue": "jobs"})
        assert (stats["depth"], stats["in_flight"], stats["dlq_depth"]) == (0, 0, 1)
        assert stats["config"]["max_retries"] == 3
        topics = await call(client, "engine::queue::dlq_topics", {})
        assert {"topic": "jobs", "broker_type": "function_queue", "message_count": 1} in topics
        listed = await call(client, "engine::queue::list_topics", {})
        assert {"name": "jobs", "broker_type": "function_queue", "subscriber_count": 10} in listed

        broken["yes"] = False
        assert await call(client, "iii::queue::redrive", {"queue": "jobs"}) == \
            {"queue": "jobs", "redriven": 1}
        await until(lambda: len(calls) == 4)
        assert calls[3][1] == {"k": 1}
        assert await call(client, "engine::queue::dlq_messages", {"topic": "jobs"}) == []
        assert await call(client, "iii::queue::redrive_message",
                          {"queue": "jobs", "message_id": "nope"}) == \
            {"queue": "jobs", "message_id": "nope", "redriven": 0}

        broken["yes"] = True
        second = (await enqueue(client, "job::run", {"k": 2}, "jobs"))["messageReceiptId"]
        third = (await enqueue(client, "job::run", {"k": 3}, "jobs"))["messageReceiptId"]
        await until(lambda: len(calls) == 10)
        await asyncio.sleep(0.05)
        dlq = await call(client, "engine::queue::dlq_messages", {"topic": "jobs"})
        assert [e["id"] for e in dlq] == [third, second]  # newest first
        assert await call(client, "iii::queue::discard_message",
                          {"queue": "jobs", "message_id": second}) == \
            {"queue": "jobs", "message_id": second, "redriven": 1}
        broken["yes"] = False
        assert (await call(client, "iii::queue::redrive_message",
                           {"queue": "jobs", "message_id": third}))["redriven"] == 1
        await until(lambda: len(calls) == 11)
        assert calls[-1][1] == {"k": 3}
        assert await call(client, "engine::queue::dlq_messages", {"topic": "jobs"}) == []
    finally:
        await worker.stop()


@pytest.mark.parametrize("adapter", ["sqlite", "memory", "redis"])
async def test_scenario_19_fifo_groups(engine, client, tmp_path, adapter, adapter_of):
    worker = await start_queue(engine, tmp_path, {"adapter": adapter_of(adapter), "queue_configs": {
        "pay": {"type": "fifo", "message_group_field": "tx", "concurrency": 2,
                "backoff_ms": 30}}})
    log: list[tuple[str, str, float]] = []
    failed = set()

    async def pay(data):
        name = data["name"]
        log.append(("start", name, time.monotonic()))
        await asyncio.sleep(0.02 + 0.01 * (hash(name) % 3))
        if name == "A2" and name not in failed:
            failed.add(name)
            log.append(("fail", name, time.monotonic()))
            raise RuntimeError("once")
        log.append(("end", name, time.monotonic()))

    client.register_function("pay::run", pay)
    await asyncio.sleep(0.05)
    try:
        for i in range(1, 6):
            await enqueue(client, "pay::run", {"tx": "A", "name": f"A{i}"}, "pay")
        for i in range(1, 4):
            await enqueue(client, "pay::run", {"tx": "B", "name": f"B{i}"}, "pay")
        await until(lambda: sum(1 for e in log if e[0] == "end") == 8, timeout=5)
        a_events = [(kind, name) for kind, name, _ in log if name.startswith("A")]
        assert a_events == [("start", "A1"), ("end", "A1"), ("start", "A2"), ("fail", "A2"),
                            ("start", "A2"), ("end", "A2"), ("start", "A3"), ("end", "A3"),
                            ("start", "A4"), ("end", "A4"), ("start", "A5"), ("end", "A5")]
        b_events = [(kind, name) for kind, name, _ in log if name.startswith("B")]
        assert b_events == [(k, f"B{i}") for i in range(1, 4) for k in ("start", "end")]
        spans = {}
        for kind, name, at in log:
            spans.setdefault(name, []).append(at)
        overlap = any(spans[a][0] < spans[b][-1] and spans[b][0] < spans[a][-1]
                      for a in spans if a.startswith("A") for b in spans if b.startswith("B"))
        assert overlap, "groups A and B never ran in parallel"
    finally:
        await worker.stop()


async def test_concurrency_limit_and_hot_reload(engine, client, tmp_path):
    worker = await start_queue(engine, tmp_path, {"queue_configs": {"q": {"concurrency": 2}}})
    running, peak, done = [0], [0], []

    async def job(n):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.03)
        running[0] -= 1
        done.append(n)

    client.register_function("c::job", job)
    await asyncio.sleep(0.05)
    try:
        for n in range(6):
            await enqueue(client, "c::job", n, "q")
        await until(lambda: len(done) == 6)
        assert peak[0] == 2
        # restart of that queue with a new concurrency; then a swap to another sqlite file
        await worker.reconfigure({"queue_configs": {"q": {"concurrency": 4}}})
        peak[0] = 0
        for n in range(8):
            await enqueue(client, "c::job", n, "q")
        await until(lambda: len(done) == 14)
        assert peak[0] == 4
        other = {"name": "sqlite", "config": {"file_path": "data/other.db"}}
        await worker.reconfigure({"adapter": other, "queue_configs": {"q": {}}})
        await enqueue(client, "c::job", 99, "q")
        await until(lambda: done[-1] == 99)
        assert (tmp_path / "data" / "other.db").exists()
    finally:
        await worker.stop()
