"""What every benchmark script here shares: child processes that speak a line protocol on
stdout, their CPU time and memory from /proc, and free ports."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import socket
import time
from typing import Any
from pathlib import Path


class Child:
    """A child process whose stdout lines are protocol (READY/MARK/RESULT …)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            await self.proc.wait()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) early:\n{tail}")
        return raw.decode().strip()

    async def expect(self, prefix: str, timeout: float = 60) -> str:
        while True:
            text = await self.line(timeout)
            if text.startswith(prefix):
                return text[len(prefix):].strip()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                self.proc.terminate()
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn_logged(workdir: Path, index: int, name: str, argv: list[str], *,
                       stdin: bool = False, cwd: Path | None = None,
                       env: dict[str, str] | None = None) -> Child:
    """Start ``argv`` with stdout as the protocol pipe and stderr in ``<index>-<name>.log``
    under ``workdir``; the repository root is put on PYTHONPATH so that roles import pyiii."""
    root = Path(__file__).resolve().parent.parent
    log_path = workdir / f"{index:03d}-{name}.log"
    base = os.environ if env is None else env
    child_env = dict(base, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=log_file,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            cwd=str(cwd or root), env=child_env)
    return Child(name, proc, log_path)


async def engine_on_free_port() -> tuple[object, object, str]:
    """A started pyiii Engine with a WebSocket listener on 127.0.0.1 and a free port, for the
    roles that run the engine in their own process: (engine, listener, ws url)."""
    from pyiii.engine.core import Engine
    from pyiii.engine.listener import Listener, ListenerConfig

    engine = Engine()
    engine.start()
    listener = Listener(engine, ListenerConfig(host="127.0.0.1", port=0))
    await listener.start()
    return engine, listener, f"ws://127.0.0.1:{listener.port}"


def run_like_iii(main: Any) -> Any:
    """Run ``main`` on the event loop ``iii`` runs on (pyiii.runtime: uvloop when installed)."""
    from pyiii.runtime import run

    return run(main)


def settle_like_iii() -> None:
    """The garbage-collector settings ``iii`` applies once it has started
    (pyiii.runtime); roles that stand in for the engine process call this before READY."""
    from pyiii.runtime import tune_for_serving

    tune_for_serving()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def machine() -> str:
    """One line naming the machine and the moment, for the head of every report."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {datetime.datetime.now().isoformat(timespec='seconds')}")
