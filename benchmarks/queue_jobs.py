#!/usr/bin/env python
"""Background-job benchmark: iii-queue (sqlite) vs Celery, Dramatiq and arq on Redis.

Run from the repository root:

    .venv/bin/python benchmarks/queue_jobs.py              # 20,000 jobs, medians of 3 runs
    .venv/bin/python benchmarks/queue_jobs.py --quick      # 3,000 jobs, 1 run, < 1 minute
    .venv/bin/python benchmarks/queue_jobs.py --runs 5 --json out.json --only pyiii,celery
    .venv/bin/python benchmarks/queue_jobs.py --only pyiii --profile /tmp/q   # + py-spy

Needs the ``bench`` extra (``.venv/bin/pip install 'celery[redis]' 'dramatiq[redis]' arq``;
arq pins redis<6 but runs on the project's redis-py, so install it with ``--no-deps``) and
``redis-server`` (a PRIVATE one on a free port with ``--save "" --appendonly no``, flushed
between runs and stopped at the end).

Every system gets one broker, one producer process and one consumer process running a no-op
job with 10 jobs in flight at most:

- ``pyiii``    a real ``iii`` engine process in a fresh temp project (iii-queue on its default
               ``sqlite`` adapter, data/queue.db, queue ``default`` with concurrency 10); the
               producer is a pyiii.sdk client calling ``trigger_async(..., action=
               TriggerAction.Enqueue(queue="default"))`` with up to 64 calls outstanding;
               the consumer is a pyiii.sdk worker registering the no-op function.
- ``pyiii-redis`` the same with iii-queue on its ``redis`` adapter (the private redis-server;
               its CPU counts as broker CPU with the engine's).
- ``celery``   Celery, Redis broker, ``worker --pool threads --concurrency 10`` (no result
               backend; mingle/gossip/heartbeat off); producer: ``task.delay`` in a loop.
- ``dramatiq`` Dramatiq ``RedisBroker``, one worker process with 10 worker threads;
               producer: ``actor.send`` in a loop.
- ``arq``      arq ``Worker(max_jobs=10, keep_result=0, poll_delay=0.01)`` (the default
               0.5 s poll caps it near 200 jobs/s);
               producer: ``await pool.enqueue_job`` with up to 64 calls outstanding.

Each run, after one warm-up job went through end to end:

1. *enqueue*: the producer enqueues N jobs as fast as it can while the consumer is connected
   but holds the jobs it receives at a gate (so no system is slowed by its own consumer);
   enqueue/s = N / producer wall time.
2. *drain*: the gate opens (``go`` on the consumer's stdin); processed/s = N / (time the last
   job finished - gate opening), measured in the consumer with a backlog of N jobs.
3. *paced*: M more jobs at a steady 200 jobs/s (far below every system's capacity);
   enqueue-to-start latency = consumer start time - the ``time.time()`` the producer put in
   the job just before enqueuing it (same machine clock); p50/p99 over the M jobs.

The CPU time of the broker (engine or redis-server), producer and consumer over phases 1-2
is read from /proc. Systems are interleaved within a run; the report gives medians over runs.
Internal roles (``--role ...``) are how the script starts its own child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from benchlib import Child, engine_on_free_port, spawn_logged, cpu_seconds, free_port, machine, run_like_iii, settle_like_iii

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("pyiii", "pyiii-redis", "celery", "dramatiq", "arq")
FN = "bench::noop"
CONCURRENCY = 10
WINDOW = 64  # outstanding enqueue calls for the async producers
PACED_RATE = 200.0
# arq polls Redis; its default poll_delay (0.5 s) caps it near 200 jobs/s with max_jobs 10,
# so it runs with 10 ms here: its best case, not its default
ARQ_POLL_S = 0.01


def emit(*parts: Any) -> None:
    print(*parts, flush=True)


def pct(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]


# ---------------------------------------------------------------------------------------
# consumer side: what every no-op job does
# ---------------------------------------------------------------------------------------


class Recorder:
    """The consumer's side of the measurement. Thread-safe: Celery and Dramatiq run jobs on
    threads.

    Flood jobs wait at a gate until the orchestrator writes ``go`` on the consumer's stdin
    (the enqueue phase runs against a connected, idle consumer); processed/s is then N / (last
    flood job done - gate opening). Paced jobs record start - enqueue time. A phase's summary
    goes to ``out/<phase>.json`` when its last job is recorded."""

    def __init__(self, out: Path, counts: dict[str, int]) -> None:
        self.out = out
        self.counts = counts
        self.lock = threading.Lock()
        self.rows: dict[str, list[float]] = {p: [] for p in counts}
        self.gate = threading.Event()
        self.opened = 0.0
        threading.Thread(target=self._await_go, daemon=True).start()

    def _await_go(self) -> None:
        if sys.stdin.readline().strip() == "go":
            self.opened = time.time()
            self.gate.set()

    def held(self, payload: dict[str, Any]) -> bool:
        """True while this job must wait at the gate (async consumers poll this)."""
        return payload["p"] == "f" and not self.gate.is_set()

    def sync_job(self, payload: dict[str, Any]) -> None:
        if payload["p"] == "f":
            self.gate.wait()
        self.job(payload)

    def job(self, payload: dict[str, Any]) -> None:
        now = time.time()
        phase = payload["p"]
        if phase == "w":
            (self.out / "ready").touch()
            return
        with self.lock:
            rows = self.rows[phase]
            rows.append(now if phase == "f" else (now - payload["t"]) * 1000)
            if len(rows) != self.counts[phase]:
                return
        if phase == "f":
            seconds = max(rows) - self.opened
            summary = {"jobs": len(rows), "seconds": seconds,
                       "processed_per_s": len(rows) / seconds}
        else:
            lat = sorted(rows)
            summary = {"jobs": len(rows), "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                       "max_ms": lat[-1]}
        tmp = self.out / f"{phase}.tmp"
        tmp.write_text(json.dumps(summary))
        tmp.rename(self.out / f"{phase}.json")


def consumer(system: str, target: str, rec: Recorder) -> None:
    async def gate(payload: dict[str, Any]) -> None:
        while rec.held(payload):
            await asyncio.sleep(0.002)
        rec.job(payload)

    if system == "pyiii":
        from pyiii.sdk import InitOptions, register_worker

        iii = register_worker(target, InitOptions(worker_name="bench-consumer"))
        iii.register_function(FN, gate)
        threading.Event().wait()
    elif system == "celery":
        app = celery_app(target)

        @app.task(name="bench.noop", ignore_result=True)
        def noop_task(payload: dict[str, Any]) -> None:
            rec.sync_job(payload)

        app.worker_main(["worker", "--pool", "threads", "--concurrency", str(CONCURRENCY),
                         "--loglevel", "WARNING", "--without-mingle", "--without-gossip",
                         "--without-heartbeat", "--queues", "bench"])
    elif system == "dramatiq":
        from dramatiq import Worker

        broker = dramatiq_broker(target, rec.sync_job)
        worker = Worker(broker, worker_threads=CONCURRENCY)
        worker.start()
        threading.Event().wait()
    elif system == "arq":
        from arq.worker import Worker, func

        async def noop(ctx: Any, payload: dict[str, Any]) -> None:
            await gate(payload)

        async def run() -> None:
            worker = Worker(functions=[func(noop, name="noop")],
                            redis_settings=arq_settings(target), max_jobs=CONCURRENCY, keep_result=0, poll_delay=ARQ_POLL_S,
                            handle_signals=False)
            await worker.async_run()

        asyncio.run(run())


async def bare_engine(project: str) -> None:
    """``--bare-engine``: Engine + WebSocket listener + iii-queue (sqlite) in one process,
    without the ``iii`` command's manager around them."""
    from pyiii.engine.inprocess import local_connector
    from pyiii.workers import queue
    from pyiii.workers.base import WorkerContext

    engine, listener, url = await engine_on_free_port()
    worker = await queue.start(WorkerContext("iii-queue", {}, Path(project), False, url=url,
                                             connector=local_connector(engine)))
    settle_like_iii()
    emit("READY", listener.port)
    batch = getattr(worker.store, "batch", None)
    while True:
        await asyncio.sleep(2)
        if batch is not None and batch.commits:
            print(f"group commit: {batch.steps} steps in {batch.commits} commits "
                  f"({batch.steps / batch.commits:.1f} per commit)", file=sys.stderr, flush=True)


