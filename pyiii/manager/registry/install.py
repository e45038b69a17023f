"""Install folders of registry workers: `.iii/install/<name>/<id>/` (spec/cli.md §9.7).

A folder is built in staging (unpack, `setup`, `install`) and `.complete` is written last, so a
folder without it is never mistaken for an install; the transaction moves it into place at
commit. `<id>` is `<version>-<12 hex of sha256>`, so a new version installs beside the one
running and the switch happens at restart.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Callable

from ..envbuild import EnvInputs, worker_environment
from ..lockfile import LockEntry
from ..local import ScriptError, run_script
from ..manifest import MANIFEST_NAME, load_manifest
from .archive import unpack
from .cache import sha256_file
from .errors import ManagerError

COMPLETE = ".complete"
SCRIPT_TAIL = 20


def install_root(project_dir: Path, name: str) -> Path:
    return Path(project_dir) / ".iii" / "install" / name


def install_path(project_dir: Path, name: str, entry: LockEntry, platform: str) -> Path | None:
    """Where `entry` is installed on this platform (None: builtin, image, or no binary)."""
    ident = entry.install_id(platform) if entry.type in ("package", "binary") else None
    return install_root(project_dir, name) / ident if ident else None


def _marker(entry: LockEntry, platform: str) -> dict[str, str]:
    art = entry.artifact_for(platform)
    return {"type": entry.type, "version": entry.version, "sha256": art.sha256 if art else ""}


def is_current(project_dir: Path, name: str, entry: LockEntry, platform: str) -> bool:
    """True when the install folder's `.complete` names this lock identity (raw binaries are
    re-hashed too, as they are run directly)."""
    folder = install_path(project_dir, name, entry, platform)
    if folder is None:
        return False
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    if marker != _marker(entry, platform):
        return False
    art = entry.artifact_for(platform)
    if entry.type == "binary" and art is not None and art.format == "raw":
        binary = folder / "bin" / name
        return binary.is_file() and sha256_file(binary) == art.sha256
    return True


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def build_install(name: str, entry: LockEntry, blob: Path, staging: Path, project_dir: Path,
                  platform: str, *, output: Callable[[str], None] | None = None) -> None:
    """Fill the empty folder `staging` with the install of `entry` from its verified `blob`."""
    output = output or _stderr
    art = entry.artifact_for(platform)
    assert art is not None, "resolution guarantees an artifact for this platform"
    label = f"{name} {entry.version}"
    if entry.type == "package":
        unpack(blob, staging, f"{label} ({art.url})")
        _run_scripts(name, entry.version, staging, project_dir, output)
    elif art.format == "tar.gz":
        unpack(blob, staging, f"{label} ({art.url})")
        executable = staging / (art.entry or name)
        real = executable.resolve()
        if executable.is_symlink() or not real.is_file() or not real.is_relative_to(staging.resolve()):
            raise ManagerError("W142", f"{label}: the archive has no regular file '{art.entry or name}' to run")
        os.chmod(real, 0o755)
    else:
        target = staging / "bin" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blob, target)
        os.chmod(target, 0o755)
    (staging / COMPLETE).write_text(json.dumps(_marker(entry, platform), sort_keys=True) + "\n")


def _run_scripts(name: str, version: str, folder: Path, project_dir: Path,
                 output: Callable[[str], None]) -> None:
    if not (folder / MANIFEST_NAME).is_file():
        return
    manifest = load_manifest(folder)
    env = worker_environment(EnvInputs(
        name=name, engine_url=os.environ.get("III_URL", "ws://127.0.0.1:49134"),
        project_dir=Path(project_dir).resolve(), worker_dir=folder,
        work_dir=Path(project_dir).resolve() / "data" / "managed" / name, isolation="process",
        manifest_env=dict(manifest.env), version=version))
    tail: collections.deque[str] = collections.deque(maxlen=SCRIPT_TAIL)

    def collect(line: str) -> None:
        tail.append(line)
        output(line)

    for kind, script in (("setup", manifest.setup), ("install", manifest.install)):
        if not script:
            continue
        output(f"installing {name} {version}: {kind}")
        tail.clear()
        try:
            asyncio.run(run_script(kind, f"{name} {version}", script, folder, env, (), collect))
        except ScriptError as exc:
            raise ManagerError("W160", str(exc), details=list(tail),
                               hint=f"fix the {kind} script of {name} and publish a new version") from None


def clean_stale(project_dir: Path, name: str, keep: str) -> None:
    """Delete identity folders of `name` other than `keep` (after the new one started)."""
    root = install_root(project_dir, name)
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name not in (keep, "local") and not child.name.startswith(".") and \
                stat.S_ISDIR(child.lstat().st_mode):
            shutil.rmtree(child, ignore_errors=True)
