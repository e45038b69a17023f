"""The function registry: one owner per ``(namespace, function_id)``.

Pure bookkeeping, no I/O: the core decides who may register; this table answers lookups
quickly (a dict hit on the invocation path) and remembers which namespaces hold an id so a
miss can say where the function lives instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .connection import Connection

Key = tuple[str, str]  # (namespace, function_id)


@dataclass(slots=True, eq=False)
class FunctionEntry:
    function_id: str
    namespace: str
    owner: Connection | None  # None: implemented by the engine itself
    description: str | None = None
    request_format: Any = None
    response_format: Any = None
    metadata: Any = None
    invocation: Any = None  # HttpInvocation for HTTP-invoked functions (§8)
    engine_handler: Callable[..., Any] | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.function_id)

    @property
    def internal(self) -> bool:
        return isinstance(self.metadata, dict) and self.metadata.get("internal") is True

    @property
    def worker_name(self) -> str:
        if self.owner is None:
            return "engine"
        return self.owner.name or self.function_id.split("::", 1)[0]


@dataclass
class FunctionTable:
    _entries: dict[Key, FunctionEntry] = field(default_factory=dict)
    _namespaces: dict[str, set[str]] = field(default_factory=dict)
    _owned: dict[str, set[Key]] = field(default_factory=dict)  # worker id → keys
    version: int = 0  # bumped whenever the set of keys changes

    def get(self, namespace: str, function_id: str) -> FunctionEntry | None:
        return self._entries.get((namespace, function_id))

    def namespaces_of(self, function_id: str) -> list[str]:
        return sorted(self._namespaces.get(function_id, ()))

    def add(self, entry: FunctionEntry) -> None:
        key = entry.key
        previous = self._entries.get(key)
        if previous is None:
            self.version += 1
        elif previous.owner is not None:
            self._owned.get(previous.owner.worker_id, set()).discard(key)
        self._entries[key] = entry
        self._namespaces.setdefault(entry.function_id, set()).add(entry.namespace)
        if entry.owner is not None:
            self._owned.setdefault(entry.owner.worker_id, set()).add(key)

    def remove(self, entry: FunctionEntry) -> bool:
        """Remove ``entry`` if it is still the one registered under its key."""
        key = entry.key
        if self._entries.get(key) is not entry:
            return False
        del self._entries[key]
        spaces = self._namespaces.get(entry.function_id)
        if spaces is not None:
            spaces.discard(entry.namespace)
            if not spaces:
                del self._namespaces[entry.function_id]
        if entry.owner is not None:
            self._owned.get(entry.owner.worker_id, set()).discard(key)
        self.version += 1
        return True

    def owned_by(self, conn: Connection) -> list[FunctionEntry]:
        keys = self._owned.get(conn.worker_id, ())
        return [self._entries[k] for k in list(keys) if k in self._entries]

    def count_owned(self, conn: Connection) -> int:
        return len(self._owned.get(conn.worker_id, ()))

    def forget_owner(self, conn: Connection) -> None:
        self._owned.pop(conn.worker_id, None)

    def __iter__(self) -> Iterator[FunctionEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> set[Key]:
        return set(self._entries)
