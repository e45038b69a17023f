"""Per-tick locks of the cron worker (spec/workers.md §5.3).

A claim is a lock on (job key, tick) that is never released early: it expires at
tick time + ``lock_ttl_ms``. Whoever inserts the lock first runs the tick; everyone else skips.

- ``memory``: a dict in this process (one engine).
- ``sqlite``: table ``cron_locks(key primary key, owner, expires_at)`` in a WAL-mode file shared
  by the engines of one host; a claim deletes expired rows and inserts with ``INSERT OR IGNORE``
  inside one ``BEGIN IMMEDIATE`` transaction, so the insert decides.
- ``redis``: ``SET <key_prefix>cron_lock:<job key>:<tick> <owner> NX PXAT <expiry>``, for engines
  anywhere; Redis decides, and expires the lock itself.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from ...storage.redis_link import UNREACHABLE, RedisLink, redis_config
from ...storage.sqlite_db import atomic, db_path, open_db


log = logging.getLogger("pyiii.workers.cron")


class LockStore(Protocol):
    async def claim(self, job_key: str, tick: int, owner: str, expires_at_ms: int) -> bool:
        """Take the lock of (job_key, tick) unless someone holds it; True if this caller got it."""

    async def close(self) -> None: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryLocks:
    PRUNE_EVERY_MS = 1000

    def __init__(self) -> None:
        self.locks: dict[str, tuple[str, int]] = {}
        self._pruned_at = 0

    async def claim(self, job_key: str, tick: int, owner: str, expires_at_ms: int) -> bool:
        now = _now_ms()
        if now - self._pruned_at >= self.PRUNE_EVERY_MS:
            self._pruned_at = now
            for key in [k for k, (_, expiry) in self.locks.items() if expiry <= now]:
                del self.locks[key]
        key = f"{job_key}:{tick}"
        held = self.locks.get(key)
        if held is not None and held[1] > now:
            return False
        self.locks[key] = (owner, expires_at_ms)
        return True

    async def close(self) -> None:
        self.locks.clear()


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cron_locks ("
    " key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS cron_locks_expiry ON cron_locks (expires_at)",
)


class SqliteLocks:
    """Statements run on the event-loop thread, as in the state worker's SQLite store: a claim is
    one short transaction per tick and job."""

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        self.path = path
        self.db = open_db(path, synchronous)
        for statement in _SCHEMA:
            self.db.execute(statement)

    async def claim(self, job_key: str, tick: int, owner: str, expires_at_ms: int) -> bool:
        key = f"{job_key}:{tick}"

        def body() -> int:
            self.db.execute("DELETE FROM cron_locks WHERE expires_at <= ?", (_now_ms(),))
            return self.db.execute(
                "INSERT OR IGNORE INTO cron_locks (key, owner, expires_at) VALUES (?, ?, ?)",
                (key, owner, expires_at_ms)).rowcount

        return atomic(self.db, body) == 1

    async def close(self) -> None:
        self.db.close()


class RedisLocks:
    def __init__(self, link: RedisLink) -> None:
        self.link = link

    async def claim(self, job_key: str, tick: int, owner: str, expires_at_ms: int) -> bool:
        name = self.link.key(f"cron_lock:{job_key}:{tick}")
        try:
            return bool(await self.link.client.set(name, owner, nx=True, pxat=expires_at_ms))
        except UNREACHABLE as exc:  # nobody can claim: the tick is skipped, not run twice
            log.warning("cron tick lock %s not taken: redis unavailable: %s", name, exc)
            return False

    async def close(self) -> None:
        await self.link.close()


def open_locks(adapter: str, config: dict[str, Any], project_dir: Path) -> LockStore:
    if adapter == "memory":
        return MemoryLocks()
    if adapter == "sqlite":
        return SqliteLocks(db_path(config, project_dir, "data/cron.db"),
                           synchronous=config.get("synchronous", "normal"))
    if adapter == "redis":
        return RedisLocks(RedisLink(redis_config(config)))
    raise ValueError(f"adapter '{adapter}' is not available")
