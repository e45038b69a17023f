#!/usr/bin/env python
"""State get/set benchmark: iii-state through the engine vs direct Redis GET/SET.

Run from the repository root:

    .venv/bin/python benchmarks/state_ops.py            # full: 3 reps, ~2.5 minutes
    .venv/bin/python benchmarks/state_ops.py --quick    # 1 rep, 1 s windows, < 1 minute

Needs ``redis-server`` (default /usr/bin/redis-server; a PRIVATE one is started on a free
port with ``--save "" --appendonly no`` and stopped at the end) and redis-py in the venv
(``.venv/bin/pip install redis``, the ``bench`` extra).

Scenarios (every repetition starts fresh processes; repetitions are interleaved):

- ``pyiii-memory``  engine process (Engine + WebSocket Listener + iii-state in-process with
                    ``adapter: memory``); a separate client process (pyiii.sdk over WebSocket)
                    calls ``trigger_async`` on ``state::set`` / ``state::get``.
- ``pyiii-sqlite``  the same with ``adapter: sqlite`` (a fresh data/state.db in a temp
                    folder, the adapter's default ``synchronous: normal``).
- ``redis``         the same number of client processes using redis-py asyncio
                    (``redis.asyncio.Redis``, its connection pool) doing SET / GET on the
                    private redis-server.

Both kinds of client process run on uvloop (``pyiii.sdk.run``), like for like.

The value is a small JSON object (``{"n": i, "s": "x"*32}``) over 1,000 keys; the Redis client
stores ``orjson.dumps(value)`` and ``orjson.loads`` what it gets so that both sides encode and
decode JSON. Per client process, C asyncio tasks each loop ``await op()`` (C = 1, 32): a warm-up
window, then a measured one, first ``set``, then ``get``. ops/s = completed ops / wall time,
summed over client processes; p50/p99 from per-op ``perf_counter_ns`` in the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from benchlib import Child, engine_on_free_port, spawn_logged, cpu_seconds, free_port, machine, run_like_iii, settle_like_iii

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCIES = (1, 32)
OPS = ("set", "get")
SCENARIOS = ("pyiii-memory", "pyiii-sqlite", "redis")
KEYS = 1000
SCOPE = "bench"


def emit(*parts: Any) -> None:
    print(*parts, flush=True)


def value(i: int) -> dict[str, Any]:
    return {"n": i, "s": "x" * 32}


# ---------------------------------------------------------------------------------------
# child roles
# ---------------------------------------------------------------------------------------


async def role_engine(adapter: str, data_dir: str) -> None:
    from pyiii.engine.inprocess import local_connector
    from pyiii.workers import state
    from pyiii.workers.base import WorkerContext

    engine, listener, url = await engine_on_free_port()
    ctx = WorkerContext("iii-state", {"adapter": adapter}, Path(data_dir), False, url=url,
                        connector=local_connector(engine))
    await state.start(ctx)
    settle_like_iii()
    emit("READY", listener.port)
    await asyncio.Event().wait()


async def run_window(op: Callable[[int], Awaitable[Any]], conc: int, seconds: float) -> dict[str, Any]:
    lat: list[int] = []
    clock = time.perf_counter
    stop = clock() + seconds

    async def one(start: int) -> None:
        pc = time.perf_counter_ns
        append = lat.append
        i = start
        while clock() < stop:
            t0 = pc()
            await op(i % KEYS)
            append(pc() - t0)
            i += 37

    t0 = clock()
    await asyncio.gather(*(one(k * 31) for k in range(conc)))
    elapsed = clock() - t0
    lat.sort()
    n = len(lat)
    return {"ops": n, "seconds": elapsed, "ops_per_s": n / elapsed,
            "p50_us": lat[n // 2] / 1000, "p99_us": lat[min(n - 1, int(n * 0.99))] / 1000}


async def role_client(backend: str, target: str, warmup: float, seconds: float) -> None:
    import orjson

    if backend == "pyiii":
        from pyiii.sdk import InitOptions, register_worker

        client = register_worker(target, InitOptions(worker_name="bench-state-client"))
        await client.wait_connected(15)
        trigger = client.trigger_async
        deadline = time.monotonic() + 15
        while True:  # iii-state registers its functions right after the engine says READY
            try:
                await trigger({"function_id": "state::get", "payload": {"scope": SCOPE, "key": "k0"}})
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

        async def do_set(i: int) -> Any:
            return await trigger({"function_id": "state::set",
                                  "payload": {"scope": SCOPE, "key": f"k{i}", "value": value(i)}})

        async def do_get(i: int) -> Any:
            return await trigger({"function_id": "state::get",
                                  "payload": {"scope": SCOPE, "key": f"k{i}"}})

        async def close() -> None:
            await client.shutdown_async()
    else:
        import redis.asyncio as aioredis

        host, port = target.rsplit(":", 1)
        r = aioredis.Redis(host=host, port=int(port), max_connections=256)
        await r.ping()

        async def do_set(i: int) -> Any:
            return await r.set(f"{SCOPE}:k{i}", orjson.dumps(value(i)))

        async def do_get(i: int) -> Any:
            raw = await r.get(f"{SCOPE}:k{i}")
            return None if raw is None else orjson.loads(raw)

        async def close() -> None:
            await r.aclose()

    assert (await do_set(1)) is not None
    got = await do_get(1)
    assert got == value(1), got
    emit("GO")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # all clients ready
    results: dict[str, Any] = {}
    for conc in CONCURRENCIES:
        for name, op in (("set", do_set), ("get", do_get)):
            await run_window(op, conc, warmup)
            emit("MARK begin", conc, name)
            results[f"{conc}/{name}"] = await run_window(op, conc, seconds)
            emit("MARK end", conc, name)
    emit("RESULT", json.dumps(results))
    await close()


# ---------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.children: list[Child] = []
        self.counter = 0
        self.redis: Child | None = None
        self.redis_port = 0

    async def spawn(self, name: str, argv: list[str], stdin: bool = False) -> Child:
        self.counter += 1
        return await spawn_logged(self.workdir, self.counter, name, argv, stdin=stdin)

    def py(self, role: str, *extra: Any) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--role", role, *map(str, extra)]

    async def start_redis(self) -> None:
        self.redis_port = free_port()
        self.redis = await self.spawn("redis-server", [
            self.args.redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            "--dir", str(self.workdir)])
        deadline = time.monotonic() + 10
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.redis_port)
                w.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def scenario(self, scenario: str) -> dict[str, Any]:
        children: list[Child] = []
        try:
            if scenario == "redis":
                assert self.redis is not None
                hub_pid = self.redis.pid
                backend, target = "redis", f"127.0.0.1:{self.redis_port}"
            else:
                data = tempfile.mkdtemp(prefix="state-", dir=self.workdir)
                engine = await self.spawn(scenario, self.py("engine", scenario.split("-")[1], data))
                children.append(engine)
                hub_pid = engine.pid
                backend, target = "pyiii", f"ws://127.0.0.1:{await engine.expect('READY')}"
            clients = []
            for k in range(self.args.clients):
                clients.append(await self.spawn(f"client-{scenario}-{k}", self.py(
                    "client", backend, target, self.args.warmup, self.args.seconds), stdin=True))
            children += clients
            for c in clients:
                await c.expect("GO")
            for c in clients:
                assert c.proc.stdin is not None
                c.proc.stdin.write(b"go\n")
                await c.proc.stdin.drain()
            pids = [hub_pid] + [c.pid for c in children if c.pid != hub_pid]
            lead = clients[0]
            cpu: dict[str, tuple[float, float]] = {}
            while True:
                text = await lead.expect("", timeout=self.args.warmup + self.args.seconds + 60)
                if text.startswith("MARK begin"):
                    key = "/".join(text.split()[-2:])
                    cpu[key] = (cpu_seconds(hub_pid), sum(map(cpu_seconds, pids)))
                elif text.startswith("MARK end"):
                    key = "/".join(text.split()[-2:])
                    h0, a0 = cpu[key]
                    cpu[key] = (cpu_seconds(hub_pid) - h0, sum(map(cpu_seconds, pids)) - a0)
                elif text.startswith("RESULT"):
                    results = json.loads(text[len("RESULT"):])
                    break
            for other in clients[1:]:
                more = json.loads(await other.expect("RESULT"))
                for key, r in more.items():
                    results[key]["ops"] += r["ops"]
                    results[key]["ops_per_s"] += r["ops_per_s"]
                    results[key]["p50_us"] = max(results[key]["p50_us"], r["p50_us"])
                    results[key]["p99_us"] = max(results[key]["p99_us"], r["p99_us"])
            for key, r in results.items():
                hub, total = cpu[key]
                r["hub_cpu_us_per_op"] = hub * 1e6 / r["ops"]
                r["all_cpu_us_per_op"] = total * 1e6 / r["ops"]
            return results
        finally:
            for child in reversed(children):
                await child.stop()


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


def keys() -> list[str]:
    return [f"{c}/{op}" for c in CONCURRENCIES for op in OPS]


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        out[scenario] = {}
        for key in keys():
            rows = [r[scenario][key] for r in reps]
            out[scenario][key] = {k: statistics.median([row[k] for row in rows]) for k in rows[0]}
            out[scenario][key]["runs"] = [row["ops_per_s"] for row in rows]
    return out


LABELS = {"pyiii-memory": "pyiii iii-state, memory", "pyiii-sqlite": "pyiii iii-state, sqlite",
          "redis": "Redis direct (redis-py asyncio, uvloop)"}


def report(s: dict[str, Any], clients: int) -> str:
    lines = [f"| scenario | conc per client ({clients} client process{'es' if clients > 1 else ''}) | op | ops/s | p50 µs | p99 µs | "
             "hub CPU µs/op | all-process CPU µs/op | runs (ops/s) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for scenario in SCENARIOS:
        for key in keys():
            conc, op = key.split("/")
            r = s[scenario][key]
            lines.append(f"| {LABELS[scenario]} | {conc} | {op} | {r['ops_per_s']:,.0f} | "
                         f"{r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['hub_cpu_us_per_op']:.1f} | "
                         f"{r['all_cpu_us_per_op']:.1f} | "
                         + ", ".join(f"{x:,.0f}" for x in r["runs"]) + " |")
    lines += ["", "| ratio (ops/s) | " + " | ".join(f"c={k.split('/')[0]} {k.split('/')[1]}" for k in keys()) + " |",
              "|---|" + "---:|" * len(keys())]
    for scenario in ("pyiii-memory", "pyiii-sqlite"):
        cells = [f"{s[scenario][k]['ops_per_s'] / s['redis'][k]['ops_per_s']:.2f}×" for k in keys()]
        lines.append(f"| {scenario} / redis | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def orchestrate(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pyiii-bench-state-"))
    runner = Runner(args, workdir)
    emit(f"# {machine()}")
    emit(f"# child logs in {workdir}")
    t_start = time.perf_counter()
    reps: list[dict[str, Any]] = []
    try:
        await runner.start_redis()
        for rep in range(args.reps):
            result: dict[str, Any] = {}
            for scenario in SCENARIOS:
                t0 = time.perf_counter()
                result[scenario] = r = await runner.scenario(scenario)
                text = "  ".join(f"{k}: {x['ops_per_s']:,.0f}/s p99 {x['p99_us']:,.0f}µs"
                                 for k, x in r.items())
                emit(f"rep {rep + 1}/{args.reps} {scenario:13s} {text}  ({time.perf_counter() - t0:.1f}s)")
            reps.append(result)
        summary = summarise(reps)
        emit("")
        emit(report(summary, args.clients))
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args),
                                                   "summary": summary, "runs": reps}, indent=2))
    finally:
        if runner.redis is not None:
            await runner.redis.stop()
    emit(f"\n# total {time.perf_counter() - t_start:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repetition, 1 s windows")
    parser.add_argument("--reps", type=int, help="repetitions (medians are reported; default 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per window (default 1)")
    parser.add_argument("--seconds", type=float, help="measured seconds per window (default 3)")
    parser.add_argument("--clients", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--json", help="write raw and median results to this file")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        a = args.role_args
        if args.role == "engine":
            run_like_iii(role_engine(a[0], a[1]))
        elif args.role == "client":  # pyiii.sdk or redis-py, both on the loop the README suggests
            from pyiii.sdk import run

            run(role_client(a[0], a[1], float(a[2]), float(a[3])))
        else:
            raise SystemExit(f"unknown role {args.role}")
        return
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 3.0)
    try:
        asyncio.run(orchestrate(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
