"""Watch config.yaml and iii.lock and call back once edits settle (spec/cli.md §1.5).

Polls the two files' (mtime, size, inode) every 100 ms: simple, works with editors that save by
atomic rename, and costs nothing measurable. The callback runs 300 ms after the last change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

log = logging.getLogger("pyiii.engine.reload")

POLL_S = 0.1
SETTLE_S = 0.3


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ConfigWatcher:
    def __init__(self, config_path: Path, on_change: Callable[[], Awaitable[None]]) -> None:
        self.paths = [config_path, config_path.parent / "iii.lock"]
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # stamp now, not when the task first runs: an edit saved right after start() (the
        # engine logs `ready` before the task gets the loop) must count as a change
        seen = [_stamp(p) for p in self.paths]
        self._task = asyncio.get_running_loop().create_task(self._watch(seen))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self, seen: list[tuple[int, int, int] | None]) -> None:
        changed_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(POLL_S)
            now = [_stamp(p) for p in self.paths]
            if now != seen:
                seen = now
                changed_at = loop.time()
            elif changed_at is not None and loop.time() - changed_at >= SETTLE_S:
                changed_at = None
                try:
                    await self.on_change()
                except Exception:
                    log.exception("reloading the configuration failed")
