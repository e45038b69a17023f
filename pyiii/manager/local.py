"""Preparing a local worker folder: ``setup`` once, ``install`` when dependencies change (cli.md §9.7).

API used by the supervisor (before each start) and by ``iii worker add ./path`` (with visible
progress)::

    await prepare_local(name, folder, project_dir, *, env=None, wrap=(), output=None,
                        manifest=None) -> Prepared

``env`` is the worker's environment (§9.2; built for ``process`` isolation when None), ``wrap``
an argv prefix that runs a command inside the worker's sandbox (``[bwrap, ...options, "--chdir",
folder, "--"]``, empty for a plain process), ``output`` receives every script output line
(default: stderr). Raises ``ManifestError`` (W180) or ``ScriptError`` (W160). ``prepare_local_sync``
is the same for synchronous callers.

State lives in ``.iii/install/<name>/local/prepared.json``: whether ``setup`` ran (for this
folder) and the fingerprint of the dependency files when ``install`` last succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .child import preexec_for
from .envbuild import EnvInputs, worker_environment
from .jsonfile import read_json_object, write_json
from .manifest import MANIFEST_NAME, Manifest, load_manifest

DEPENDENCY_FILES = ("requirements.txt", "pyproject.toml", "uv.lock", "poetry.lock", "package.json",
                    "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "bun.lock", "Cargo.toml",
                    "Cargo.lock", "go.mod", "go.sum", MANIFEST_NAME)
DEFAULT_SCRIPT_TIMEOUT_S = 900.0


class ScriptError(Exception):
    """A setup/install script failed or timed out (W160)."""

    code = "W160"


@dataclass(frozen=True)
class Prepared:
    manifest: Manifest
    ran_setup: bool
    ran_install: bool


def fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of the dependency files present in ``folder``."""
    digest = hashlib.sha256()
    for name in DEPENDENCY_FILES:
        path = folder / name
        try:
            data = path.read_bytes()
        except OSError:
            continue
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def state_path(project_dir: Path, name: str) -> Path:
    return project_dir / ".iii" / "install" / name / "local" / "prepared.json"


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


async def run_script(kind: str, label: str, script: str, folder: Path, env: Mapping[str, str],
                     wrap: Sequence[str], output: Callable[[str], None]) -> None:
    """``/bin/sh -c <script>`` in ``folder``; every output line to ``output``."""
    timeout = float(os.environ.get("III_SCRIPT_TIMEOUT") or DEFAULT_SCRIPT_TIMEOUT_S)
    proc = await asyncio.create_subprocess_exec(
        *wrap, "/bin/sh", "-c", script, cwd=str(folder), env=dict(env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_for(None))

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            output(raw.decode("utf-8", "replace").rstrip("\r\n"))

    try:
        await asyncio.wait_for(asyncio.gather(pump(), proc.wait()), timeout)
    except asyncio.TimeoutError:
        _kill(proc.pid)
        await proc.wait()
        raise ScriptError(f"{kind} script of {label} timed out after {timeout:g}s") from None
    except BaseException:
        _kill(proc.pid)  # cancelled (the worker was stopped): nothing of the script may stay
        raise
    if proc.returncode != 0:
        raise ScriptError(f"{kind} script of {label} failed (exit {proc.returncode})")


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def prepare_local(name: str, folder: Path, project_dir: Path, *,
                        env: Mapping[str, str] | None = None, wrap: Sequence[str] = (),
                        output: Callable[[str], None] | None = None,
                        manifest: Manifest | None = None) -> Prepared:
    """Run ``setup`` (once per folder) and ``install`` (when the fingerprint changed)."""
    folder = Path(folder).resolve()
    project_dir = Path(project_dir).resolve()
    manifest = manifest or load_manifest(folder)
    output = output or _stderr
    if env is None:
        env = worker_environment(EnvInputs(
            name=name, engine_url=os.environ.get("III_URL", "ws://127.0.0.1:49134"),
            project_dir=project_dir, worker_dir=folder,
            work_dir=project_dir / "data" / "managed" / name, isolation="process",
            manifest_env=dict(manifest.env), version=manifest.version))
    path = state_path(project_dir, name)
    state = read_json_object(path)
    if state.get("folder") != str(folder):
        state = {"folder": str(folder)}  # another folder under the same name: a fresh install
    label = name if manifest.version is None else f"{name} {manifest.version}"
    ran_setup = ran_install = False
    if not state.get("setup_done"):
        if manifest.setup:
            output(f"running setup of {label}: {manifest.setup}")
            await run_script("setup", name, manifest.setup, folder, env, wrap, output)
            ran_setup = True
        state["setup_done"] = True
        state.pop("fingerprint", None)
        write_json(path, state)
    current = fingerprint(folder)
    if state.get("fingerprint") != current:
        if manifest.install:
            output(f"running install of {label}: {manifest.install}")
            await run_script("install", name, manifest.install, folder, env, wrap, output)
            ran_install = True
        state["fingerprint"] = current
        write_json(path, state)
    return Prepared(manifest, ran_setup, ran_install)


def prepare_local_sync(name: str, folder: Path, project_dir: Path, **kwargs: object) -> Prepared:
    """``prepare_local`` for callers without an event loop (the CLI)."""
    return asyncio.run(prepare_local(name, folder, project_dir, **kwargs))  # type: ignore[arg-type]
