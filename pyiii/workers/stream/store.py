"""Stream items on the shared key-value adapters (pyiii/storage/kv.py).

An item ``stream → group → item`` is stored at ``scope = ["<stream>","<group>"]`` (the JSON
text of the pair), ``key = item_id``. JSON rather than a separator character keeps every
(stream, group) pair distinct whatever characters the names hold, so no input can make two
groups share storage; ``list_groups``/``list_all`` decode the scopes back. The adapters'
per-scope first-write order gives ``stream::list`` the order ``state::list`` has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from ...storage.kv import KeyValueStore, Updater, open_kv
from ...storage.redis_kv import RedisKV
from ...storage.redis_link import redis_config
from ..settings import Adapter
from .config import DEFAULT_FILE


def scope_of(stream: str, group: str) -> str:
    return orjson.dumps([stream, group]).decode()


def redis_hash(scope: str) -> str:
    """The reference layout ``stream:<stream>:<group>`` (the prefix is added by the adapter);
    the group index keeps ``list_groups`` exact whatever ``:`` the names hold."""
    pair = _decode(scope)
    assert pair is not None, scope
    return f"stream:{pair[0]}:{pair[1]}"


REDIS_INDEX = "stream_groups"  # set of the scopes (JSON pairs) that hold items


def _decode(scope: str) -> tuple[str, str] | None:
    try:
        pair = orjson.loads(scope)
    except orjson.JSONDecodeError:
        return None
    if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
        return pair[0], pair[1]
    return None


class StreamStore:
    def __init__(self, kv: KeyValueStore) -> None:
        self.kv = kv

    @classmethod
    def open(cls, adapter: Adapter, project_dir: Path) -> "StreamStore":
        if adapter.name == "redis":
            return cls(RedisKV(redis_config(adapter.config), redis_hash, REDIS_INDEX))
        return cls(open_kv(adapter.name, adapter.config, project_dir, DEFAULT_FILE))

    async def get(self, stream: str, group: str, item: str) -> tuple[bool, Any]:
        return await self.kv.get(scope_of(stream, group), item)

    async def set(self, stream: str, group: str, item: str, value: Any) -> tuple[bool, Any]:
        return await self.kv.set(scope_of(stream, group), item, value)

    async def delete(self, stream: str, group: str, item: str) -> tuple[bool, Any]:
        return await self.kv.delete(scope_of(stream, group), item)

    async def update(self, stream: str, group: str, item: str,
                     fn: Updater) -> tuple[bool, Any, Any, bool]:
        return await self.kv.update(scope_of(stream, group), item, fn)

    async def list(self, stream: str, group: str) -> list[Any]:
        return await self.kv.list(scope_of(stream, group))

    async def groups(self) -> dict[str, list[str]]:
        """Every stream that holds items, with its sorted group ids."""
        found: dict[str, list[str]] = {}
        for scope in await self.kv.list_groups():
            pair = _decode(scope)
            if pair is not None:
                found.setdefault(pair[0], []).append(pair[1])
        return {stream: sorted(groups) for stream, groups in sorted(found.items())}

    async def list_groups(self, stream: str) -> list[str]:
        return (await self.groups()).get(stream, [])

    async def close(self) -> None:
        await self.kv.close()
