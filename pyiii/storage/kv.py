"""The key-value interface of the state and stream workers, and how to pick an adapter.

Values are JSON documents addressed by ``(scope, key)``. ``update`` takes a pure function of the
current value so each adapter can run it inside its own atomic section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

# fn(exists, current) -> (new value, write?)
Updater = Callable[[bool, Any], tuple[Any, bool]]


class StorageUnavailable(Exception):
    """The backing server cannot be reached; the message is shown to the caller as it is
    (e.g. ``redis unavailable: ...``), under the function's own error code."""


class KeyValueStore(Protocol):
    async def get(self, scope: str, key: str) -> tuple[bool, Any]: ...

    async def set(self, scope: str, key: str, value: Any) -> tuple[bool, Any]:
        """Store ``value``; return (existed before, previous value)."""

    async def delete(self, scope: str, key: str) -> tuple[bool, Any]: ...

    async def update(self, scope: str, key: str, fn: Updater) -> tuple[bool, Any, Any, bool]:
        """Atomically: (existed, old, new, written)."""

    async def list(self, scope: str) -> list[Any]: ...

    async def list_groups(self) -> list[str]: ...

    async def close(self) -> None: ...


def open_kv(adapter: str, config: dict[str, Any], project_dir: Path, default_file: str) -> KeyValueStore:
    if adapter == "memory":
        from .memory_kv import MemoryKV

        return MemoryKV()
    if adapter == "sqlite":
        from .sqlite_kv import SqliteKV

        from .sqlite_db import db_path

        return SqliteKV(db_path(config, project_dir, default_file),
                        synchronous=config.get("synchronous", "normal"))
    if adapter == "redis":
        from .redis_kv import RedisKV
        from .redis_link import redis_config

        return RedisKV(redis_config(config))
    raise ValueError(f"adapter '{adapter}' is not available")
