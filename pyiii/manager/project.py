"""The project's engine lock and ``.iii/engine.json`` (spec/cli.md §0.5, §1.1).

One engine per project: ``.iii/engine.lock`` is held with ``flock`` for the engine's whole life,
so a crashed engine never leaves a stale lock behind. ``engine.json`` tells the CLI where that
engine listens.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .. import __version__
from .jsonfile import read_json_object, write_json


class ProjectBusy(Exception):
    """Another live engine holds the project's lock."""


class EngineLock:
    def __init__(self, project_dir: Path) -> None:
        self.dir = project_dir / ".iii"
        self.lock_path = self.dir / "engine.lock"
        self.info_path = self.dir / "engine.json"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ignore = self.dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ProjectBusy(self._describe_holder()) from None
        self._fd = fd

    def _describe_holder(self) -> str:
        info = read_json_object(self.info_path)
        return f"pid {info.get('pid')}, {info.get('url')}" if info else "pid unknown"

    def publish(self, url: str, config_path: Path | None) -> None:
        document = {"pid": os.getpid(), "url": url, "version": __version__,
                    "config": str(config_path) if config_path else None}
        write_json(self.info_path, document)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.info_path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
