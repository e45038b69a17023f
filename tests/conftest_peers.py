"""Pytest plugin: official-SDK peer processes (S25 = Python iii-sdk 0.25, N22 = Node iii-sdk 0.22).

Load it from tests/conftest.py with ``pytest_plugins = ["tests.conftest_peers"]`` (or
``from tests.conftest_peers import *``). Everything here starts real subprocesses
(tests/peers/s25_worker.py, n22_worker.mjs, s25_call.py, n22_call.mjs) against an engine URL.

IMPORTANT: the test engine runs in the test's event loop. From an async test never call the
blocking helpers (start/wait_event/call/run_call): use the async twins (``await peers.astart``,
``await peer.event``, ``await peer.acall``, ``await arun_call`` …), which wait in a thread.

Fixtures
    peers       -> PeerManager (async fixture):
                   ``await peers.astart(lang, url, spec=None, *, env=None, ready_timeout=15.0,
                   wait_ready=True) -> Peer``  (blocking twin: ``peers.start``)
                   ``await peers.acall(lang, url, function_id, payload=None, **run_call_kw) -> dict``
                   (blocking twin: ``peers.call``). Every peer it started is stopped (SIGTERM, then
                   SIGKILL of the whole process group after 3 s) at teardown.
    start_peer  -> ``peers.start`` (blocking; for sync tests against an out-of-process engine)

Peer (see the class): ready / worker_id / trigger_ids; ``await peer.event(event=None,
timeout=10, predicate=None, **match)``; ``await peer.no_event(...)``; ``peer.history``;
``await peer.acall(function_id, payload=None, namespace=, timeout_ms=, metadata=, action=)``;
``await peer.acommand(op, **args)``; unregister_trigger/unregister_trigger_type/
unregister_function/log (blocking); ``await peer.aclose()``, ``await peer.akill()``,
pause()/resume() (SIGSTOP/SIGCONT); ``peer.stderr_text()``.

Plain helpers (usable without fixtures; then *you* must call ``peer.close()``):
    start_peer_process(lang, url, spec=None, *, env=None, ready_timeout=15.0, wait_ready=True) -> Peer
    run_call(lang, url, function_id, payload=None, *, namespace=None, timeout_ms=None,
             metadata=None, action=None, worker_name=None, worker_namespace=None, otel=False,
             env=None, timeout=None) -> dict      # {"result": ...} or {"error": {code,message,stacktrace}}
    make_spec(name=None, functions=(), *, namespace=None, trigger_types=(), triggers=(),
              otel=False, barrier=True, log=(), **extra) -> dict
    fn(function_id, behaviour, **extra) -> dict  # one entry of spec["functions"]

``lang`` is "s25" / "python" / "py", "n22" / "node" / "js", or "pyiii" (tests/workers/pyiii_worker.py,
workers only: behaviours echo, add, slow, boom, none, size; extra commands gather and threads).
Behaviours: echo, add ({"c": a+b}), boom (raises ValueError / Error "boom"), slow ({"ms"}),
call ({"function_id", "payload", "namespace"?}), size ({"s"} -> {"len"}), big ({"n"} -> "xxx…"),
none (returns None / undefined), meta ({"data","metadata"}), caller (S25: current_invocation().caller),
log ({"message"} -> SDK Logger.info), read_channel ({"reader": ref} -> {"bytes","chunks","messages"}),
send_channel ({"function_id","n","messages"} -> creates a channel and streams to that function).
Per-function options: ``fn(..., record_full=True)`` (invoke events carry the whole data, no size
marker); S25 only: ``fn(..., observe=True)`` (registered with ObserveHooks) and the stdin command
``await peer.acommand("observe", function_id=..., target=...)`` -> {"id","state","reason"}.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

PEERS_DIR = Path(__file__).resolve().parent / "peers"
REPO_ROOT = PEERS_DIR.parent.parent
DEFAULT_READY_TIMEOUT = 15.0

_LANGS = {
    "s25": "s25", "python": "s25", "py": "s25",
    "n22": "n22", "node": "n22", "js": "n22",
    "pyiii": "pyiii",  # tests/workers/pyiii_worker.py (pyiii.sdk); workers only, no call script
}
WORKERS_DIR = PEERS_DIR.parent / "workers"

# Env vars the SDKs read that would silently override a test's spec.
_SCRUB_ENV = ("III_WORKER_NAME", "III_NAMESPACE", "III_ISOLATION", "III_TOKEN", "OTEL_ENABLED",
              "PEER_SPEC")


class PeerError(AssertionError):
    """A peer did not start, died, or did not answer in time."""


def _lang(lang: str) -> str:
    try:
        return _LANGS[lang.lower()]
    except KeyError:
        raise ValueError(f"unknown peer language {lang!r}; use 's25', 'n22' or 'pyiii'") from None


def _check_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the N22 peers need Node.js 20+ (run scripts/test.sh)")
    if not (PEERS_DIR / "node_modules" / "iii-sdk" / "package.json").exists():
        pytest.fail(
            "tests/peers/node_modules is missing (Node iii-sdk 0.22.1 not installed): "
            "run scripts/test.sh, or `npm ci` in tests/peers"
        )
    return node


def _command(lang: str, script: str) -> list[str]:
    if _lang(lang) == "pyiii":
        if script != "worker":
            raise ValueError("the pyiii peer has no call script: use a worker's call command")
        return [sys.executable, str(WORKERS_DIR / "pyiii_worker.py")]
    if _lang(lang) == "s25":
        return [sys.executable, str(PEERS_DIR / f"s25_{script}.py")]
    return [_check_node(), str(PEERS_DIR / f"n22_{script}.mjs")]


def _env(url: str, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
    env["III_URL"] = url
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("NODE_NO_WARNINGS", "1")
    if extra:
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
    return env


def _kill_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> int | None:
    """SIGTERM the peer's process group, then SIGKILL whatever is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def fn(function_id: str, behaviour: str, **extra: Any) -> dict[str, Any]:
    """One entry of a spec's ``functions`` list."""
    return {"id": function_id, "behaviour": behaviour, **extra}


