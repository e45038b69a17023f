"""``worker::exec``: run a command inside a managed worker's sandbox (spec/cli.md §4.8, §9.4, §9.5).

A namespace worker's namespaces (mount, UTS, IPC, PID) are joined with ``nsenter``; when that
is impossible (no nsenter, not privileged) the command runs in a fresh sandbox built with the
same bwrap options (``joined: false``). A ``process`` worker's command runs as a plain child
with the worker's environment and folder. Output is captured up to 8 MiB per stream.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Mapping

from .child import Launch, preexec_for

CAP_BYTES = 8 * 1024 * 1024


def _sandbox_init(pid: int) -> int | None:
    """The first child of bwrap's outer process: a process inside the worker's namespaces."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _can_join(target: int) -> bool:
    """nsenter needs CAP_SYS_ADMIN over the target's namespaces: root in ours, same user ns."""
    if os.geteuid() != 0:
        return False
    try:
        return os.readlink(f"/proc/{target}/ns/user") == os.readlink("/proc/self/ns/user")
    except OSError:
        return False


def build_argv(launch: Launch, pid: int | None, argv: list[str], cwd: str) -> tuple[list[str], bool]:
    """The argv that runs ``argv`` like the worker runs, and whether it joins its namespaces."""
    if launch.isolation != "namespace":
        return argv, False
    nsenter = shutil.which("nsenter")
    target = _sandbox_init(pid) if pid is not None else None
    if nsenter and target is not None and _can_join(target):
        # nsenter opens --wd before it enters the namespaces: reach the sandbox's folder through
        # the target's root, so the command's cwd is the one inside (an image's WorkingDir need
        # not exist on the host, and a host folder would be unreachable from the new root)
        folder = os.path.join(str(launch.cwd), cwd)
        return [nsenter, "-t", str(target), "-m", "-u", "-i", "-p", "-r", f"--wd=/proc/{target}/root{folder}",
                "--", *argv], True
    assert launch.bwrap is not None
    return [launch.bwrap, *launch.sandbox_args, "--chdir", cwd, "--", *argv], False


async def _capture(stream: asyncio.StreamReader | None) -> tuple[bytes, bool]:
    if stream is None:
        return b"", False
    data = bytearray()
    truncated = False
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return bytes(data), truncated
        room = CAP_BYTES - len(data)
        if len(chunk) > room:
            truncated = True
        data += chunk[:max(room, 0)]


async def run_exec(launch: Launch, pid: int | None, argv: list[str],
                   env: Mapping[str, str] | None, cwd: str | None,
                   timeout_ms: int) -> dict[str, Any]:
    """Run and wait; the result document of ``worker::exec``. Raises FileNotFoundError (127)
    or PermissionError (126) when the command itself cannot be started by a plain process."""
    folder = cwd or str(launch.cwd)
    full, joined = build_argv(launch, pid, argv, folder)
    full_env = {**launch.env, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *full, cwd=folder if launch.isolation != "namespace" else "/", env=full_env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=preexec_for(None))
    readers = asyncio.gather(_capture(proc.stdout), _capture(proc.stderr))
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout_ms / 1000)
    except asyncio.TimeoutError:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await proc.wait()
    (out, out_cut), (err, err_cut) = await readers
    code = proc.returncode
    assert code is not None
    sig = None
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = str(-code)
    exit_code = 124 if timed_out else code if code >= 0 else 128 - code
    if not joined and launch.isolation == "namespace" and code == 1 and \
            err.startswith(b"bwrap: execvp "):  # bwrap reports a failed exec as exit 1
        exit_code = 127 if b"No such file" in err else 126
    return {"exit_code": exit_code, "signal": sig, "stdout": base64.b64encode(out).decode(),
            "stderr": base64.b64encode(err).decode(), "truncated": out_cut or err_cut,
            "timed_out": timed_out, "joined": joined}
