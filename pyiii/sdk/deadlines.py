"""Call timeouts without one loop timer per call.

Scheduling and cancelling a ``TimerHandle`` for every call costs about as much as the rest of
an in-process call. Calls made with the same timeout expire in the order they were made, so
each distinct timeout keeps its calls in an insertion-ordered dict and one timer armed for the
oldest of them; an answered call is just removed from its dict. When the timer fires, every
call whose deadline passed expires and the timer is re-armed for the next oldest.
"""

from __future__ import annotations

import asyncio
from typing import Callable

__all__ = ["Deadlines"]


class _Bucket:
    __slots__ = ("timeout_ms", "entries", "handle")

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.entries: dict[str, float] = {}  # invocation id → loop time it expires at
        self.handle: asyncio.TimerHandle | None = None


class Deadlines:
    """``add`` when a call starts, ``discard`` when it ends; ``expire(id, timeout_ms)`` is
    called for calls still registered when their time is up."""

    __slots__ = ("_loop", "_expire", "_buckets")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[str, int], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._buckets: dict[int, _Bucket] = {}

    def add(self, inv_id: str, timeout_ms: int) -> None:
        bucket = self._buckets.get(timeout_ms)
        if bucket is None:
            bucket = self._buckets[timeout_ms] = _Bucket(timeout_ms)
        when = self._loop.time() + timeout_ms / 1000
        bucket.entries[inv_id] = when
        if bucket.handle is None:
            bucket.handle = self._loop.call_at(when, self._fire, bucket)

    def discard(self, inv_id: str, timeout_ms: int) -> None:
        bucket = self._buckets.get(timeout_ms)
        if bucket is not None:
            bucket.entries.pop(inv_id, None)

    def clear(self) -> None:
        for bucket in self._buckets.values():
            if bucket.handle is not None:
                bucket.handle.cancel()
        self._buckets.clear()

    def _fire(self, bucket: _Bucket) -> None:
        bucket.handle = None
        entries = bucket.entries
        now = self._loop.time()
        expired: list[str] = []
        for inv_id, when in entries.items():
            if when > now:
                bucket.handle = self._loop.call_at(when, self._fire, bucket)
                break
            expired.append(inv_id)
        for inv_id in expired:
            del entries[inv_id]
        if bucket.handle is None and self._buckets.get(bucket.timeout_ms) is bucket:
            del self._buckets[bucket.timeout_ms]  # idle: a later call makes a fresh one
        for inv_id in expired:
            self._expire(inv_id, bucket.timeout_ms)