def celery_app(target: str) -> Any:
    from celery import Celery

    app = Celery("bench", broker=target)
    app.conf.update(task_default_queue="bench", worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True)
    return app


def dramatiq_broker(target: str, job: Callable[[dict[str, Any]], None] | None = None) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=target)
    dramatiq.set_broker(broker)

    @dramatiq.actor(actor_name="noop", queue_name="bench", max_retries=0)
    def noop(payload: dict[str, Any]) -> None:
        if job is not None:
            job(payload)

    return broker


def arq_settings(target: str) -> Any:
    from arq.connections import RedisSettings

    return RedisSettings.from_dsn(target)


# ---------------------------------------------------------------------------------------
# producer side: stdin commands "warm", "flood", "paced"; stdout READY / WARM / ENQUEUED / SENT
# ---------------------------------------------------------------------------------------


Sender = tuple[Callable[[dict[str, Any]], Any], bool, Callable[[], Any]]


def make_sender(system: str, target: str) -> Sender:
    """``(send, is_async, close)`` for one system."""
    if system == "pyiii":
        from pyiii.sdk import InitOptions, TriggerAction, register_worker

        iii = register_worker(target, InitOptions(worker_name="bench-producer"))
        action = TriggerAction.Enqueue(queue="default")

        async def send_pyiii(payload: dict[str, Any]) -> Any:
            answer = await iii.trigger_async({"function_id": FN, "payload": payload,
                                              "action": action})
            assert answer["messageReceiptId"]

        return send_pyiii, True, iii.shutdown_async
    if system == "celery":
        app = celery_app(target)

        @app.task(name="bench.noop", ignore_result=True)
        def noop_task(payload: dict[str, Any]) -> None:
            """Only its name matters here: the consumer process runs the real one."""

        return noop_task.delay, False, lambda: None
    if system == "dramatiq":
        broker = dramatiq_broker(target)
        actor = broker.get_actor("noop")
        return actor.send, False, broker.close
    if system == "arq":
        from arq import create_pool

        state: dict[str, Any] = {}

        async def send_arq(payload: dict[str, Any]) -> Any:
            if "pool" not in state:
                state["pool"] = await create_pool(arq_settings(target))
            assert await state["pool"].enqueue_job("noop", payload) is not None

        async def close_arq() -> None:
            if "pool" in state:
                await state["pool"].aclose()

        return send_arq, True, close_arq
    raise SystemExit(f"unknown system {system}")


