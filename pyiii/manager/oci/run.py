"""Running an image worker (spec/cli.md §9.5, §9.6 "Run"): the command, folder, environment
and bubblewrap options of a sandbox whose root is the image.

The cached root is shared and read-only, so the mount points the sandbox needs (``/proc``,
``/dev``, ``/tmp``, ``/run``, ``/iii/data`` and the two files bound from the host) are made
once, when the root is unpacked (:func:`add_mount_points`). bwrap here has no overlay
support, so the root is always ``read-only``; writes go to ``/iii/data`` and the tmpfs folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..registry.errors import ManagerError
from .layers import resolve

DATA_DIR = "/iii/data"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")
MOUNT_DIRS = ("proc", "dev", "tmp", "run", "iii/data")
MANIFEST_DIR = "iii"


def add_mount_points(root: Path) -> None:
    """Create what bwrap mounts over inside an unpacked root (it cannot create them in a
    read-only bind): the folders, and the host files as regular empty files (an image's
    symbolic link there would send the bind elsewhere)."""
    for folder in MOUNT_DIRS:
        path = resolve(root, folder)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
    etc = resolve(root, "etc")
    etc.mkdir(parents=True, exist_ok=True)
    for name in HOST_FILES:
        path = etc / Path(name).name
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        if not path.exists():
            path.write_bytes(b"")


def image_install_dir(project_dir: Path, name: str, digest: str | None) -> Path:
    """``.iii/install/<name>/oci-<12 hex>``: the image worker's install folder (§9.7), keyed by
    the locked digest so a new pin gets a new folder."""
    hexd = (digest or "").split(":", 1)[-1]
    return project_dir / ".iii" / "install" / name / f"oci-{hexd[:12]}"


def manifest_folder(root: Path) -> Path | None:
    """``/iii`` of the image when it holds a regular ``iii.worker.yaml`` (links are not
    followed: they would point into the host)."""
    folder = root / MANIFEST_DIR
    path = folder / "iii.worker.yaml"
    if folder.is_symlink() or not folder.is_dir() or path.is_symlink() or not path.is_file():
        return None
    return folder


def command_of(run: dict[str, Any]) -> list[str]:
    """``Entrypoint`` + ``Cmd`` of the image config; W160 when both are empty."""
    entry = run.get("Entrypoint") or []
    cmd = run.get("Cmd") or []
    argv = [str(a) for a in (*entry, *cmd)] if isinstance(entry, list) and isinstance(cmd, list) else []
    if not argv:
        raise ManagerError("W160", "image has no Entrypoint or Cmd")
    return argv


def image_env(run: dict[str, Any]) -> dict[str, str]:
    """The image's ``Env`` (``KEY=value`` items), PATH defaulting to the usual folders (§9.2)."""
    env: dict[str, str] = {}
    for item in run.get("Env") or []:
        key, eq, value = str(item).partition("=")
        if eq and key:
            env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def working_dir(run: dict[str, Any]) -> str:
    folder = run.get("WorkingDir")
    return folder if isinstance(folder, str) and folder.startswith("/") else "/"


def bwrap_image_args(name: str, root: Path, work_dir: Path) -> list[str]:
    """bwrap options for an image sandbox: the image as a read-only root, the host's DNS files
    over it, fresh /proc and /dev, private /tmp and /run, and ``III_WORK_DIR`` at /iii/data."""
    args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", f"iii-{name}", "--ro-bind", str(root), "/", "--proc", "/proc",
            "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    for path in HOST_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--bind", str(work_dir.resolve()), DATA_DIR]
    return args
