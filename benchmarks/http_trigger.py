#!/usr/bin/env python
"""HTTP trigger benchmark: iii-http -> function, under ``wrk``, against a plain aiohttp app.

Run from the repository root:

    .venv/bin/python benchmarks/http_trigger.py             # full: 3 reps, ~3.5 minutes
    .venv/bin/python benchmarks/http_trigger.py --quick     # 1 rep, 1 s windows, < 1 minute
    .venv/bin/python benchmarks/http_trigger.py --profile /tmp/http-prof   # + py-spy pass

Needs ``wrk`` (Debian package ``wrk``) and, for ``--profile``, ``py-spy`` in the venv.

Scenarios (every repetition starts fresh processes; repetitions are interleaved):

- ``plain``        a plain aiohttp app (one process) answering ``GET /bench/hello`` with
                   ``{"hello":"world"}`` (orjson, application/json), on the standard
                   asyncio loop (aiohttp's default): the baseline.
- ``plain-uvloop`` the same app on uvloop, the loop the engine processes below run on
                   (pyiii.runtime, as `iii` does); shown for information.
- ``inproc``       ONE process: pyiii engine (Engine + WebSocket Listener), iii-http started
                   in-process (local connector) and the handler registered by a pyiii.sdk
                   client with the local connector; the handler is ``async def`` returning
                   ``{"status_code":200,"body":{"hello":"world"}}``.
- ``inproc-1000``  the same, with 999 more routes (``GET /r/<i>/:id``) bound to another
                   function before the bench route.
- ``worker``       the engine process as above (iii-http in-process), the handler in a
                   separate process, registered with pyiii.sdk over WebSocket.

Each scenario runs ``wrk -t1 -cC --latency`` at C = 1, 32, 128 connections: a warm-up
window, then a measured window. req/s and the p99 come from wrk; the server-side CPU time
(all scenario processes, /proc/PID/stat) per request is added.

``--cpu`` measures instead the CPU time per request without sockets or wrk: raw
``GET /bench/hello`` requests are fed into the server's aiohttp protocol objects (32 fake
connections) and the responses counted, in a fresh process per scenario (``plain`` and
``inproc``) and repetition. Far less sensitive to other load on the machine than req/s, it
shows what a change to the request path costs or saves (warm caches, no system calls).

Internal roles (``--role ...``) are how the script starts its own child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import Child, engine_on_free_port, spawn_logged, cpu_seconds, machine, run_like_iii, settle_like_iii

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = (1, 32, 128)
SCENARIOS = ("plain", "plain-uvloop", "inproc", "inproc-1000", "worker")
PATH = "/bench/hello"
HELLO = {"status_code": 200, "body": {"hello": "world"}}


def emit(*parts: Any) -> None:
    print(*parts, flush=True)


# ---------------------------------------------------------------------------------------
# child roles
# ---------------------------------------------------------------------------------------


async def plain_app() -> Any:
    """The peer: one aiohttp route answering the bench request, set up (an ``AppRunner``)."""
    import orjson
    from aiohttp import web

    body = orjson.dumps({"hello": "world"})

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(PATH, hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


async def role_plain() -> None:
    from aiohttp import web

    runner = await plain_app()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    emit("READY", port, 0)
    await asyncio.Event().wait()


async def register_routes(client: Any, routes: int) -> None:
    async def other(data: Any) -> Any:
        return {"status_code": 200, "body": {"id": data["path_params"].get("id")}}

    async def hello(data: Any) -> Any:
        return HELLO

    if routes > 1:
        client.register_function("bench::other", other)
        for i in range(routes - 1):
            client.register_trigger({"type": "http", "function_id": "bench::other",
                                     "config": {"api_path": f"r/{i}/:id", "http_method": "GET"}})
    client.register_function("bench::hello", hello)
    client.register_trigger({"type": "http", "function_id": "bench::hello",
                             "config": {"api_path": PATH, "http_method": "GET"}})


async def role_engine(mode: str, routes: int) -> None:
    """Engine + listener + iii-http in one process; ``mode`` inproc also hosts the handler."""
    from pyiii.engine.inprocess import local_connector
    from pyiii.sdk import InitOptions, register_worker
    from pyiii.workers import http
    from pyiii.workers.base import WorkerContext

    engine, listener, url = await engine_on_free_port()
    ctx = WorkerContext("iii-http", {"port": 0, "host": "127.0.0.1"}, Path(tempfile.gettempdir()),
                        True, url=url, connector=local_connector(engine))
    worker = await http.start(ctx)
    if mode == "inproc":
        client = register_worker(url, InitOptions(worker_name="bench-handler",
                                                  connector=local_connector(engine)))
        await register_routes(client, routes)
        await client.wait_connected(10)
        deadline = time.monotonic() + 30
        while len(worker.routes) < routes:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(worker.routes)} routes bound")
            await asyncio.sleep(0.01)
    settle_like_iii()
    emit("READY", worker.port, listener.port)
    await asyncio.Event().wait()


async def role_handler(url: str, routes: int) -> None:
    from pyiii.sdk import InitOptions, register_worker

    client = register_worker(url, InitOptions(worker_name="bench-handler"))
    await register_routes(client, routes)
    await client.wait_connected(15)
    emit("READY")
    await asyncio.Event().wait()


_RAW_GET = (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
            "Accept: */*\r\n\r\n").encode()


class _CountingTransport(asyncio.Transport):
    """Stands in for a client socket: counts response writes, sends nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self._closing = False

    def write(self, data: Any) -> None:
        self.writes += 1

    def writelines(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def cpu_per_request(protocol_factory: Any, conns: int = 32, per_conn: int = 125,
                          reps: int = 6) -> float:
    """Best-of-``reps`` process CPU µs per request, requests fed straight into aiohttp."""
    best = float("inf")
    for _ in range(reps):
        links = []
        for _ in range(conns):
            protocol, transport = protocol_factory(), _CountingTransport()
            protocol.connection_made(transport)
            links.append((protocol, transport))
        await asyncio.sleep(0)
        start = time.process_time()
        for _ in range(per_conn):
            for protocol, _t in links:
                protocol.data_received(_RAW_GET)
            for _ in range(3):
                await asyncio.sleep(0)
        while sum(t.writes for _p, t in links) < conns * per_conn:
            await asyncio.sleep(0)
        best = min(best, (time.process_time() - start) * 1e6 / (conns * per_conn))
        for protocol, transport in links:
            transport.close()
            protocol.connection_lost(None)
        await asyncio.sleep(0.01)
    return best


async def role_cpu(scenario: str) -> None:
    """``--cpu`` child: one scenario's CPU per request, printed as ``CPU <µs>``."""
    if scenario == "plain":
        factory: Any = (await plain_app()).server
    else:
        from pyiii.engine.core import Engine
        from pyiii.engine.inprocess import local_connector
        from pyiii.sdk import InitOptions, register_worker
        from pyiii.workers import http
        from pyiii.workers.base import WorkerContext

        engine = Engine()
        engine.start()
        ctx = WorkerContext("iii-http", {"port": 0, "host": "127.0.0.1"},
                            Path(tempfile.gettempdir()), True, url="ws://127.0.0.1:1",
                            connector=local_connector(engine))
        worker = await http.start(ctx)
        client = register_worker("inproc://bench", InitOptions(
            worker_name="bench-handler", connector=local_connector(engine)))
        await register_routes(client, 1)
        await client.wait_connected(10)
        while len(worker.routes) < 1:
            await asyncio.sleep(0.01)
        factory = worker.listener.web
        settle_like_iii()
    emit("CPU", f"{await cpu_per_request(factory):.2f}")
    os._exit(0)  # nothing to clean up that matters, and no teardown noise


async def orchestrate_cpu(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pyiii-bench-http-cpu-"))
    runner = Runner(args, workdir)
    emit(f"# {machine()}")
    runs: dict[str, list[float]] = {"plain": [], "inproc": []}
    try:
        for rep in range(args.reps):
            for scenario in runs:
                child = await runner.spawn(f"cpu-{scenario}", "cpu", scenario)
                runs[scenario].append(float((await child.expect("CPU", 300)).split()[0]))
                await runner.stop_all()
            emit(f"rep {rep + 1}/{args.reps}: plain {runs['plain'][-1]:.2f} µs, "
                 f"inproc {runs['inproc'][-1]:.2f} µs")
    finally:
        await runner.stop_all()
    plain, inproc = (statistics.median(runs[k]) for k in ("plain", "inproc"))
    emit(f"\nCPU per request, no sockets (median of {args.reps}, each best of 6 x 4,000 "
         f"requests): plain {plain:.2f} µs, in-process {inproc:.2f} µs, "
         f"ratio {plain / inproc:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "cpu_us_per_request": runs,
                                               "median": {"plain": plain, "inproc": inproc}},
                                              indent=2))


