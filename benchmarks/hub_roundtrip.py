#!/usr/bin/env python
"""Hub round-trip benchmark: pyiii engine vs NATS request-reply vs a one-hop WebSocket echo.

Run from the repository root:

    .venv/bin/python benchmarks/hub_roundtrip.py            # full run, ~3-4 minutes
    .venv/bin/python benchmarks/hub_roundtrip.py --quick    # shorter windows, < 1 minute
    .venv/bin/python benchmarks/hub_roundtrip.py --profile /tmp/pyiii-prof   # + py-spy pass

Needs the ``bench`` extra (``.venv/bin/pip install nats-py``), ``nats-server`` on PATH or at
/usr/sbin/nats-server (a private one is started on a free port) and, for ``--profile``,
``py-spy`` (``.venv/bin/pip install py-spy``).

Scenarios (each repetition starts fresh processes; repetitions are interleaved so that
machine noise spreads over all scenarios; the report shows medians over repetitions;
``--scenarios`` picks a subset):

1. ``pyiii``   caller (pyiii.sdk, trigger_async) -> pyiii engine -> echo worker (pyiii.sdk)
               -> engine -> caller. Three processes, two WebSocket hops each way. Caller and
               worker run on ``pyiii.sdk.run`` (uvloop), the engine as `iii` runs.
2. ``pyiii-nopoll``   the same with busy polling off in all three (``PYIII_BUSY_POLL_US=0``).
3. ``pyiii-asyncio``  the same with caller and worker on ``asyncio.run`` (standard loop).
4. ``paced``   what busy polling costs: one call at a time at 100 and 1,000 calls/s, CPU time
               of the three processes, polling on and off.
5. ``nats``    nats-py requester -> private nats-server -> nats-py responder -> back.
6. ``floor``   websockets client -> websockets echo server -> back (one hop: the floor).
7. ``inproc``  one engine and two pyiii.sdk clients in ONE process, in-process connector.
8. ``memory``  RSS of an engine process before/after 1,000 raw WebSocket clients connect
               and send ``engine::workers::register`` (void), clients in 4 other processes.

The Python clients of the hub scenarios (pyiii's caller and worker, the NATS requester and
responder, both ends of the floor) all run on the same loop (uvloop through
``pyiii.sdk.run``) unless a scenario says otherwise, so the comparison is like for like.

Every scenario moves the same 256-byte JSON payload and runs concurrency 1 and 32 (32
calls outstanding from one client connection). Latency is measured per call in the caller
with ``perf_counter_ns``; calls/s is completed calls / wall time of the window. The CPU time
that the hub process (engine, nats-server, echo server) and all of the scenario's processes
spend per call is read from /proc/PID/stat (10 ms ticks) over the same window.

Internal roles (``--role ...``) are how the script starts its own child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable

from benchlib import Child, spawn_logged, cpu_seconds, free_port, rss_kib, wait_port, machine, run_like_iii, settle_like_iii

import orjson

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD_BYTES = 256
CONCURRENCIES = (1, 32)
MEM_CONNECTIONS = 1000
MEM_CLIENT_PROCS = 4
ECHO_FN = "bench::echo"
NATS_SUBJECT = "bench.echo"
# roles that run on pyiii.sdk.run (uvloop): pyiii's SDK processes and, for a like-for-like
# comparison, the NATS clients and both ends of the floor
LOOP_ROLES = ("pyiii-caller", "echo-worker", "paced-caller", "nats-responder", "nats-requester",
              "ws-echo-server", "ws-client")
SDK_LOOP_ENV = "BENCH_SDK_LOOP"
# the pyiii hub scenario and its variants: environment of all three processes, and how the
# caller and echo worker run ("run": pyiii.sdk.run, "asyncio": asyncio.run; the engine always
# runs on the loop `iii` runs on)
PYIII_VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "pyiii": ({}, "run"),
    "pyiii-nopoll": ({"PYIII_BUSY_POLL_US": "0"}, "run"),
    "pyiii-asyncio": ({}, "asyncio"),
}
PACED_RATES = (100, 1000)  # calls/s of the paced scenario
SCENARIOS = (*PYIII_VARIANTS, "paced", "nats", "floor", "inproc", "memory")


def make_payload(size: int = PAYLOAD_BYTES) -> dict[str, Any]:
    """A JSON object whose compact encoding is exactly ``size`` bytes."""
    base = {"seq": 0, "blob": ""}
    pad = size - len(orjson.dumps(base))
    payload = {"seq": 0, "blob": "x" * pad}
    assert len(orjson.dumps(payload)) == size
    return payload


PAYLOAD = make_payload()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def emit(*parts: Any) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------------------
# load generator (runs inside caller processes)
# ---------------------------------------------------------------------------------------


async def run_window(call: Callable[[], Awaitable[Any]], conc: int, seconds: float) -> dict[str, Any]:
    """``conc`` tasks each loop ``await call()`` until the deadline; per-call latency."""
    lat: list[int] = []
    loop_time = time.perf_counter
    stop = loop_time() + seconds

    async def one() -> None:
        pc = time.perf_counter_ns
        append = lat.append
        while loop_time() < stop:
            t0 = pc()
            await call()
            append(pc() - t0)

    t0 = loop_time()
    await asyncio.gather(*(one() for _ in range(conc)))
    elapsed = loop_time() - t0
    lat.sort()
    n = len(lat)
    return {
        "calls": n,
        "seconds": elapsed,
        "calls_per_s": n / elapsed,
        "p50_us": lat[n // 2] / 1000,
        "p99_us": lat[min(n - 1, int(n * 0.99))] / 1000,
    }


async def run_load(call: Callable[[], Awaitable[Any]], warmup: float, seconds: float,
                   concs: list[int]) -> dict[str, Any]:
    results = {}
    for conc in concs:
        await run_window(call, conc, warmup)
        emit("MARK begin", conc)
        results[str(conc)] = await run_window(call, conc, seconds)
        emit("MARK end", conc)
    return results


# ---------------------------------------------------------------------------------------
# child roles
# ---------------------------------------------------------------------------------------

ENGINE_CODE = """
import asyncio, resource, sys
from pyiii.engine.core import Engine
from pyiii.engine.listener import Listener, ListenerConfig
from pyiii.runtime import run, tune_for_serving

