"""A first-party worker run out of process (``isolation: process``, spec/cli.md §9.1-9.3).

``ChildWorker`` starts ``<python> -m pyiii.workers.<module>`` (which runs
:func:`pyiii.workers.runner.run_standalone`) in its own process group with the §9.2
environment, echoes its output to the engine's stderr prefixed ``<name> | ``, restarts it after a
crash per the entry's ``restart:`` policy with exponential backoff, gives up with state
``failed`` on a crash loop, and stops it with SIGTERM to the group (SIGKILL after
``stop_timeout_ms``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..engine.config import WorkerEntry

log = logging.getLogger("pyiii.manager")

_RESERVED = re.compile(r"^(III_.*|PATH|HOME)$")


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The ``config:`` block as environment variables (cli.md §9.2 item 3)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = prefix + re.sub(r"[^A-Z0-9_]", "_", str(key).upper())
        if isinstance(value, dict):
            out.update(flatten_config(value, name + "_"))
        elif isinstance(value, str):
            out[name] = value
        elif value is None:
            out[name] = ""
        else:
            out[name] = json.dumps(value, separators=(",", ":"))
    return out


def child_environment(entry: WorkerEntry, module: str, project_dir: Path, engine_url: str,
                      ephemeral: bool, config_path: Path | None,
                      base: dict[str, str] | None = None) -> dict[str, str]:
    """cli.md §9.2: the engine's environment minus ``III_*``, the flattened ``config:``, the
    entry's ``env``, then what the engine sets (later items win)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("III_")}
    for key, value in flatten_config(entry.config).items():
        if _RESERVED.match(key):
            log.warning("%s: config key %s would override %s; not passed as environment",
                        entry.name, key, key)
            continue
        env[key] = value
    env.update(entry.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    env.update({
        "III_URL": engine_url, "III_ENGINE_URL": engine_url, "III_WORKER_NAME": entry.name,
        "III_WORKER_VERSION": __version__,
        "III_WORKER_CONFIG": json.dumps(entry.config, separators=(",", ":")),
        "III_PROJECT_DIR": str(project_dir), "III_ISOLATION": "process",
        "III_PYTHON": sys.executable, "III_EPHEMERAL": "1" if ephemeral else "0",
    })
    if locations:
        env["III_WORKER_DIR"] = locations[0]
    if config_path is not None:
        env["III_CONFIG_PATH"] = str(config_path)
    if entry.namespace:
        env["III_NAMESPACE"] = entry.namespace
    return env


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a preexec hook so the child gets SIGTERM when the engine dies (cli.md §9.3)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return hook


_PDEATHSIG = _parent_death_signal()


class ChildWorker:
    """One supervised child process; ``state`` is starting, running, backoff, stopping, stopped
    or failed (``reason`` says why)."""

    def __init__(self, entry: WorkerEntry, module: str, project_dir: Path, engine_url: str,
                 ephemeral: bool = False, config_path: Path | None = None,
                 echo: bool = True) -> None:
        self.entry = entry
        self.name = entry.name
        self.module = module
        self.project_dir = project_dir
        self.env = child_environment(entry, module, project_dir, engine_url, ephemeral,
                                     config_path)
        self.echo = echo
        self.state = "stopped"
        self.reason: str | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._invalid_config: str | None = None
        self._spawned = asyncio.Event()

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    async def start(self) -> None:
        """Spawn the process and supervise it; raises ``OSError`` if it cannot be spawned."""
        await self._spawn()
        self._task = asyncio.get_running_loop().create_task(self._supervise(),
                                                            name=f"supervise {self.name}")

    async def _spawn(self) -> None:
        self.state = "starting"
        self._invalid_config = None
        self.proc = await asyncio.create_subprocess_exec(
            *self.command, cwd=str(self.project_dir), env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=_PDEATHSIG)
        self.pid = self.proc.pid
        self.state = "running"
        self._started_at = time.monotonic()

    async def _supervise(self) -> None:
        policy = self.entry.restart
        in_a_row = 0  # restarts that did not stay up reset_after_s
        try:
            while True:
                proc = self.proc
                assert proc is not None
                readers = [asyncio.ensure_future(self._forward(proc.stdout)),
                           asyncio.ensure_future(self._forward(proc.stderr))]
                code = await proc.wait()
                await asyncio.wait(readers, timeout=2)
                _signal_group(proc.pid, signal.SIGKILL)  # stragglers of its group
                self.last_exit, self.pid, self.proc = code, None, None
                if self._stopping:
                    return
                uptime = time.monotonic() - self._started_at
                if uptime >= policy.reset_after_s:
                    in_a_row = 0
                what = _describe_exit(code)
                if self._invalid_config is not None:
                    self._fail(f"invalid config: {self._invalid_config}")
                    return
                if policy.policy == "never" or (code == 0 and policy.policy != "always"):
                    if code == 0:
                        self.state = "stopped"
                        log.info("%s %s", self.name, what)
                    else:
                        self._fail(f"{what} (restart: {policy.policy})")
                    return
                if in_a_row >= policy.max_restarts:
                    self._fail(f"crash loop: exited {in_a_row + 1} times within "
                               f"{policy.reset_after_s:g}s (last exit code {code}); see iii "
                               f"worker logs {self.name}")
                    return
                delay = min(policy.backoff_initial_ms * 2 ** in_a_row, policy.backoff_max_ms)
                delay = delay * (1 + random.random() * 0.1) / 1000
                in_a_row += 1
                self.state = "backoff"
                log.warning("%s %s; restarting in %.1fs", self.name, what, delay)
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    await self._spawn()
                except OSError as exc:
                    self._fail(f"cannot start: {exc}")
                    return
                if self._stopping:  # stop() came while it was being spawned
                    assert self.proc is not None
                    await self._terminate(self.proc)
                    return
                self.restarts += 1
                log.info("restarted %s (builtin, process) pid %d", self.name, self.pid)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a supervisor bug must not go unnoticed
            log.exception("%s: supervisor failed", self.name)
            self._fail("supervisor error")

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.reason = reason
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
        if self.echo:
            try:
                sys.stderr.write(f"{self.name} | {line}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    async def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after ``stop_timeout_ms``; returns once it is gone."""
        self._stopping = True
        task = self._task
        if self.state == "backoff" and task is not None:
            task.cancel()  # waiting to restart: nothing runs
        if self.proc is not None:
            await self._terminate(self.proc)
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                task.cancel()
        self.pid = None
        if self.state != "failed":
            self.state = "stopped"

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            self.state = "stopping"
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()),
                                       self.entry.stop_timeout_ms / 1000)
            except asyncio.TimeoutError:
                log.warning("%s did not stop within %d ms; killing it", self.name,
                            self.entry.stop_timeout_ms)
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # stragglers of its group


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