async def producer(system: str, target: str, n_flood: int, n_paced: int) -> None:
    send, is_async, close = make_sender(system, target)

    async def one(payload: dict[str, Any]) -> None:
        if is_async:
            await send(payload)
        else:
            send(payload)

    loop = asyncio.get_running_loop()
    emit("READY")
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "warm":
            await one({"p": "w", "t": time.time()})
            emit("WARM")
        elif command == "flood":
            t0 = time.perf_counter()
            if is_async:
                counter = iter(range(n_flood))

                async def lane() -> None:
                    for _ in counter:
                        await one({"p": "f", "t": time.time()})

                await asyncio.gather(*(lane() for _ in range(WINDOW)))
            else:
                for _ in range(n_flood):
                    send({"p": "f", "t": time.time()})
            emit("ENQUEUED", time.perf_counter() - t0)
        elif command == "paced":
            start = time.perf_counter()
            for i in range(n_paced):
                delay = start + i / PACED_RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await one({"p": "l", "t": time.time()})
            emit("SENT")
        else:
            break
    result = close()
    if asyncio.iscoroutine(result):
        await result


# ---------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.counter = 0
        self.redis: Child | None = None
        self.redis_port = 0

    async def spawn(self, name: str, argv: list[str], stdin: bool = False,
                    cwd: Path = ROOT) -> Child:
        self.counter += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("III_")}
        return await spawn_logged(self.workdir, self.counter, name, argv, stdin=stdin, cwd=cwd,
                                  env=env)

    def py(self, role: str, *extra: Any) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--role", role, *map(str, extra)]

    async def start_redis(self) -> None:
        self.redis_port = free_port()
        self.redis = await self.spawn("redis-server", [
            self.args.redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            "--dir", str(self.workdir)])
        await self.redis_cmd("PING")

    async def redis_cmd(self, *words: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        writer.write(("*%d\r\n" % len(words) + "".join(
            f"${len(w)}\r\n{w}\r\n" for w in words)).encode())
        await writer.drain()
        await reader.readline()
        writer.close()

    async def start_engine(self, redis_url: str | None = None) -> tuple[Child, str]:
        """An engine with iii-queue on its default sqlite adapter, or on ``redis_url``."""
        project = Path(tempfile.mkdtemp(prefix="queue-", dir=self.workdir))
        if self.args.bare_engine and redis_url is None:
            engine = await self.spawn("bare-engine", self.py("engine", project))
            return engine, f"ws://127.0.0.1:{await engine.expect('READY')}"
        port = free_port()
        queue = "  - name: iii-queue\n"
        if redis_url is not None:
            queue += ("    config:\n      adapter: {name: redis, config: "
                      f"{{redis_url: '{redis_url}', key_prefix: 'bench:'}}}}\n")
        (project / "config.yaml").write_text(
            "workers:\n  - name: iii-worker-manager\n"
            f"    config: {{port: {port}, host: 127.0.0.1}}\n" + queue)
        iii = Path(sys.executable).parent / "iii"
        argv = [str(iii)] if iii.exists() else [sys.executable, "-m", "pyiii.cli.main"]
        engine = await self.spawn("iii-engine", argv, cwd=project)
        deadline = time.monotonic() + 30
        while "ready (" not in engine.log_path.read_text(errors="replace"):
            if engine.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iii engine not ready:\n{engine.log_path.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        return engine, f"ws://127.0.0.1:{port}"

    async def system(self, system: str) -> dict[str, Any]:
        args = self.args
        children: list[Child] = []
        out = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=self.workdir))
        try:
            extra: list[Child] = []  # pyiii-redis: the engine's redis-server counts as broker too
            if system == "pyiii":
                broker, target = await self.start_engine()
                children.append(broker)
            elif system == "pyiii-redis":
                assert self.redis is not None
                await self.redis_cmd("FLUSHALL")
                broker, target = await self.start_engine(
                    f"redis://127.0.0.1:{self.redis_port}/0")
                children.append(broker)
                extra.append(self.redis)
            else:
                assert self.redis is not None
                await self.redis_cmd("FLUSHALL")
                broker, target = self.redis, f"redis://127.0.0.1:{self.redis_port}/0"
            role = system.split("-")[0]  # pyiii-redis uses the pyiii producer and consumer
            cons = await self.spawn(f"{system}-consumer", self.py(
                "consumer", role, target, out, args.jobs, args.paced), stdin=True)
            prod = await self.spawn(f"{system}-producer", self.py(
                "producer", role, target, args.jobs, args.paced), stdin=True)
            children += [cons, prod]
            await prod.expect("READY", 30)

            async def command(word: str, answer: str, timeout: float) -> str:
                assert prod.proc.stdin is not None
                prod.proc.stdin.write(word.encode() + b"\n")
                await prod.proc.stdin.drain()
                return await prod.expect(answer, timeout)

            deadline = time.monotonic() + 30
            while not (out / "ready").exists():  # end to end: a job reached the consumer
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{system}: no warm-up job reached the consumer")
                await command("warm", "WARM", 30)
                await asyncio.sleep(0.3)
            pids = [broker.pid, cons.pid, prod.pid, *(c.pid for c in extra)]
            cpu0 = [cpu_seconds(p) for p in pids]
            enqueue_s = float(await command("flood", "ENQUEUED", args.timeout))
            spies = await self.spy(system, pids[:3])
            assert cons.proc.stdin is not None
            cons.proc.stdin.write(b"go\n")  # open the gate: the backlog drains
            await cons.proc.stdin.drain()
            flood = await wait_file(out / "f.json", args.timeout, cons)
            cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0)]
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                await spy.wait()
            await command("paced", "SENT", args.timeout)
            paced = await wait_file(out / "l.json", 30, cons)
            return {"enqueue_per_s": args.jobs / enqueue_s,
                    "processed_per_s": flood["processed_per_s"],
                    "p50_ms": paced["p50_ms"], "p99_ms": paced["p99_ms"],
                    "cpu_us_per_job": sum(cpu) * 1e6 / args.jobs,
                    "broker_cpu_us_per_job": (cpu[0] + sum(cpu[3:])) * 1e6 / args.jobs}
        finally:
            for child in reversed(children):
                await child.stop()


    async def spy(self, system: str, pids: list[int]) -> list[asyncio.subprocess.Process]:
        """With ``--profile PREFIX``: py-spy on the pyiii processes during the drain (raw
        collapsed stacks in ``PREFIX-{engine,consumer,producer}.txt``)."""
        if not self.args.profile or system != "pyiii":
            return []
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spies = []
        for name, pid in zip(("engine", "consumer", "producer"), pids):
            spies.append(await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                "-o", f"{self.args.profile}-{name}.txt", stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL))
        await asyncio.sleep(1.0)  # py-spy attaches before the flood starts
        return spies


