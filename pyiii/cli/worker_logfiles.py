"""Reading `.iii/logs/<name>.log[.N]` without an engine (spec/cli.md §4.7, §9.3).

Logs outlive the engine, so `iii worker logs` reads the files directly when nothing answers,
and `-f` follows the live file across rotations (the supervisor renames `.log` to `.log.1` and
starts a new one): the open descriptor of the renamed file is drained before switching, so no
line is lost or printed twice.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

_POLL_S = 0.1


def log_files(folder: Path, name: str) -> list[Path]:
    """The worker's log files, oldest first (`.log.3`, `.log.2`, `.log.1`, `.log`)."""
    if not folder.is_dir():
        return []
    rotated = []
    pattern = re.compile(re.escape(name) + r"\.log\.(\d+)$")
    for path in folder.iterdir():
        m = pattern.match(path.name)
        if m:
            rotated.append((int(m.group(1)), path))
    files = [p for _, p in sorted(rotated, reverse=True)]
    live = folder / f"{name}.log"
    if live.is_file():
        files.append(live)
    return files


def tail_lines(files: list[Path], count: int) -> list[str]:
    """The last `count` lines across the files, oldest first."""
    if count <= 0:
        return []
    last: deque[str] = deque(maxlen=count)
    for path in files:
        try:
            with open(path, "r", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    last.append(line.rstrip("\r\n"))
        except OSError:
            continue
    return list(last)


def follow_file(path: Path, emit: Callable[[list[str]], None], stop: Callable[[], bool] = lambda: False) -> None:
    """Print lines appended to `path` from its current end, across renames, until `stop()`
    (or Ctrl-C)."""
    fh = None
    inode = None
    pending = ""
    if path.exists():
        fh = open(path, "r", encoding="utf-8", errors="replace")
        fh.seek(0, os.SEEK_END)
        inode = os.fstat(fh.fileno()).st_ino
    while not stop():
        if fh is not None:
            chunk = fh.read()
            if chunk:
                pending += chunk
                *complete, pending = pending.split("\n")
                if complete:
                    emit([line.rstrip("\r") for line in complete])
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current is not None and current != inode:
            if fh is not None:  # drain the renamed file before switching to the new one
                rest = pending + fh.read()
                fh.close()
                lines = [line.rstrip("\r") for line in rest.split("\n") if line]
                if lines:
                    emit(lines)
                pending = ""
            fh = open(path, "r", encoding="utf-8", errors="replace")
            inode = current
            continue
        time.sleep(_POLL_S)
    if fh is not None:
        fh.close()
