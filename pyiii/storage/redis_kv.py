"""Redis key-value store: one hash per scope, field = key, value = JSON text.

State uses the reference layout ``<key_prefix>state:<scope>`` (spec/workers.md §2.4); the stream
worker passes its own hash naming and an index set of its groups (§7.6). ``set`` and ``delete``
are Lua scripts, so the previous value they return is exactly the one they replaced.
``update`` runs the shared update-operation code (pyiii/workers/update_ops.py) between WATCH and
MULTI/EXEC and starts again when another writer touched the hash meanwhile: every committed
update saw the value it replaced, and the operations keep one implementation (a Lua copy would
also round 64-bit integers through doubles).
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from redis.exceptions import WatchError

from .kv import Updater
from .redis_link import RedisConfig, RedisLink, glob_escape, guarded

# KEYS[1] hash, KEYS[2] optional index set; ARGV[1] field, ARGV[2] JSON, ARGV[3] index member
_SET = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[3]) end
return old
"""
# KEYS[1] hash, KEYS[2] optional index set; ARGV[1] field, ARGV[2] index member
_DELETE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if KEYS[2] and redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
end
return old
"""


def _decode(raw: bytes | None) -> tuple[bool, Any]:
    return (False, None) if raw is None else (True, orjson.loads(raw))


class RedisKV:
    """``hash_name`` maps a scope to its hash (without the prefix); with ``index`` (a key name
    without the prefix) the scopes that hold values are kept in that set, else ``list_groups``
    scans for hashes named ``state:*``."""

    def __init__(self, config: RedisConfig, hash_name: Callable[[str], str] | None = None,
                 index: str | None = None) -> None:
        self.link = RedisLink(config)
        self._hash_name = hash_name or (lambda scope: "state:" + scope)
        self._index = self.link.key(index) if index is not None else None
        self._set = self.link.client.register_script(_SET)
        self._delete = self.link.client.register_script(_DELETE)

    def _keys(self, scope: str) -> list[str]:
        keys = [self.link.key(self._hash_name(scope))]
        if self._index is not None:
            keys.append(self._index)
        return keys

    async def get(self, scope: str, key: str) -> tuple[bool, Any]:
        return _decode(await guarded(self.link.client.hget(self._keys(scope)[0], key)))

    async def set(self, scope: str, key: str, value: Any) -> tuple[bool, Any]:
        old = await guarded(self._set(keys=self._keys(scope), args=[key, orjson.dumps(value),
                                                                     scope]))
        return _decode(old)

    async def delete(self, scope: str, key: str) -> tuple[bool, Any]:
        return _decode(await guarded(self._delete(keys=self._keys(scope), args=[key, scope])))

    async def update(self, scope: str, key: str, fn: Updater) -> tuple[bool, Any, Any, bool]:
        return await guarded(self._update(scope, key, fn))

    async def _update(self, scope: str, key: str, fn: Updater) -> tuple[bool, Any, Any, bool]:
        keys = self._keys(scope)
        async with self.link.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(keys[0])
                    exists, old = _decode(await pipe.hget(keys[0], key))
                    new, write = fn(exists, old)
                    if not write:
                        await pipe.unwatch()
                        return exists, old, new, False
                    pipe.multi()
                    pipe.hset(keys[0], key, orjson.dumps(new))
                    if self._index is not None:
                        pipe.sadd(self._index, scope)
                    await pipe.execute()
                    return exists, old, new, True
                except WatchError:
                    continue  # another writer changed the hash: read and compute again
                finally:
                    await pipe.reset()

    async def list(self, scope: str) -> list[Any]:
        values = await guarded(self.link.client.hvals(self._keys(scope)[0]))
        return [orjson.loads(v) for v in values]

    async def list_groups(self) -> list[str]:
        return await guarded(self._groups())

    async def _groups(self) -> list[str]:
        client = self.link.client
        if self._index is not None:
            return sorted(m.decode() for m in await client.smembers(self._index))
        head = self.link.key("state:")
        found = {name[len(head.encode()):].decode()
                 async for name in client.scan_iter(match=glob_escape(head) + "*", count=1000,
                                                    _type="HASH")}
        return sorted(found)

    async def close(self) -> None:
        await self.link.close()