async def wait_file(path: Path, timeout: float, child: Child) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited:\n{child.log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} not written in {timeout}s; see {child.log_path}")
        await asyncio.sleep(0.02)
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------

FIELDS = ("enqueue_per_s", "processed_per_s", "p50_ms",
          "p99_ms", "cpu_us_per_job", "broker_cpu_us_per_job")
LABELS = {"pyiii": "pyiii iii-queue (sqlite)", "pyiii-redis": "pyiii iii-queue (redis adapter)",
          "celery": "Celery + Redis (threads, 10)",
          "dramatiq": "Dramatiq + Redis (10 threads)", "arq": "arq + Redis (max_jobs 10)"}


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("celery", "kombu", "dramatiq", "arq", "redis"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def summarise(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for system in systems:
        rows = [r[system] for r in runs if system in r]
        if rows:
            out[system] = {k: statistics.median(row[k] for row in rows) for k in FIELDS}
            out[system]["runs"] = [row["processed_per_s"] for row in rows]
    return out


def report(s: dict[str, Any]) -> str:
    lines = ["| system | enqueue/s | processed/s | enqueue-to-start p50 ms | p99 ms | "
             "CPU µs/job (all) | broker CPU µs/job | runs (processed/s) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for system, r in s.items():
        lines.append(
            f"| {LABELS[system]} | {r['enqueue_per_s']:,.0f} | {r['processed_per_s']:,.0f} | "
            f"{r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['cpu_us_per_job']:,.0f} | {r['broker_cpu_us_per_job']:,.0f} | "
            + ", ".join(f"{x:,.0f}" for x in r["runs"]) + " |")
    peers = [k for k in s if not k.startswith("pyiii")]
    for ours in (k for k in s if k.startswith("pyiii")):
        if not peers:
            break
        best = max(peers, key=lambda k: s[k]["processed_per_s"])
        lines += ["", f"{ours} / fastest peer ({best}) processed/s: "
                  f"{s[ours]['processed_per_s'] / s[best]['processed_per_s']:.2f}×; "
                  "enqueue/s ratios: " + ", ".join(
                      f"{k} {s[ours]['enqueue_per_s'] / s[k]['enqueue_per_s']:.2f}×"
                      for k in peers)]
    return "\n".join(lines)


async def orchestrate(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pyiii-bench-queue-"))
    runner = Runner(args, workdir)
    systems = [s for s in (args.only.split(",") if args.only else SYSTEMS)]
    emit(f"# {machine()}")
    emit(f"# {versions()}")
    emit(f"# {args.jobs} jobs flood + {args.paced} paced at {PACED_RATE:.0f}/s, "
         f"concurrency {CONCURRENCY}, {args.runs} run(s); child logs in {workdir}")
    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    try:
        if any(s != "pyiii" for s in systems):  # peers and pyiii-redis
            await runner.start_redis()
        for run in range(args.runs):
            result: dict[str, Any] = {}
            for system in systems:
                t0 = time.perf_counter()
                try:
                    result[system] = r = await runner.system(system)
                except Exception as exc:  # noqa: BLE001 - one system failing keeps the others
                    emit(f"run {run + 1} {system}: FAILED {exc}")
                    continue
                emit(f"run {run + 1}/{args.runs} {system:9s} enqueue {r['enqueue_per_s']:8,.0f}/s"
                     f"  processed {r['processed_per_s']:8,.0f}/s  paced p50 {r['p50_ms']:.2f} ms"
                     f" p99 {r['p99_ms']:.2f} ms  ({time.perf_counter() - t0:.1f}s)")
            runs.append(result)
        summary = summarise(runs, systems)
        emit("")
        emit(report(summary))
        if args.profile and "pyiii" in systems:
            from hub_roundtrip import summarise_profile

            for name in ("engine", "consumer", "producer"):
                if Path(f"{args.profile}-{name}.txt").exists():
                    emit(summarise_profile(f"{args.profile}-{name}.txt"))
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "versions": versions(),
                                                   "args": vars(args), "summary": summary,
                                                   "runs": runs}, indent=2))
    finally:
        if runner.redis is not None:
            await runner.redis.stop()
    emit(f"\n# total {time.perf_counter() - t_start:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000 jobs, 1 run")
    parser.add_argument("--runs", type=int, help="runs (medians are reported; default 3)")
    parser.add_argument("--jobs", type=int, help="jobs in the flood phase (default 20,000)")
    parser.add_argument("--paced", type=int, help="jobs in the paced phase (default 1,000)")
    parser.add_argument("--only", help="comma-separated systems (default: all)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per phase")
    parser.add_argument("--json", help="write raw and median results to this file")
    parser.add_argument("--bare-engine", action="store_true",
                        help="pyiii: Engine + listener + iii-queue in one plain process, not `iii`")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="py-spy the pyiii engine, consumer and producer during the drain")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        a = args.role_args
        if args.role == "consumer":
            consumer(a[0], a[1], Recorder(Path(a[2]), {"f": int(a[3]), "l": int(a[4])}))
        elif args.role == "engine":
            run_like_iii(bare_engine(a[0]))
        elif args.role == "producer":
            asyncio.run(producer(a[0], a[1], int(a[2]), int(a[3])))
        else:
            raise SystemExit(f"unknown role {args.role}")
        return
    args.runs = args.runs or (1 if args.quick else 3)
    args.jobs = args.jobs or (3_000 if args.quick else 20_000)
    args.paced = args.paced or (200 if args.quick else 1_000)
    try:
        asyncio.run(orchestrate(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
