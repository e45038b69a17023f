"""A managed worker's log file: appending, rotation, supervisor events, reading (spec/cli.md §9.3).

Lines are numbered as they are written during this engine run; a reader's cursor is the number
of the last line it saw, so ``worker::logs`` followers get every line once, with no gap or
repeat, whatever the file rotation did in between. Lines written before this engine started
are read back from the files.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import os
import sys
from pathlib import Path

MEMORY_LINES = 20000  # kept for cursor readers; older lines are only in the files


def iso_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def read_tail(path: Path, keep: int, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` and its rotations (oldest file first)."""
    lines: list[str] = []
    for i in range(keep, -1, -1):
        part = path if i == 0 else path.with_name(f"{path.name}.{i}")
        try:
            with open(part, "rb") as f:
                lines.extend(f.read().decode("utf-8", "replace").splitlines())
        except OSError:
            continue
        if count > 0:
            del lines[:-count]
    return lines[-count:] if count > 0 else []


class WorkerLog:
    def __init__(self, path: Path | None, max_bytes: int, keep: int, echo_prefix: str | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.echo_prefix = echo_prefix
        self.seq = 0
        self.recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=MEMORY_LINES)
        self._changed = asyncio.Event()
        self._file = None
        self._size = 0

    def configure(self, max_bytes: int, keep: int, echo_prefix: str | None) -> None:
        self.max_bytes, self.keep, self.echo_prefix = max_bytes, keep, echo_prefix

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def write(self, line: str, echo: bool = True) -> None:
        """Append one worker output line (no trailing newline)."""
        data = (line + "\n").encode("utf-8", "replace")
        if self.path is not None:  # None: --use-default-config writes no files
            if self._file is None:
                self._open()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            self._size += len(data)
        self.seq += 1
        self.recent.append((self.seq, line))
        self._changed.set()
        if echo and self.echo_prefix is not None:
            try:
                sys.stderr.write(f"{self.echo_prefix}{line}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        if self.path is not None and self._size >= self.max_bytes:
            self._rotate()

    def event(self, text: str) -> None:
        """A supervisor event line: ``[iii] <ISO time> <text>`` (not echoed: the engine logs it)."""
        self.write(f"[iii] {iso_now()} {text}", echo=False)

    def _rotate(self) -> None:
        """Shift ``name.1``..``name.keep`` and start an empty ``name``.

        The live file is never missing, not even for a moment: the full file gets its second
        name (``name.1``) by a hard link and a fresh file is renamed over ``name``, so a reader
        listing or opening the logs mid-rotation always finds the current one."""
        assert self.path is not None
        if self._file is not None:
            self._file.close()
            self._file = None
        name = self.path.name
        for i in range(self.keep, 1, -1):
            older, newer = self.path.with_name(f"{name}.{i}"), self.path.with_name(f"{name}.{i - 1}")
            if i == self.keep:
                older.unlink(missing_ok=True)
            if newer.exists():
                os.replace(newer, older)
        fresh = self.path.with_name(f".{name}.new")
        self._file = open(fresh, "wb")
        if self.keep >= 1:
            first = self.path.with_name(f"{name}.1")
            first.unlink(missing_ok=True)
            try:
                os.link(self.path, first)
            except FileNotFoundError:
                pass
            except OSError:  # a filesystem without hard links: a plain rename, with a short gap
                os.replace(self.path, first)
        os.replace(fresh, self.path)
        self._size = 0
        stale = self.keep + 1  # a smaller `keep` than last time: drop the extra rotations
        while self.path.with_name(f"{name}.{stale}").exists():
            self.path.with_name(f"{name}.{stale}").unlink(missing_ok=True)
            stale += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def tail(self, count: int) -> list[str]:
        if self.path is None:
            return [text for _, text in list(self.recent)[-count:]] if count > 0 else []
        return read_tail(self.path, self.keep, count)

    async def read(self, count: int, cursor: int | None, wait_ms: int) -> tuple[list[str], int]:
        """Lines after ``cursor`` (at most ``count``; all of them when following), or the last
        ``count`` lines when no cursor is given; waits up to ``wait_ms`` for a first new line."""
        if cursor is None or cursor > self.seq:
            return self.tail(count), self.seq
        if cursor == self.seq and wait_ms > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), wait_ms / 1000)
            except asyncio.TimeoutError:
                pass
        lines = [text for seq, text in self.recent if seq > cursor]
        return lines, self.seq