# ---------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": rps, "p50_ms": pct["50"], "p90_ms": pct["90"], "p99_ms": pct["99"],
            "requests": total, "errors": errors}


class Runner:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.children: list[Child] = []
        self.counter = 0

    async def spawn(self, name: str, role: str, *extra: Any) -> Child:
        self.counter += 1
        argv = [sys.executable, str(Path(__file__).resolve()), "--role", role, *map(str, extra)]
        child = await spawn_logged(self.workdir, self.counter, name, argv)
        self.children.append(child)
        return child

    async def stop_all(self) -> None:
        for child in reversed(self.children):
            await child.stop()
        self.children.clear()

    async def wrk(self, port: int, conns: int, seconds: float) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            self.args.wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
            f"http://127.0.0.1:{port}{PATH}", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        try:
            return parse_wrk(text)
        except Exception as exc:
            raise RuntimeError(f"wrk output not understood: {text}") from exc

    async def start(self, scenario: str) -> tuple[int, list[int]]:
        """Start the scenario's processes; the HTTP port and the server pids."""
        if scenario.startswith("plain"):
            loop = ["uvloop"] if scenario == "plain-uvloop" else []
            server = await self.spawn(scenario, "plain", *loop)
            port = int((await server.expect("READY")).split()[0])
            return port, [server.pid]
        routes = 1000 if scenario.endswith("-1000") else 1
        mode = "inproc" if scenario.startswith("inproc") else "worker"
        engine = await self.spawn(f"engine-{scenario}", "engine", mode, routes)
        port, engine_port = map(int, (await engine.expect("READY")).split())
        pids = [engine.pid]
        if mode == "worker":
            handler = await self.spawn("handler", "handler", f"ws://127.0.0.1:{engine_port}", routes)
            await handler.expect("READY")
            pids.append(handler.pid)
        await wait_ok(port)
        return port, pids

    async def scenario(self, scenario: str, on_window: Any = None) -> dict[str, Any]:
        try:
            port, pids = await self.start(scenario)
            results: dict[str, Any] = {}
            for conns in CONNECTIONS:
                await self.wrk(port, conns, self.args.warmup)
                cpu0 = sum(map(cpu_seconds, pids))
                spy = on_window(conns, pids) if on_window else None
                r = await self.wrk(port, conns, self.args.seconds)
                if spy is not None:
                    await spy
                cpu = sum(map(cpu_seconds, pids)) - cpu0
                r["server_cpu_us_per_req"] = cpu * 1e6 / max(1, r["requests"])
                r["server_cpu_util"] = cpu / self.args.seconds
                results[str(conns)] = r
            return results
        finally:
            await self.stop_all()

    async def profile(self, prefix: str) -> str:
        """An extra in-process run with py-spy on the engine during the 32-connection window."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = f"{prefix}-inproc.txt"
        duration = max(3, int(self.args.seconds) - 1)

        async def spy(pid: int) -> None:
            proc = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(pid), "--rate", "250", "--duration", str(duration),
                "--format", "raw", "-o", out, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()

        def on_window(conns: int, pids: list[int]) -> Any:
            return asyncio.ensure_future(spy(pids[0])) if conns == 32 else None

        await self.scenario("inproc", on_window)
        return out


async def wait_ok(port: int, timeout: float = 30) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}{PATH}") as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 200 and body == {"hello": "world"}:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{PATH} never answered 200 on port {port}")
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------
# profile summary (py-spy --format raw: "frame;frame;... count" per line)
# ---------------------------------------------------------------------------------------


def _frame_name(frame: str) -> str:
    func, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("pyiii/", "site-packages/", "lib/python3"):
        idx = file.find(marker)
        if idx >= 0:
            file = file[idx:]
            break
    return f"{file}:{func}"


def summarise_profile(path: str, top: int = 20) -> str:
    self_counts: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        names = [_frame_name(f.strip()) for f in stack.split(";")]
        self_counts[names[-1]] = self_counts.get(names[-1], 0) + count
        for name in set(names):
            incl[name] = incl.get(name, 0) + count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples", "  self (leaf) time:"]
    for name, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * n / total:5.1f}%  {name}")
    lines.append("  inclusive time, pyiii code:")
    ours = [(k, v) for k, v in incl.items() if "pyiii/" in k]
    for name, n in sorted(ours, key=lambda kv: -kv[1])[:top + 10]:
        lines.append(f"    {100 * n / total:5.1f}%  {name}")
    lines.append("  inclusive time, selected libraries:")
    libs = [(k, v) for k, v in incl.items() if any(s in k for s in (
        "websockets/asyncio/client.py:connect", "websockets/asyncio/client.py:__await_impl__",
        "aiohttp/web_protocol.py:_handle_request", "aiohttp/web_protocol.py:finish_response"))]
    for name, n in sorted(libs, key=lambda kv: -kv[1]):
        lines.append(f"    {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario in SCENARIOS:
        out[scenario] = {}
        for conns in map(str, CONNECTIONS):
            rows = [r[scenario][conns] for r in reps]
            out[scenario][conns] = {k: statistics.median([row[k] for row in rows]) for k in rows[0]}
            out[scenario][conns]["runs_rps"] = [row["rps"] for row in rows]
    return out


LABELS = {"plain": "plain aiohttp app", "plain-uvloop": "plain aiohttp app on uvloop",
          "inproc": "pyiii, handler in-process (1 route)",
          "inproc-1000": "pyiii, handler in-process (1,000 routes)",
          "worker": "pyiii, handler in a worker process (1 route)"}


def report(s: dict[str, Any]) -> str:
    lines = ["| scenario | conns | req/s | p50 ms | p99 ms | server CPU µs/req | server CPU util | errors | runs (req/s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for scenario in SCENARIOS:
        for conns in map(str, CONNECTIONS):
            r = s[scenario][conns]
            lines.append(f"| {LABELS[scenario]} | {conns} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['server_cpu_us_per_req']:,.0f} | "
                         f"{100 * r['server_cpu_util']:.0f}% | {r['errors']:.0f} | "
                         + ", ".join(f"{x:,.0f}" for x in r["runs_rps"]) + " |")
    lines += ["", "| ratio / target | value | target | met |", "|---|---:|---:|:---:|"]
    for conns in map(str, CONNECTIONS):
        plain = s["plain"][conns]["rps"]
        for scenario in ("inproc", "worker"):
            ratio = s[scenario][conns]["rps"] / plain
            target = "≥ 0.5×" if scenario == "inproc" else "(info)"
            met = ("yes" if ratio >= 0.5 else "**no**") if scenario == "inproc" else "–"
            lines.append(f"| {scenario} / plain req/s, {conns} conns | {ratio:.2f}× | {target} | {met} |")
        # pyiii serves on uvloop: the same app on uvloop shows what is left besides the loop
        ratio = s["inproc"][conns]["rps"] / s["plain-uvloop"][conns]["rps"]
        lines.append(f"| inproc / plain-on-uvloop req/s, {conns} conns | {ratio:.2f}× | (info) | – |")
    for scenario in ("inproc", "worker"):
        p99 = s[scenario]["32"]["p99_ms"]
        lines.append(f"| {scenario} p99 at 32 conns | {p99:.2f} ms | < 10 ms | "
                     f"{'yes' if p99 < 10 else '**no**'} |")
    for conns in map(str, CONNECTIONS):
        cost = 1 - s["inproc-1000"][conns]["rps"] / s["inproc"][conns]["rps"]
        lines.append(f"| 1,000 routes vs 1 route, req/s cost, {conns} conns | {100 * cost:+.1f}% | "
                     f"< 10% | {'yes' if cost < 0.10 else '**no**'} |")
    return "\n".join(lines)


def route_micro() -> str:
    """RouteTable.match cost in isolation: 1 route vs 1,000 (999 ``r/<i>/:id`` + the bench
    route), for the bench path and for a parameter path."""
    import timeit

    from pyiii.sdk import TriggerConfig
    from pyiii.workers.http.routing import RouteTable

    def table(n: int) -> RouteTable:
        t = RouteTable()
        for i in range(n - 1):
            t.add(TriggerConfig(id=f"t{i}", trigger_type="http", function_id="bench::other",
                                config={"api_path": f"r/{i}/:id"}))
        t.add(TriggerConfig(id="hello", trigger_type="http", function_id="bench::hello",
                            config={"api_path": PATH}))
        return t

    out = []
    for n in (1, 1000):
        t = table(n)
        for path in (PATH, "/r/500/abc"):
            number = 200_000
            best = min(timeit.repeat(lambda: t.match("GET", path), number=number, repeat=3))
            out.append(f"{n} route(s), GET {path}: {best / number * 1e6:.2f} µs/match")
    return "\n".join(out)


async def orchestrate(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pyiii-bench-http-"))
    runner = Runner(args, workdir)
    emit(f"# {machine()}")
    emit(f"# child logs in {workdir}")
    t_start = time.perf_counter()
    reps: list[dict[str, Any]] = []
    try:
        for rep in range(args.reps):
            result: dict[str, Any] = {}
            for scenario in SCENARIOS:
                t0 = time.perf_counter()
                result[scenario] = r = await runner.scenario(scenario)
                text = "  ".join(f"c={c}: {x['rps']:,.0f}/s p99 {x['p99_ms']:.2f}ms"
                                 + (f" ERR {x['errors']}" if x["errors"] else "")
                                 for c, x in r.items())
                emit(f"rep {rep + 1}/{args.reps} {scenario:12s} {text}  ({time.perf_counter() - t0:.1f}s)")
            reps.append(result)
        summary = summarise(reps)
        emit("")
        emit(report(summary))
        emit("")
        emit("# RouteTable.match in isolation (best of 3)")
        emit(route_micro())
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args),
                                                   "summary": summary, "runs": reps}, indent=2))
        if args.profile:
            emit("\n# profile pass (py-spy on the in-process engine at 32 connections; not in the medians)")
            emit(summarise_profile(await runner.profile(args.profile)))
    finally:
        await runner.stop_all()
    emit(f"\n# total {time.perf_counter() - t_start:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s windows, 1 repetition")
    parser.add_argument("--reps", type=int, help="repetitions (medians are reported; default 3)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per window (default 1)")
    parser.add_argument("--seconds", type=int, help="measured seconds per window (default 4)")
    parser.add_argument("--json", help="write raw and median results to this file")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="extra in-process run with py-spy at 32 connections "
                             "(writes PREFIX-inproc.txt, prints the hot spots)")
    parser.add_argument("--cpu", action="store_true",
                        help="CPU per request without sockets or wrk (plain vs in-process)")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        a = args.role_args
        if args.role == "plain":
            if a and a[0] == "uvloop":
                import uvloop

                uvloop.run(role_plain())
            else:
                asyncio.run(role_plain())
        elif args.role == "engine":
            run_like_iii(role_engine(a[0], int(a[1])))
        elif args.role == "handler":
            from pyiii.sdk import run  # a worker program, run as the README suggests

            run(role_handler(a[0], int(a[1])))
        elif args.role == "cpu":
            if a[0] == "plain":
                asyncio.run(role_cpu(a[0]))
            else:
                run_like_iii(role_cpu(a[0]))
        else:
            raise SystemExit(f"unknown role {args.role}")
        return
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 4.0)
    try:
        asyncio.run(orchestrate_cpu(args) if args.cpu else orchestrate(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