async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    engine = Engine()
    engine.start()
    listener = Listener(engine, ListenerConfig(host="127.0.0.1", port=0))
    await listener.start()
    tune_for_serving()  # as `iii` does once started
    print("READY", listener.port, flush=True)
    await asyncio.Event().wait()

run(main())  # the loop `iii` runs on
"""


async def role_echo_worker(url: str) -> None:
    from pyiii.sdk import InitOptions, register_worker

    client = register_worker(url, InitOptions(worker_name="bench-echo"))

    async def echo(data: Any) -> Any:
        return data

    client.register_function(ECHO_FN, echo)
    await client.wait_connected(15)
    emit("READY")
    await asyncio.Event().wait()


async def _wait_for_echo(client: Any) -> None:
    from pyiii.sdk import InvocationError

    deadline = time.monotonic() + 15
    while True:
        try:
            result = await client.trigger_async({"function_id": ECHO_FN, "payload": PAYLOAD})
        except InvocationError as exc:
            if exc.code != "function_not_found" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        assert result == PAYLOAD, result
        return


async def role_pyiii_caller(url: str, warmup: float, seconds: float, concs: list[int]) -> None:
    from pyiii.sdk import InitOptions, register_worker

    client = register_worker(url, InitOptions(worker_name="bench-caller"))
    await client.wait_connected(15)
    await _wait_for_echo(client)
    request = {"function_id": ECHO_FN, "payload": PAYLOAD}
    trigger = client.trigger_async

    def call() -> Awaitable[Any]:
        return trigger(request)

    results = await run_load(call, warmup, seconds, concs)
    emit("RESULT", json.dumps(results))
    await client.shutdown_async()


async def run_paced(call: Callable[[], Awaitable[Any]], rate: int, seconds: float) -> dict[str, Any]:
    """One call every 1/``rate`` s (never more than one outstanding) for ``seconds``."""
    clock, pc = time.perf_counter, time.perf_counter_ns
    lat: list[int] = []
    start = clock()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = pc()
        await call()
        lat.append(pc() - t0)
    elapsed = clock() - start
    lat.sort()
    return {"calls": n, "seconds": elapsed, "calls_per_s": n / elapsed,
            "p50_us": lat[n // 2] / 1000, "p99_us": lat[min(n - 1, int(n * 0.99))] / 1000}


async def role_paced_caller(url: str, seconds: float, rates: list[int]) -> None:
    from pyiii.sdk import InitOptions, register_worker

    client = register_worker(url, InitOptions(worker_name="bench-caller"))
    await client.wait_connected(15)
    await _wait_for_echo(client)
    request = {"function_id": ECHO_FN, "payload": PAYLOAD}

    def call() -> Awaitable[Any]:
        return client.trigger_async(request)

    results = {}
    for rate in rates:
        await run_paced(call, rate, 0.5)
        emit("MARK begin", rate)
        results[str(rate)] = await run_paced(call, rate, seconds)
        emit("MARK end", rate)
    emit("RESULT", json.dumps(results))
    await client.shutdown_async()


async def role_inproc(warmup: float, seconds: float, concs: list[int]) -> None:
    from pyiii.engine.core import Engine
    from pyiii.engine.inprocess import local_connector
    from pyiii.sdk import InitOptions, register_worker

    engine = Engine()
    engine.start()
    callee = register_worker("inproc://callee", InitOptions(
        worker_name="bench-echo", connector=local_connector(engine)))
    caller = register_worker("inproc://caller", InitOptions(
        worker_name="bench-caller", connector=local_connector(engine)))

    async def echo(data: Any) -> Any:
        return data

    callee.register_function(ECHO_FN, echo)
    await callee.wait_connected(15)
    await caller.wait_connected(15)
    await _wait_for_echo(caller)
    request = {"function_id": ECHO_FN, "payload": PAYLOAD}
    trigger = caller.trigger_async
    settle_like_iii()  # this process is the engine's, workers included

    def call() -> Awaitable[Any]:
        return trigger(request)

    results = await run_load(call, warmup, seconds, concs)
    emit("RESULT", json.dumps(results))
    await caller.shutdown_async()
    await callee.shutdown_async()
    await engine.stop()


async def role_nats_responder(url: str) -> None:
    import nats

    nc = await nats.connect(url)
    loads, dumps = orjson.loads, orjson.dumps

    async def handler(msg: Any) -> None:
        # decode + encode like a JSON application (the pyiii worker does the same)
        await msg.respond(dumps(loads(msg.data)))

    await nc.subscribe(NATS_SUBJECT, cb=handler)
    await nc.flush()
    emit("READY")
    await asyncio.Event().wait()


async def role_nats_requester(url: str, warmup: float, seconds: float, concs: list[int]) -> None:
    import nats

    nc = await nats.connect(url)
    loads, dumps = orjson.loads, orjson.dumps
    request = nc.request

    async def call() -> Any:
        msg = await request(NATS_SUBJECT, dumps(PAYLOAD), timeout=10)
        return loads(msg.data)

    assert await call() == PAYLOAD
    results = await run_load(call, warmup, seconds, concs)
    emit("RESULT", json.dumps(results))
    await nc.close()


async def role_ws_echo_server() -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    server = await serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None)
    emit("READY", server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def role_ws_client(url: str, warmup: float, seconds: float, concs: list[int]) -> None:
    from websockets.asyncio.client import connect

    ws = await connect(url, compression=None, ping_interval=None)
    loop = asyncio.get_running_loop()
    waiting: deque[asyncio.Future[Any]] = deque()
    loads, dumps = orjson.loads, orjson.dumps

    async def reader() -> None:
        # the echo server answers in order, so replies match requests FIFO
        async for message in ws:
            waiting.popleft().set_result(message)

    read_task = asyncio.create_task(reader())

    async def call() -> Any:
        fut = loop.create_future()
        waiting.append(fut)
        await ws.send(dumps(PAYLOAD), text=True)
        return loads(await fut)

    assert await call() == PAYLOAD
    results = await run_load(call, warmup, seconds, concs)
    emit("RESULT", json.dumps(results))
    read_task.cancel()
    await ws.close()


async def role_mem_clients(url: str, count: int, index: int) -> None:
    """Open ``count`` raw control connections, each registering as an idle worker; the
    ping → pong after the register call proves the engine has applied it."""
    from websockets.asyncio.client import connect

    raise_nofile()
    pid = os.getpid()
    conns: list[Any] = []
    sem = asyncio.Semaphore(32)

    async def open_one(i: int) -> None:
        async with sem:
            ws = await connect(url, compression=None, ping_interval=None, open_timeout=30)
            greeting = orjson.loads(await ws.recv())
            assert greeting["type"] == "workerregistered", greeting
            await ws.send(orjson.dumps({
                "type": "invokefunction",
                "function_id": "engine::workers::register",
                "data": {"runtime": "python", "version": "0.1.0", "name": f"idle-{index}-{i}",
                         "os": "Linux", "pid": pid, "features": []},
                "action": {"type": "void"},
            }), text=True)
            await ws.send(b'{"type":"ping"}', text=True)
            while True:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "pong":
                    break
            conns.append(ws)

    await asyncio.gather(*(open_one(i) for i in range(count)))
    emit("READY", len(conns))
    # hold the connections until the parent closes our stdin
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


# ---------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.children: list[Child] = []
        self.counter = 0

    async def spawn(self, name: str, argv: list[str], stdin: bool = False,
                    env: dict[str, str] | None = None) -> Child:
        self.counter += 1
        child = await spawn_logged(self.workdir, self.counter, name, argv, stdin=stdin, env=env)
        self.children.append(child)
        return child

    def py(self, role: str, *extra: Any) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--role", role, *map(str, extra)]

    def load_args(self) -> list[str]:
        a = self.args
        return [str(a.warmup), str(a.seconds), ",".join(map(str, CONCURRENCIES))]

    async def stop_all(self) -> None:
        for child in reversed(self.children):
            await child.stop()
        self.children.clear()

    async def drive(self, caller: Child, hub_pid: int | None,
                    on_begin: Callable[[int], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Read a caller's MARK/RESULT lines; attach hub CPU time per measured window."""
        cpu: dict[str, float] = {}
        started: dict[int, float] = {}
        all_cpu: dict[str, float] = {}
        all_started: dict[int, float] = {}
        pids = [c.pid for c in self.children]
        timeout = self.args.warmup + self.args.seconds + 60
        while True:
            text = await caller.line(timeout)
            if text.startswith("MARK begin"):
                conc = int(text.split()[-1])
                started[conc] = cpu_seconds(hub_pid) if hub_pid else 0.0
                all_started[conc] = sum(map(cpu_seconds, pids))
                if on_begin is not None:
                    await on_begin(conc)
            elif text.startswith("MARK end"):
                conc = int(text.split()[-1])
                cpu[str(conc)] = (cpu_seconds(hub_pid) if hub_pid else 0.0) - started[conc]
                all_cpu[str(conc)] = sum(map(cpu_seconds, pids)) - all_started[conc]
            elif text.startswith("RESULT"):
                results = json.loads(text[len("RESULT"):])
                for conc, r in results.items():
                    if hub_pid:
                        r["hub_cpu_us_per_call"] = cpu[conc] * 1e6 / r["calls"]
                        r["hub_cpu_util"] = cpu[conc] / r["seconds"]
                    r["total_cpu_us_per_call"] = all_cpu[conc] * 1e6 / r["calls"]
                    r["total_cpu_util"] = all_cpu[conc] / r["seconds"]
                return results

    # -- scenarios ----------------------------------------------------------------------

    async def start_engine(self, env: dict[str, str] | None = None) -> tuple[Child, str]:
        engine = await self.spawn("engine", [sys.executable, "-c", ENGINE_CODE], env=env)
        port = await engine.expect("READY")
        return engine, f"ws://127.0.0.1:{port}"

    async def pyiii(self, on_begin: Any = None, profile_pids: list[int] | None = None,
                    variant: str = "pyiii") -> dict[str, Any]:
        extra, sdk_loop = PYIII_VARIANTS[variant]
        env = dict(os.environ, **extra, **{SDK_LOOP_ENV: sdk_loop})
        try:
            engine, url = await self.start_engine(env)
            worker = await self.spawn("echo-worker", self.py("echo-worker", url), env=env)
            await worker.expect("READY")
            caller = await self.spawn("pyiii-caller", self.py("pyiii-caller", url, *self.load_args()),
                                      env=env)
            if profile_pids is not None:
                profile_pids[:] = [engine.pid, worker.pid, caller.pid]
            return await self.drive(caller, engine.pid, on_begin)
        finally:
            await self.stop_all()

    async def paced(self) -> dict[str, Any]:
        """What busy polling costs: CPU of the three hub processes at a steady, low call rate,
        with polling on (default) and off."""
        out: dict[str, Any] = {}
        for label, extra in (("on", {}), ("off", {"PYIII_BUSY_POLL_US": "0"})):
            env = dict(os.environ, **extra)
            try:
                engine, url = await self.start_engine(env)
                worker = await self.spawn("echo-worker", self.py("echo-worker", url), env=env)
                await worker.expect("READY")
                caller = await self.spawn("paced-caller", self.py(
                    "paced-caller", url, self.args.seconds, ",".join(map(str, PACED_RATES))), env=env)
                for rate, r in (await self.drive(caller, engine.pid)).items():
                    out[f"{rate}/s {label}"] = r
            finally:
                await self.stop_all()
        return out

    async def nats(self) -> dict[str, Any]:
        try:
            port = free_port()
            server = await self.spawn("nats-server", [
                self.args.nats_server, "-a", "127.0.0.1", "-p", str(port), "-m", "0"])
            url = f"nats://127.0.0.1:{port}"
            await wait_port(port)
            responder = await self.spawn("nats-responder", self.py("nats-responder", url))
            await responder.expect("READY")
            requester = await self.spawn("nats-requester", self.py("nats-requester", url, *self.load_args()))
            return await self.drive(requester, server.pid)
        finally:
            await self.stop_all()

    async def floor(self) -> dict[str, Any]:
        try:
            server = await self.spawn("ws-echo", self.py("ws-echo-server"))
            port = await server.expect("READY")
            client = await self.spawn("ws-client", self.py("ws-client", f"ws://127.0.0.1:{port}",
                                                           *self.load_args()))
            return await self.drive(client, server.pid)
        finally:
            await self.stop_all()

    async def inproc(self) -> dict[str, Any]:
        try:
            child = await self.spawn("inproc", self.py("inproc", *self.load_args()))
            return await self.drive(child, child.pid)
        finally:
            await self.stop_all()

    async def memory(self) -> dict[str, Any]:
        try:
            engine, url = await self.start_engine()
            await asyncio.sleep(0.5)
            before = rss_kib(engine.pid)
            per_proc = MEM_CONNECTIONS // MEM_CLIENT_PROCS
            clients = [await self.spawn(f"mem-clients-{i}", self.py("mem-clients", url, per_proc, i), stdin=True)
                       for i in range(MEM_CLIENT_PROCS)]
            t0 = time.perf_counter()
            counts = [int(await c.expect("READY", timeout=120)) for c in clients]
            connect_s = time.perf_counter() - t0
            assert sum(counts) == MEM_CONNECTIONS, counts
            await asyncio.sleep(1.0)
            after = rss_kib(engine.pid)
            for c in clients:
                assert c.proc.stdin is not None
                c.proc.stdin.close()
            return {"connections": MEM_CONNECTIONS, "rss_before_kib": before, "rss_after_kib": after,
                    "kib_per_connection": (after - before) / MEM_CONNECTIONS,
                    "connect_seconds": connect_s}
        finally:
            await self.stop_all()

    async def profile(self, prefix: str) -> dict[str, str]:
        """Extra runs (not in the medians) with py-spy attached during the concurrency-32
        window: the three pyiii hub processes, then the in-process scenario."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        outputs: dict[str, str] = {}
        spies: list[asyncio.subprocess.Process] = []
        duration = max(5, int(self.args.seconds))

        def recorder(names: tuple[str, ...], pids: list[int]) -> Callable[[int], Awaitable[None]]:
            async def on_begin(conc: int) -> None:
                if conc != 32:
                    return
                for name, pid in zip(names, pids):
                    out = f"{prefix}-{name}.txt"
                    outputs[name] = out
                    spies.append(await asyncio.create_subprocess_exec(
                        py_spy, "record", "--pid", str(pid), "--rate", "250",
                        "--duration", str(duration), "--format", "raw", "-o", out,
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
            return on_begin

        saved = self.args.seconds
        self.args.seconds = duration + 1.5  # the window outlasts py-spy's start-up
        try:
            pids: list[int] = []
            await self.pyiii(recorder(("engine", "worker", "caller"), pids), pids)
            for spy in spies:
                await spy.wait()
            child = await self.spawn("inproc", self.py("inproc", *self.load_args()))
            try:
                await self.drive(child, child.pid, recorder(("inproc",), [child.pid]))
            finally:
                await self.stop_all()
        finally:
            self.args.seconds = saved
            for spy in spies:
                await spy.wait()
        return outputs


# ---------------------------------------------------------------------------------------
# profile summary (py-spy --format raw: "frame;frame;... count" per line)
# ---------------------------------------------------------------------------------------


def summarise_profile(path: str, top: int = 15) -> str:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";")]
        # frames look like "function (file.py:line)"; keep function + file
        names = [_frame_name(f) for f in frames]
        self_counts[names[-1]] = self_counts.get(names[-1], 0) + count
        for name in set(names):
            incl_counts[name] = incl_counts.get(name, 0) + count
    if total == 0:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples",
             "  self (leaf) time:"]
    for name, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * n / total:5.1f}%  {name}")
    lines.append("  inclusive time, pyiii code:")
    ours = [(k, v) for k, v in incl_counts.items() if "pyiii/" in k]
    for name, n in sorted(ours, key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("pyiii/", "site-packages/", "lib/python3"):
        idx = file.find(marker)
        if idx >= 0:
            file = file[idx:]
            break
    return f"{file}:{func}"


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in reps[0]:
        if scenario == "memory":
            mem = [r["memory"] for r in reps]
            out["memory"] = {key: median([m[key] for m in mem]) for key in mem[0]}
            out["memory"]["runs_kib_per_connection"] = [round(m["kib_per_connection"], 2) for m in mem]
            continue
        out[scenario] = {}
        for conc in reps[0][scenario]:  # concurrencies, or the paced scenario's rates
            rows = [r[scenario][conc] for r in reps]
            out[scenario][conc] = {key: median([row[key] for row in rows])
                                   for key in rows[0] if isinstance(rows[0][key], (int, float))}
            out[scenario][conc]["runs_calls_per_s"] = [round(row["calls_per_s"]) for row in rows]
    return out


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = []
    label = {"pyiii": "pyiii hub (caller→engine→worker→caller)",
             "pyiii-nopoll": "pyiii hub, busy polling off",
             "pyiii-asyncio": "pyiii hub, caller and worker on asyncio.run",
             "nats": "NATS request-reply",
             "floor": "WebSocket echo, one hop (floor)", "inproc": "pyiii in-process (2 workers, 1 process)"}
    lines.append(f"payload {PAYLOAD_BYTES} B JSON, {args.reps} repetitions, "
                 f"{args.warmup}s warm-up + {args.seconds}s window per concurrency; medians")
    lines.append("")
    lines.append("| scenario | conc | calls/s | p50 µs | p99 µs | hub CPU µs/call | hub CPU util "
                 "| all-process CPU µs/call | all-process CPU util | runs (calls/s) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for scenario in (name for name in label if name in summary):
        for conc in summary[scenario]:
            r = summary[scenario][conc]
            lines.append(
                f"| {label[scenario]} | {conc} | {r['calls_per_s']:,.0f} | {r['p50_us']:,.0f} | "
                f"{r['p99_us']:,.0f} | {r.get('hub_cpu_us_per_call', float('nan')):,.1f} | "
                f"{100 * r.get('hub_cpu_util', float('nan')):.0f}% | "
                f"{r['total_cpu_us_per_call']:,.1f} | {100 * r['total_cpu_util']:.0f}% | "
                f"{', '.join(f'{v:,}' for v in r['runs_calls_per_s'])} |")
    if "paced" in summary:
        lines.append("")
        lines.append("busy polling's cost: one call at a time at a fixed rate, CPU time of engine, "
                     "worker and caller together per second of wall time")
        lines.append("")
        lines.append("| rate, busy polling | calls/s | p50 µs | p99 µs | CPU util (3 processes) | CPU µs/call |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for key, r in summary["paced"].items():
            lines.append(f"| {key} | {r['calls_per_s']:,.0f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | "
                         f"{100 * r['total_cpu_util']:.1f}% | {r['total_cpu_us_per_call']:,.0f} |")
    if "memory" in summary:
        m = summary["memory"]
        lines.append("")
        lines.append(f"engine memory: {m['connections']:.0f} idle registered workers, RSS "
                     f"{m['rss_before_kib']:,.0f} → {m['rss_after_kib']:,.0f} KiB, "
                     f"**{m['kib_per_connection']:.1f} KiB per connection** "
                     f"(runs: {', '.join(map(str, m['runs_kib_per_connection']))}; "
                     f"connect+register of all took {m['connect_seconds']:.1f} s)")
    lines.append("")
    lines.append("| ratio / target | value | target | met |")
    lines.append("|---|---:|---:|:---:|")
    for peer, target in (("nats", 1.5), ("floor", None)):
        for conc in map(str, CONCURRENCIES):
            if "pyiii" not in summary or peer not in summary:
                continue
            ratio = summary["pyiii"][conc]["calls_per_s"] / summary[peer][conc]["calls_per_s"]
            goal = f"≥ {target}×" if target else "(info)"
            met = _yes(ratio >= target) if target else "–"
            lines.append(f"| pyiii / {peer} calls/s, conc {conc} | {ratio:.2f}× | {goal} | {met} |")
    if "pyiii" in summary:
        p50 = summary["pyiii"]["1"]["p50_us"]
        lines.append(f"| pyiii p50, conc 1 | {p50:,.0f} µs | ≤ 100 µs | {_yes(p50 <= 100)} |")
    for conc in map(str, CONCURRENCIES) if "inproc" in summary else ():
        v = summary["inproc"][conc]["calls_per_s"]
        lines.append(f"| in-process calls/s, conc {conc} | {v:,.0f} | ≥ 100,000 | {_yes(v >= 100_000)} |")
    if "memory" in summary:
        kib = summary["memory"]["kib_per_connection"]
        lines.append(f"| engine KiB per idle worker | {kib:.1f} | ≤ 20 | {_yes(kib <= 20)} |")
    return "\n".join(lines)


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


async def orchestrate(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pyiii-bench-"))
    runner = Runner(args, workdir)
    reps: list[dict[str, Any]] = []
    emit(f"# {machine()}")
    emit(f"# child logs in {workdir}")
    t_start = time.perf_counter()
    try:
        for rep in range(args.reps):
            result: dict[str, Any] = {}
            for scenario in args.scenarios:
                t0 = time.perf_counter()
                result[scenario] = await (runner.pyiii(variant=scenario) if scenario in PYIII_VARIANTS
                                          else getattr(runner, scenario)())
                brief = result[scenario]
                if scenario == "memory":
                    text = f"{brief['kib_per_connection']:.1f} KiB/conn"
                elif scenario == "paced":
                    text = "  ".join(f"{k}: CPU {100 * r['total_cpu_util']:.1f}% p50 {r['p50_us']:,.0f}µs"
                                     for k, r in brief.items())
                else:
                    text = "  ".join(f"c={c}: {r['calls_per_s']:,.0f}/s p50 {r['p50_us']:,.0f}µs "
                                     f"p99 {r['p99_us']:,.0f}µs" for c, r in brief.items())
                emit(f"rep {rep + 1}/{args.reps} {scenario:7s} {text}  ({time.perf_counter() - t0:.1f}s)")
            reps.append(result)
        summary = summarise(reps)
        emit("")
        emit(report(summary, args))
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args),
                                                   "summary": summary, "runs": reps}, indent=2))
        if args.profile:
            emit("")
            emit("# profile pass (py-spy, concurrency 32; not part of the medians)")
            outputs = await runner.profile(args.profile)
            for name, path in outputs.items():
                emit(f"\n## {name}")
                emit(summarise_profile(path))
    finally:
        await runner.stop_all()
    emit(f"\n# total {time.perf_counter() - t_start:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows (< 1 minute in all)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (medians are reported)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per concurrency")
    parser.add_argument("--seconds", type=float, help="measured seconds per concurrency")
    parser.add_argument("--json", help="write raw and median results to this file")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="after the runs, py-spy the pyiii processes at concurrency 32 "
                             "(writes PREFIX-{engine,worker,caller}.txt, prints hot spots)")
    parser.add_argument("--nats-server", default=shutil.which("nats-server") or "/usr/sbin/nats-server")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        if args.role == "inproc":  # this process stands in for `iii` itself
            run_like_iii(run_role(args.role, args.role_args))
        elif args.role in LOOP_ROLES and os.environ.get(SDK_LOOP_ENV) != "asyncio":
            from pyiii.sdk import run  # as the README suggests for worker programs

            run(run_role(args.role, args.role_args))
        else:
            asyncio.run(run_role(args.role, args.role_args))
        return
    if args.warmup is None:
        args.warmup = 0.3 if args.quick else 1.0
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 4.0
    if args.reps < 1:
        parser.error("--reps must be ≥ 1")
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or not args.scenarios:
        parser.error(f"--scenarios: choose from {', '.join(SCENARIOS)} (got {', '.join(unknown) or 'none'})")
    try:
        asyncio.run(orchestrate(args))
    except KeyboardInterrupt:
        pass


async def run_role(role: str, a: list[str]) -> None:
    def load() -> tuple[float, float, list[int]]:
        return float(a[-3]), float(a[-2]), [int(c) for c in a[-1].split(",")]

    if role == "echo-worker":
        await role_echo_worker(a[0])
    elif role == "pyiii-caller":
        await role_pyiii_caller(a[0], *load())
    elif role == "paced-caller":
        await role_paced_caller(a[0], float(a[1]), [int(r) for r in a[2].split(",")])
    elif role == "inproc":
        await role_inproc(*load())
    elif role == "nats-responder":
        await role_nats_responder(a[0])
    elif role == "nats-requester":
        await role_nats_requester(a[0], *load())
    elif role == "ws-echo-server":
        await role_ws_echo_server()
    elif role == "ws-client":
        await role_ws_client(a[0], *load())
    elif role == "mem-clients":
        await role_mem_clients(a[0], int(a[1]), int(a[2]))
    else:
        raise SystemExit(f"unknown role {role}")


if __name__ == "__main__":
    main()
