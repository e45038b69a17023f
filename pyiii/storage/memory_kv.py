"""In-process key-value store: dicts keep first-write order, which ``list`` promises."""

from __future__ import annotations

from typing import Any

from .kv import Updater

_MISSING = object()


class MemoryKV:
    def __init__(self) -> None:
        self._scopes: dict[str, dict[str, Any]] = {}

    async def get(self, scope: str, key: str) -> tuple[bool, Any]:
        value = self._scopes.get(scope, {}).get(key, _MISSING)
        return (False, None) if value is _MISSING else (True, value)

    async def set(self, scope: str, key: str, value: Any) -> tuple[bool, Any]:
        items = self._scopes.setdefault(scope, {})
        old = items.get(key, _MISSING)
        items[key] = value
        return (False, None) if old is _MISSING else (True, old)

    async def delete(self, scope: str, key: str) -> tuple[bool, Any]:
        items = self._scopes.get(scope)
        old = items.pop(key, _MISSING) if items is not None else _MISSING
        if items is not None and not items:
            del self._scopes[scope]
        return (False, None) if old is _MISSING else (True, old)

    async def update(self, scope: str, key: str, fn: Updater) -> tuple[bool, Any, Any, bool]:
        # no await between read and write: atomic in the event loop
        items = self._scopes.setdefault(scope, {})
        old = items.get(key, _MISSING)
        exists = old is not _MISSING
        new, write = fn(exists, old if exists else None)
        if write:
            items[key] = new
        elif not items:
            del self._scopes[scope]
        return exists, (old if exists else None), new, write

    async def list(self, scope: str) -> list[Any]:
        return list(self._scopes.get(scope, {}).values())

    async def list_groups(self) -> list[str]:
        return sorted(self._scopes)

    async def close(self) -> None:
        return None
