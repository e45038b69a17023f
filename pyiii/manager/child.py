"""One supervised worker process: spawn, watch, restart with backoff, stop (spec/cli.md §9.1, §9.3).

``ManagedProcess`` runs whatever ``prepare`` returns (a first-party worker as ``python -m``, a
local worker's ``scripts.start``, bare or inside bubblewrap) in its own session and process
group, with stdin from /dev/null, a parent-death signal, its output appended to the worker log,
and a ``.iii/run/<name>.json`` record while it lives. After an exit the restart policy decides;
too many quick exits in a row end in ``failed`` (crash loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from ..engine.config import WorkerEntry
from .logfile import WorkerLog, iso_now
from .registry.errors import ManagerError
from .runrecord import RunRecords, group_members, group_tree, signal_group

log = logging.getLogger("pyiii.manager")

CONNECT_WARNING_S = float(os.environ.get("III_CONNECT_WARNING_S", "30"))


class StartError(ManagerError):
    """The worker cannot be started; ``code`` is a cli.md §0.4 code (W160, W161, W180...)."""


@dataclass
class Launch:
    """How to run one worker: the full argv (bwrap included), folder, environment, limits."""

    argv: list[str]
    cwd: Path  # the worker's folder; inside the sandbox under namespace isolation
    env: dict[str, str]
    isolation: str  # process | namespace
    label: str  # "builtin", "local 0.1.0": the engine log's `started <name> (<label>, <iso>)`
    limits: dict[str, str] = field(default_factory=dict)
    preexec: Callable[[], None] | None = None
    sandbox_args: list[str] = field(default_factory=list)  # bwrap options, for a fresh exec
    bwrap: str | None = None


def host_cwd(launch: Launch) -> str:
    """The folder the host process starts in. A sandboxed worker's ``cwd`` names a folder
    inside its root (bwrap's ``--chdir``), which need not exist on the host (an image's
    ``WorkingDir``), so bwrap itself starts in "/", present on both sides."""
    return "/" if launch.isolation == "namespace" else str(launch.cwd)


def _prctl() -> Callable[[int], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda sig: prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG


_SET_PDEATHSIG = _prctl()


def preexec_for(extra: Callable[[], None] | None) -> Callable[[], None] | None:
    """Runs in the child before exec: dies with the engine (SIGTERM), then ``extra`` (limits)."""
    if _SET_PDEATHSIG is None and extra is None:
        return None

    def hook() -> None:
        if _SET_PDEATHSIG is not None:
            _SET_PDEATHSIG(int(signal.SIGTERM))
        if extra is not None:
            extra()

    return hook


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def exit_record(code: int) -> dict[str, object]:
    if code >= 0:
        return {"code": code, "signal": None, "at": iso_now()}
    try:
        name: object = signal.Signals(-code).name
    except ValueError:
        name = -code
    return {"code": None, "signal": name, "at": iso_now()}


class ManagedProcess:
    """``state``: installing, starting, running, backoff, stopping, stopped or failed."""

    def __init__(self, entry: WorkerEntry, prepare: Callable[[], Awaitable[Launch]],
                 worker_log: WorkerLog, records: RunRecords | None,
                 is_connected: Callable[[], bool]) -> None:
        self.entry = entry
        self.name = entry.name
        self.prepare = prepare
        self.log = worker_log
        self.records = records
        self.is_connected = is_connected
        self.state = "stopped"
        self.reason: str | None = None
        self.error_code: str | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.started_at: str | None = None
        self.last_exit: dict[str, object] | None = None
        self.launch: Launch | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._invalid_config: str | None = None
        self._settled = asyncio.Event()

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, wait_s: float = 10.0) -> None:
        """Start supervising (crash counter reset); returns once spawned, failed or ``wait_s``."""
        if self.active:
            return
        self._stopping = False
        self.reason = self.error_code = None
        self.restarts = 0
        self._settled.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"supervise {self.name}")
        try:
            await asyncio.wait_for(self._settled.wait(), wait_s)
        except asyncio.TimeoutError:
            pass

    async def _run(self) -> None:
        try:
            self.state = "installing"
            try:
                self.launch = await self.prepare()
            except StartError as exc:
                self._fail(exc.message, exc.code)
                return
            await self._supervise(self.launch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a supervisor bug must not go unnoticed
            log.exception("%s: supervisor failed", self.name)
            self._fail(f"supervisor error: {exc}", "W900")
        finally:
            self._settled.set()

    async def _spawn(self, launch: Launch) -> asyncio.subprocess.Process:
        self.state = "starting"
        self._invalid_config = None
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, cwd=host_cwd(launch), env=launch.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=preexec_for(launch.preexec))
        self.proc, self.pid = proc, proc.pid
        self.started_at = iso_now()
        self._started_mono = time.monotonic()
        if self.records is not None:
            self.records.write(self.name, proc.pid, launch.isolation, launch.argv)
        self.log.event(f"started pid {proc.pid} ({launch.isolation})")
        self._settled.set()
        return proc

    async def _supervise(self, launch: Launch) -> None:
        policy = self.entry.restart
        in_a_row = 0  # restarts that did not stay up reset_after_s
        first = True
        while True:
            try:
                proc = await self._spawn(launch)
            except OSError as exc:
                self._fail(f"cannot start: {exc}", "W160")
                return
            verb = "started" if first else "restarted"
            log.info("%s %s (%s, %s) pid %d", verb, self.name, launch.label, launch.isolation,
                     proc.pid)
            if not first:
                self.restarts += 1
            first = False
            if self._stopping:  # stop() came while it was being spawned
                await self._terminate(proc)
            watcher = asyncio.ensure_future(self._watch_connection(proc))
            readers = [asyncio.ensure_future(self._forward(proc.stdout)),
                       asyncio.ensure_future(self._forward(proc.stderr))]
            code = await proc.wait()
            watcher.cancel()
            if self._stopping:  # _terminate gives the rest of the group its grace period
                await asyncio.wait(readers, timeout=self.entry.stop_timeout_ms / 1000 + 1)
            else:
                await asyncio.wait(readers, timeout=2)
                signal_group(proc.pid, signal.SIGKILL)  # stragglers of its group
            if self.records is not None:
                self.records.remove(self.name)
            self.last_exit, self.pid, self.proc = exit_record(code), None, None
            what = describe_exit(code)
            if self._stopping:
                self.log.event(f"stopped ({what})")
                return
            if time.monotonic() - self._started_mono >= policy.reset_after_s:
                in_a_row = 0
            if self._invalid_config is not None:
                self.log.event(f"{what}; invalid config")
                self._fail(f"invalid config: {self._invalid_config}", "W131")
                return
            if policy.policy == "never" or (code == 0 and policy.policy != "always"):
                self.log.event(what)
                if code == 0:
                    self.state = "stopped"
                    log.info("%s %s", self.name, what)
                else:
                    self._fail(f"{what} (restart: {policy.policy})", None)
                return
            if in_a_row >= policy.max_restarts:
                self.log.event(what)
                self._fail(f"crash loop: exited {in_a_row + 1} times within "
                           f"{policy.reset_after_s:g}s (last exit code {code}); see iii "
                           f"worker logs {self.name}", None)
                return
            delay = min(policy.backoff_initial_ms * 2 ** in_a_row, policy.backoff_max_ms)
            delay = delay * (1 + random.random() * 0.1) / 1000
            in_a_row += 1
            self.state = "backoff"
            self.log.event(f"{what}; restarting in {delay:.1f}s")
            log.warning("%s %s; restarting in %.1fs", self.name, what, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return

    async def _watch_connection(self, proc: asyncio.subprocess.Process) -> None:
        """``starting`` until the worker's name connects; warn once after 30 s without."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_WARNING_S
        warned = False
        while self.proc is proc:
            if self.is_connected():
                if self.state == "starting":
                    self.state = "running"
                return
            if not warned and loop.time() >= deadline:
                warned = True
                message = f"{self.name} has not connected after {CONNECT_WARNING_S:g}s"
                log.warning("warning: %s", message)
                self.log.event(f"warning: {message}")
            await asyncio.sleep(0.05)

    def _fail(self, reason: str, code: str | None) -> None:
        self.state = "failed"
        self.reason = reason
        self.error_code = code
        self.log.event(reason if reason.startswith("crash loop") else f"failed: {reason}")
        log.error("%s failed: %s", self.name, reason)

    async def _forward(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        marker = f"{self.name}: invalid config: "
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._line(raw.decode("utf-8", "replace").rstrip("\r"), marker)
        if pending:
            self._line(pending.decode("utf-8", "replace"), marker)

    def _line(self, line: str, marker: str) -> None:
        if line.startswith(marker):
            self._invalid_config = line[len(marker):]
        self.log.write(line)

    async def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after ``stop_timeout_ms``; returns once it is gone."""
        self._stopping = True
        task = self._task
        if task is not None and self.state in ("backoff", "installing"):
            task.cancel()  # nothing runs yet (or a script: its group is killed below)
        if self.proc is not None:
            await self._terminate(self.proc)
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                task.cancel()
        if self.records is not None:
            self.records.remove(self.name)
        self.pid = None
        self._task = None
        if self.state != "failed":
            self.state = "stopped"

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            self.state = "stopping"
            self.log.event("stopping (SIGTERM)")
            self._signal(proc.pid, signal.SIGTERM)
            try:
                # the whole group gets its grace period: `sh -c` may die at once while the
                # worker it started is still shutting down cleanly
                await asyncio.wait_for(self._group_gone(proc), self.entry.stop_timeout_ms / 1000)
            except asyncio.TimeoutError:
                log.warning("%s did not stop within %d ms; killing it", self.name,
                            self.entry.stop_timeout_ms)
                self.log.event("did not stop in time (SIGKILL)")
                signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        signal_group(proc.pid, signal.SIGKILL)  # stragglers of its group

    @staticmethod
    async def _group_gone(proc: asyncio.subprocess.Process) -> None:
        await asyncio.shield(proc.wait())
        while group_members(proc.pid):
            await asyncio.sleep(0.02)

    def _signal(self, pgid: int, sig: int) -> None:
        """SIGTERM the worker, not its wrappers: bwrap's outer process (its death SIGKILLs the
        sandbox: die-with-parent), bwrap's PID-namespace init (its exit kills the namespace),
        and the ``sh -c`` running ``scripts.start`` while it waits for a child. Each wrapper
        exits by itself once the worker has shut down."""
        tree = group_tree(pgid)
        children: dict[int, list[int]] = {}
        for pid, parent in tree.items():
            children.setdefault(parent, []).append(pid)
        skip: set[int] = set()
        top = [pgid]
        if self.launch is not None and self.launch.isolation == "namespace":
            skip.add(pgid)
            inits = children.get(pgid, [])
            skip.update(inits)
            top = [c for init in inits for c in children.get(init, [])]
        skip.update(p for p in top if children.get(p))
        targets = [p for p in tree if p not in skip]
        for pid in targets or [pgid]:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill_now(self) -> None:
        """Second-signal shutdown: SIGKILL the group, no waiting."""
        if self.proc is not None:
            signal_group(self.proc.pid, signal.SIGKILL)
