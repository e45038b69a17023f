"""iii-queue at-least-once delivery with the sqlite (and redis) adapter: crashes, leases, restarts
(§4.4)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pyiii.sdk import InitOptions, register_worker

from .conftest_peers import fn, make_spec
from .test_worker_queue import call, enqueue, start_queue, until

VT_MS = 600


async def connect(engine, name="jobs"):
    iii = register_worker(engine.url, InitOptions(worker_name=name))
    await iii.wait_connected(5)
    return iii


async def until_gone(iii, name, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        listed = await call(iii, "engine::workers::list", {})
        if not any(w.get("name") == name for w in listed["workers"]):
            return
        assert time.monotonic() < deadline, f"{name} still listed"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("adapter", ["sqlite", "redis"])
async def test_job_held_by_a_crashed_queue_worker_is_redelivered_after_visibility_timeout(
        engine, tmp_path, adapter, request):
    options: dict = {"visibility_timeout_ms": VT_MS}
    if adapter == "redis":
        options.update(redis_url=request.getfixturevalue("redis_server").url,
                       key_prefix=request.getfixturevalue("redis_prefix"))
    config = {"adapter": {"name": adapter, "config": options},
              "queue_configs": {"jobs": {"backoff_ms": 50}}}
    worker = await start_queue(engine, tmp_path, config)
    c = await connect(engine)
    starts: list[float] = []
    finishes: list[int] = []
    hold = asyncio.Event()

    async def job(data):
        starts.append(time.monotonic())
        if len(starts) == 1:
            await hold.wait()  # the first delivery never finishes while its holder lives
        finishes.append(data["n"])

    c.register_function("job::slow", job)
    await asyncio.sleep(0.05)
    try:
        await enqueue(c, "job::slow", {"n": 1}, "jobs")
        await until(lambda: starts)
        await asyncio.sleep(VT_MS / 1000)  # renewals keep the lease alive past the timeout
        assert len(starts) == 1
        await worker.crash()  # no release, no ack: what a killed engine leaves behind
        crashed_at = time.monotonic()
        worker = await start_queue(engine, tmp_path, config)
        await until(lambda: len(starts) == 2, timeout=5)
        waited = starts[1] - crashed_at
        assert 0.2 <= waited <= 2.5, waited  # lease expiry (≤ VT) + 50 ms backoff
        await until(lambda: finishes == [1])
        hold.set()  # the lost first delivery ends now; nothing is recorded for it
        await asyncio.sleep(0.3)
        assert len(starts) == 2
        stats = await call(c, "engine::queue::topic_stats", {"queue": "jobs"})
        assert (stats["depth"], stats["in_flight"], stats["dlq_depth"]) == (0, 0, 0)
    finally:
        await c.shutdown_async()
        await worker.stop()


async def test_sigkilled_queue_process_job_runs_again_exactly_once(engine, tmp_path):
    """Scenario 21 with the queue worker as a real process (isolation: process) killed -9."""
    config = {"adapter": {"name": "sqlite", "config": {"visibility_timeout_ms": VT_MS}},
              "queue_configs": {"jobs": {"backoff_ms": 50}}}
    c = await connect(engine)
    starts: list[float] = []
    done: list[object] = []

    async def job(data):
        starts.append(time.monotonic())
        if len(starts) == 1:
            await asyncio.sleep(10)
        done.append(data)

    c.register_function("job::run", job)
    env = {**os.environ, "III_URL": engine.url, "III_WORKER_CONFIG": json.dumps(config),
           "III_WORKER_NAME": "iii-queue"}
    proc = subprocess.Popen([sys.executable, "-m", "pyiii.workers.queue"], cwd=tmp_path, env=env,
                            start_new_session=True)
    worker = None
    try:
        deadline = time.monotonic() + 15
        while True:  # wait until the process serves engine::queue::enqueue
            try:
                await enqueue(c, "job::run", {"n": 1}, "jobs")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await until(lambda: starts, timeout=5)
        await asyncio.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 5)
        killed_at = time.monotonic()
        await until_gone(c, "iii-queue")
        worker = await start_queue(engine, tmp_path, config)
        await until(lambda: done, timeout=5)
        assert starts[1] - killed_at <= 2.0
        await asyncio.sleep(0.3)
        assert done == [{"n": 1}] and len(starts) == 2
        stats = await call(c, "engine::queue::topic_stats", {"queue": "jobs"})
        assert (stats["depth"], stats["in_flight"]) == (0, 0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        await c.shutdown_async()
        if worker is not None:
            await worker.stop()


async def test_restart_keeps_waiting_jobs_and_never_repeats_acknowledged_ones(engine, tmp_path):
    config = {"queue_configs": {"jobs": {"concurrency": 1}}}
    worker = await start_queue(engine, tmp_path, config)
    c = await connect(engine)
    done: list[int] = []
    gate = {"open": False}

    async def job(data):
        while not gate["open"]:
            await asyncio.sleep(0.01)
        done.append(data)

    c.register_function("job::gated", job)
    await asyncio.sleep(0.05)
    try:
        for n in range(5):
            await enqueue(c, "job::gated", n, "jobs")
        stats = await call(c, "engine::queue::topic_stats", {"queue": "jobs"})
        assert (stats["depth"], stats["in_flight"]) == (4, 1)
        await worker.stop(grace_s=0.1)  # the running job goes back to waiting, uncounted
        assert (tmp_path / "data" / "queue.db").exists()
        gate["open"] = True
        worker = await start_queue(engine, tmp_path, config)
        # job 0 was released, so it runs again (at least once); its first run also ends now
        await until(lambda: len(done) == 6)
        assert sorted(done) == [0, 0, 1, 2, 3, 4] and [n for n in done if n] == [1, 2, 3, 4]
        await worker.stop()
        worker = await start_queue(engine, tmp_path, config)  # nothing acknowledged comes back
        await asyncio.sleep(0.3)
        assert len(done) == 6
        assert await call(c, "engine::queue::dlq_messages", {"topic": "jobs"}) == []
    finally:
        await c.shutdown_async()
        await worker.stop()


async def test_target_worker_killed_mid_job_gets_it_again(engine, tmp_path, peers):
    """The handler's process dies mid-call: a failed attempt, retried after the backoff, and
    delivered to the function's next worker."""
    worker = await start_queue(engine, tmp_path, {
        "queue_configs": {"jobs": {"max_retries": 6, "backoff_ms": 200}}})
    c = await connect(engine)
    try:
        first = await peers.astart("s25", engine.url, make_spec("slow-py", [fn("py::job", "slow")]))
        await enqueue(c, "py::job", {"ms": 5000}, "jobs")
        await first.event("invoke", function_id="py::job", timeout=5)
        await first.akill()
        killed_at = time.monotonic()
        again: list[tuple[float, object]] = []
        c.register_function("py::job", lambda data: again.append((time.monotonic(), data)))
        await until(lambda: again, timeout=5)
        assert again[0][1] == {"ms": 5000}
        assert again[0][0] - killed_at < 1.5  # one failed attempt, then a 200 ms backoff
        await asyncio.sleep(0.3)
        assert len(again) == 1
    finally:
        await c.shutdown_async()
        await worker.stop()