def make_spec(
    name: str | None = None,
    functions: Iterable[dict[str, Any] | tuple[str, str]] = (),
    *,
    namespace: str | None = None,
    trigger_types: Iterable[str | dict[str, Any]] = (),
    triggers: Iterable[dict[str, Any]] = (),
    otel: bool = False,
    barrier: bool = True,
    log: Iterable[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """Build a peer spec. ``functions`` entries may be ``(id, behaviour)`` tuples."""
    spec: dict[str, Any] = {
        "functions": [fn(*f) if isinstance(f, tuple) else dict(f) for f in functions],
        "trigger_types": [t if isinstance(t, dict) else {"id": t} for t in trigger_types],
        "triggers": [dict(t) for t in triggers],
        "otel": otel,
        "barrier": barrier,
        "log": list(log),
    }
    if name is not None:
        spec["name"] = name
    if namespace is not None:
        spec["namespace"] = namespace
    spec.update(extra)
    return spec


class Peer:
    """A running worker peer. Read its stdout events; drive it through stdin commands."""

    def __init__(self, lang: str, url: str, spec: dict[str, Any], proc: subprocess.Popen[str]):
        self.lang = _lang(lang)
        self.url = url
        self.spec = spec
        self.proc = proc
        self.ready: dict[str, Any] | None = None
        self._ready_event = threading.Event()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.history: list[dict[str, Any]] = []  # every event seen so far, in order
        self.other_stdout: list[str] = []
        self._stderr: list[str] = []
        self._stdout_done = threading.Event()
        self._seq = 0
        self._lock = threading.Lock()
        self._pending: dict[int, queue.Queue[dict[str, Any]]] = {}
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    # ----- process output -------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("READY "):
                try:
                    self.ready = json.loads(line[6:])
                except ValueError:
                    self.ready = {"raw": line[6:]}
                self._ready_event.set()
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or "event" not in obj:
                self.other_stdout.append(line)
                continue
            if obj["event"] == "command_result" and isinstance(obj.get("seq"), int):
                with self._lock:
                    waiter = self._pending.pop(obj["seq"], None)
                if waiter is not None:
                    waiter.put(obj)
                    continue
            self.history.append(obj)
            self._events.put(obj)
        self._stdout_done.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        size = 0
        for line in self.proc.stderr:
            self._stderr.append(line)
            size += len(line)
            while size > 256_000 and len(self._stderr) > 1:
                size -= len(self._stderr.pop(0))

    def stderr_text(self) -> str:
        return "".join(self._stderr)

    def _describe(self) -> str:
        rc = self.proc.poll()
        out = "\n".join(self.other_stdout[-50:])
        return (f"{self.lang} peer pid={self.proc.pid} exit={rc}\n--- stderr ---\n"
                f"{self.stderr_text()[-8000:]}\n--- other stdout ---\n{out}")

    # ----- lifecycle ------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def worker_id(self) -> str | None:
        return (self.ready or {}).get("worker_id")

    @property
    def trigger_ids(self) -> list[str]:
        return [t["id"] for t in (self.ready or {}).get("triggers", [])]

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self._ready_event.wait(0.05):
            if self.proc.poll() is not None:
                self._stdout_done.wait(1)
                if self._ready_event.is_set():
                    break
                raise PeerError(f"peer exited before READY\n{self._describe()}")
            if time.monotonic() > deadline:
                desc = self._describe()
                self.close()
                raise PeerError(f"peer not READY within {timeout:.0f}s\n{desc}")
        assert self.ready is not None
        return self.ready

    def close(self, grace: float = 5.0) -> int | None:
        """SIGTERM (clean SDK shutdown), then SIGKILL the process group. Returns the exit code."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except Exception:
                pass
        return _kill_group(self.proc, grace)

    terminate = close

    def kill(self) -> None:
        """SIGKILL at once (no clean shutdown: the engine sees the socket drop)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP the group (a frozen worker: socket open, nothing answered, no pongs)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    # ----- events ---------------------------------------------------------------------------
    def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event line not consumed yet (raises PeerError on timeout)."""
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(f"no event within {timeout}s\n{self._describe()}") from None

    def wait_event(
        self,
        event: str | None = None,
        timeout: float = 10.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        **match: Any,
    ) -> dict[str, Any]:
        """Consume events until one has ``event`` == event, every ``match`` key equal, and
        ``predicate`` true. Skipped events stay in ``history``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(
                    f"no event {event!r} matching {match} within {timeout}s; seen: "
                    f"{json.dumps(self.history[-30:], default=repr)[:4000]}\n{self._describe()}"
                )
            try:
                ev = self._events.get(timeout=min(left, 0.2))
            except queue.Empty:
                if not self.alive and self._stdout_done.is_set() and self._events.empty():
                    raise PeerError(f"peer exited while waiting for {event!r}\n{self._describe()}")
                continue
            if event is not None and ev.get("event") != event:
                continue
            if any(ev.get(k) != v for k, v in match.items()):
                continue
            if predicate is not None and not predicate(ev):
                continue
            return ev

    def drain_events(self) -> list[dict[str, Any]]:
        """Consume and return every event currently queued."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def assert_no_event(self, event: str | None = None, within: float = 1.0, **match: Any) -> None:
        try:
            ev = self.wait_event(event, timeout=within, **match)
        except PeerError:
            return
        raise AssertionError(f"unexpected event from {self.lang} peer: {ev}")

    # ----- stdin commands -------------------------------------------------------------------
    def command(self, op: str, timeout: float = 40.0, **args: Any) -> dict[str, Any]:
        """Send a command (see the peer docstring) and return its command_result event."""
        if self.proc.stdin is None or not self.alive:
            raise PeerError(f"peer not running\n{self._describe()}")
        with self._lock:
            self._seq += 1
            seq = self._seq
            waiter: queue.Queue[dict[str, Any]] = queue.Queue()
            self._pending[seq] = waiter
        self.proc.stdin.write(json.dumps({"op": op, "seq": seq, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            return waiter.get(timeout=timeout)
        except queue.Empty:
            with self._lock:
                self._pending.pop(seq, None)
            raise PeerError(f"command {op} got no answer in {timeout}s\n{self._describe()}") from None

    def call(self, function_id: str, payload: Any = None, *, namespace: str | None = None,
             timeout_ms: int | None = None, metadata: Any = None, action: Any = None,
             timeout: float | None = None) -> dict[str, Any]:
        """trigger() from inside this worker: {"result": ...} or {"error": {...}}."""
        args: dict[str, Any] = {"function_id": function_id, "payload": payload}
        for k, v in (("namespace", namespace), ("timeout_ms", timeout_ms),
                     ("metadata", metadata), ("action", action)):
            if v is not None:
                args[k] = v
        if timeout is None:
            timeout = (timeout_ms or 30000) / 1000 + 10
        res = self.command("call", timeout=timeout, **args)
        return {k: res[k] for k in ("result", "error") if k in res}

    def unregister_trigger(self, index: int = 0) -> dict[str, Any]:
        return self.command("unregister_trigger", index=index)

    def unregister_trigger_type(self, type_id: str, namespace: str | None = None) -> dict[str, Any]:
        args = {"id": type_id}
        if namespace is not None:
            args["namespace"] = namespace
        return self.command("unregister_trigger_type", **args)

    def unregister_function(self, function_id: str) -> dict[str, Any]:
        return self.command("unregister_function", id=function_id)

    def log(self, message: str, level: str = "info") -> dict[str, Any]:
        return self.command("log", message=message, level=level)

    # ----- async variants (use these from async tests: the in-process engine shares the loop,
    # so a blocking wait there would starve it) ----------------------------------------------
    async def await_ready(self, timeout: float = DEFAULT_READY_TIMEOUT) -> dict[str, Any]:
        return await asyncio.to_thread(self.wait_ready, timeout)

    async def event(self, event: str | None = None, timeout: float = 10.0,
                    predicate: Callable[[dict[str, Any]], bool] | None = None,
                    **match: Any) -> dict[str, Any]:
        """Async ``wait_event``."""
        return await asyncio.to_thread(self.wait_event, event, timeout, predicate, **match)

    async def no_event(self, event: str | None = None, within: float = 1.0, **match: Any) -> None:
        await asyncio.to_thread(self.assert_no_event, event, within, **match)

    async def acommand(self, op: str, timeout: float = 40.0, **args: Any) -> dict[str, Any]:
        return await asyncio.to_thread(lambda: self.command(op, timeout=timeout, **args))

    async def acall(self, function_id: str, payload: Any = None, **kw: Any) -> dict[str, Any]:
        """Async ``call``."""
        return await asyncio.to_thread(lambda: self.call(function_id, payload, **kw))

    async def aclose(self, grace: float = 5.0) -> int | None:
        return await asyncio.to_thread(self.close, grace)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    def __repr__(self) -> str:
        return f"<Peer {self.lang} pid={self.proc.pid} worker_id={self.worker_id}>"


def start_peer_process(
    lang: str,
    url: str,
    spec: dict[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    wait_ready: bool = True,
) -> Peer:
    """Start a worker peer (its own process group). Caller owns ``peer.close()``."""
    spec = dict(spec or {})
    cmd = _command(lang, "worker") + [json.dumps(spec)]
    proc = subprocess.Popen(
        cmd,
        cwd=str(PEERS_DIR),
        env=_env(url, env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        bufsize=1,
        start_new_session=True,
    )
    peer = Peer(lang, url, spec, proc)
    if wait_ready:
        try:
            peer.wait_ready(ready_timeout)
        except BaseException:
            peer.close(grace=1)
            raise
    return peer


def run_call(
    lang: str,
    url: str,
    function_id: str,
    payload: Any = None,
    *,
    namespace: str | None = None,
    timeout_ms: int | None = None,
    metadata: Any = None,
    action: Any = None,
    worker_name: str | None = None,
    worker_namespace: str | None = None,
    otel: bool = False,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """One-shot official-SDK call. Returns {"result": ...} or {"error": {code, message,
    stacktrace}}. Raises PeerError if the caller could not connect, crashed or hung."""
    spec: dict[str, Any] = {"function_id": function_id, "payload": payload, "otel": otel}
    for k, v in (("namespace", namespace), ("timeout_ms", timeout_ms), ("metadata", metadata),
                 ("action", action), ("worker_name", worker_name),
                 ("worker_namespace", worker_namespace)):
        if v is not None:
            spec[k] = v
    if timeout is None:
        timeout = (timeout_ms or 30000) / 1000 + 20
    cmd = _command(lang, "call") + [json.dumps(spec)]
    proc = subprocess.Popen(
        cmd, cwd=str(PEERS_DIR), env=_env(url, env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc, grace=1)
        out, err = proc.communicate()
        raise PeerError(f"{lang} call {function_id} did not finish within {timeout}s\n"
                        f"--- stderr ---\n{err[-8000:]}") from None
    finally:
        if proc.poll() is None:
            _kill_group(proc, grace=1)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    for ln in reversed(lines):
        try:
            obj = json.loads(ln)
        except ValueError:
            continue
        if isinstance(obj, dict) and ("result" in obj or "error" in obj):
            return obj
    raise PeerError(f"{lang} call {function_id} gave no result (exit {proc.returncode})\n"
                    f"--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-8000:]}")


async def arun_call(lang: str, url: str, function_id: str, payload: Any = None,
                    **kw: Any) -> dict[str, Any]:
    """Async ``run_call`` (runs in a thread so an in-process engine keeps serving)."""
    return await asyncio.to_thread(lambda: run_call(lang, url, function_id, payload, **kw))


class PeerManager:
    """Starts peers for one test and kills them all at teardown."""

    def __init__(self) -> None:
        self.started: list[Peer] = []

    def start(self, lang: str, url: str, spec: dict[str, Any] | None = None, **kw: Any) -> Peer:
        """``kw``: env, ready_timeout, wait_ready (see start_peer_process)."""
        peer = start_peer_process(lang, url, spec, **kw)
        self.started.append(peer)
        return peer

    async def astart(self, lang: str, url: str, spec: dict[str, Any] | None = None, *,
                     ready_timeout: float = DEFAULT_READY_TIMEOUT, wait_ready: bool = True,
                     **kw: Any) -> Peer:
        """Async ``start``: the READY wait runs in a thread, so an engine on this loop serves."""
        peer = start_peer_process(lang, url, spec, wait_ready=False, **kw)
        self.started.append(peer)
        if wait_ready:
            await peer.await_ready(ready_timeout)
        return peer

    def call(self, lang: str, url: str, function_id: str, payload: Any = None, **kw: Any) -> dict[str, Any]:
        return run_call(lang, url, function_id, payload, **kw)

    async def acall(self, lang: str, url: str, function_id: str, payload: Any = None,
                    **kw: Any) -> dict[str, Any]:
        return await arun_call(lang, url, function_id, payload, **kw)

    def close_all(self, grace: float = 3.0) -> None:
        """Stop every peer, in parallel (SIGTERM, then SIGKILL of the group after ``grace``)."""
        peers, self.started = list(self.started), []
        threads = [threading.Thread(target=_quiet_close, args=(p, grace)) for p in peers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    async def aclose_all(self, grace: float = 3.0) -> None:
        await asyncio.to_thread(self.close_all, grace)


def _quiet_close(peer: Peer, grace: float) -> None:
    try:
        peer.close(grace=grace)
    except Exception:
        pass


@pytest.fixture
async def peers() -> Any:
    """PeerManager for this test. Async fixture on purpose: teardown stops the peers while the
    event loop (and an in-process engine on it) still runs, so their SDKs close cleanly."""
    mgr = PeerManager()
    try:
        yield mgr
    finally:
        await mgr.aclose_all()


@pytest.fixture
def start_peer(peers: PeerManager) -> Callable[..., Peer]:
    return peers.start
