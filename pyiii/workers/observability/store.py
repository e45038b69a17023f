"""The bounded log store behind ``engine::logs::list`` (spec/workers.md §10). Pure: no I/O.

Records are kept in arrival order, at most ``max_count`` of them, none that arrived more than
``retention_s`` seconds ago. The store is fed from the engine's logging path, which may run on
another thread than the worker's handlers, hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class LogQuery:
    """The filters of ``engine::logs::list``; times are Unix milliseconds."""

    start_time: int | None = None
    end_time: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    severity_min: int | None = None
    severity_text: str | None = None
    offset: int = 0
    limit: int = 100

    def matches(self, record: dict[str, Any]) -> bool:
        millis = record["timestamp_unix_nano"] / 1_000_000
        if self.start_time is not None and millis < self.start_time:
            return False
        if self.end_time is not None and millis > self.end_time:
            return False
        if self.trace_id is not None and record["trace_id"] != self.trace_id:
            return False
        if self.span_id is not None and record["span_id"] != self.span_id:
            return False
        if self.severity_min is not None and record["severity_number"] < self.severity_min:
            return False
        if self.severity_text is not None and \
                record["severity_text"].lower() != self.severity_text.lower():
            return False
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "span_id": self.span_id,
                "severity_min": self.severity_min, "severity_text": self.severity_text,
                "start_time": self.start_time, "end_time": self.end_time,
                "offset": self.offset, "limit": self.limit}


class LogStore:
    def __init__(self, max_count: int, retention_s: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._retention_s = retention_s
        self._items: deque[tuple[float, dict[str, Any]]] = deque(maxlen=max_count)

    def configure(self, max_count: int, retention_s: int) -> None:
        """New limits, applied at once; the newest records are the ones kept."""
        with self._lock:
            self._retention_s = retention_s
            if max_count != self._items.maxlen:
                self._items = deque(self._items, maxlen=max_count)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._items.append((self._clock(), record))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _expire(self) -> None:
        cutoff = self._clock() - self._retention_s
        items = self._items
        while items and items[0][0] < cutoff:
            items.popleft()

    def count(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def query(self, query: LogQuery) -> tuple[int, list[dict[str, Any]]]:
        """``(total matching, the requested page of them, newest first)``."""
        with self._lock:
            self._expire()
            found = [record for _, record in reversed(self._items) if query.matches(record)]
        return len(found), found[query.offset:query.offset + query.limit]
