"""Real `iii` processes for tests: the engine (`iii` in a temp project) and one-shot CLI runs.

Every process runs in its own process group; ``IIIProcs.close_all`` (the ``iii_procs`` fixture's
teardown) SIGTERMs then SIGKILLs every group still alive, whatever the test did.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
_BIN = Path(sys.executable).parent / "iii"
III_CMD = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "pyiii.cli.main"]
BANNER = re.compile(r"listening on (ws://\S+)")
# Variables a developer's shell could set that would change what `iii` reads.
_SCRUB = ("III_URL", "III_ENGINE_URL", "III_CONFIG_PATH", "III_ENGINE_PORT", "III_HTTP_PORT",
          "III_STREAM_PORT", "III_LOG_LEVEL", "III_REGISTRY_URL", "III_WORKER_NAME", "III_NAMESPACE",
          "III_TOKEN", "III_SHUTDOWN_TIMEOUT", "NO_COLOR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "0.0.0.0") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def manager_config(port: int | str, extra: str = "") -> str:
    """config.yaml with only the engine listener (on 127.0.0.1:<port>) plus ``extra`` lines."""
    return ("workers:\n  - name: iii-worker-manager\n"
            f"    config: {{port: {port}, host: 127.0.0.1}}\n" + extra)


def base_env(home: Path, extra: dict[str, str | None] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    for var, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "cache"), ("III_CACHE_DIR", "iii-cache"),
                     ("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Proc:
    """A long-running `iii` process with its stderr/stdout captured line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str],
                 prefix: list[str] | None = None) -> None:
        self.args = args
        self.cwd = cwd
        self.lines: list[str] = []
        self.out: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            (prefix or []) + III_CMD + args, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            errors="replace", start_new_session=True)
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """The first stderr line (from index ``start``) matching the regex ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._readers[0].is_alive()):
                    raise AssertionError(f"no stderr line matching {pattern!r} within {timeout}s "
                                         f"(exit {self.proc.poll()})\n--- stderr ---\n"
                                         + "\n".join(self.lines[-60:]))
                self._cond.wait(min(left, 0.1))

    def wait_ready(self, timeout: float = 15.0) -> str:
        """Wait for `ready`; return the engine URL from the banner line."""
        url = self.wait_line(BANNER.pattern, timeout).group(1)
        self.wait_line(r"\bready \(", timeout)
        return url

    def signal(self, sig: int) -> None:
        """Signal the engine process itself (it has its own group; `iii` spawns no children here)."""
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        kill_group(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(2)
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc, signal.SIGKILL)  # stragglers of the group
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class IIIProcs:
    """Starts engines and CLI commands for one test; everything is killed at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.env = base_env(self.home)
        self.started: list[Proc] = []
        self._cleanups: list[Callable[[], Any]] = []

    def on_close(self, cleanup: Callable[[], Any]) -> None:
        """Run ``cleanup`` at teardown, before the engines are stopped (e.g. ``peer.close``)."""
        self._cleanups.append(cleanup)

    def project(self, name: str = "proj", config: str | None = None) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (path / "config.yaml").write_text(config)
        return path

    def engine(self, cwd: Path, *args: str, env: dict[str, str | None] | None = None,
               prefix: list[str] | None = None) -> Proc:
        full = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        proc = Proc(list(args), cwd, full, prefix)
        self.started.append(proc)
        return proc

    def run(self, *args: str, cwd: Path, timeout: float = 30.0, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One CLI command to completion (its group killed if it overruns ``timeout``)."""
        proc = subprocess.Popen(III_CMD + list(args), cwd=str(cwd), env={**self.env, **(env or {})},
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                encoding="utf-8", start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            raise AssertionError(f"iii {' '.join(args)} still running after {timeout}s\n{err}") from None
        finally:
            kill_group(proc)  # nothing of the group may outlive the command
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def close_all(self) -> None:
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - teardown must reach every process
                pass
        self._cleanups.clear()
        threads = [threading.Thread(target=p.close) for p in self.started]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.started.clear()


def engine_json(project: Path) -> dict[str, Any] | None:
    try:
        return json.loads((project / ".iii" / "engine.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


@pytest.fixture
def iii_procs(tmp_path: Path):
    procs = IIIProcs(tmp_path)
    try:
        yield procs
    finally:
        procs.close_all()


def has_unshare_net() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
