"""Cluster-wide change events and the per-binding claim (spec/workers.md §1.7).

With ``redis`` adapters every change is published on ``<key_prefix><name>`` (e.g.
``state::events``) with a change id; every engine, the writer included, receives it and offers it
to its own bindings. Before invoking a binding an engine claims
``<key_prefix>trigger_claim:<change id>:<binding key>`` with ``SET NX PX 60000``; only the
claimant invokes, so identical bindings held by several engines fire once per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from typing import Any, Callable

import orjson

from .redis_link import UNREACHABLE, RedisLink

log = logging.getLogger("pyiii.storage.redis")

CLAIM_TTL_MS = 60_000


def binding_key(namespace: str | None, function_id: str, trigger_type: str, config: Any) -> str:
    """Digest of (namespace, function_id, trigger type, canonical config JSON): the same for a
    binding however many engines (and whatever binding ids) hold it."""
    canonical = orjson.dumps(config, option=orjson.OPT_SORT_KEYS).decode()
    raw = orjson.dumps([namespace or "default", function_id, trigger_type, canonical])
    return hashlib.sha256(raw).hexdigest()


class ChangeFeed:
    """Publishes this engine's changes in order and hands every engine's changes to
    ``on_change(change_id, payload)``."""

    def __init__(self, link: RedisLink, name: str,
                 on_change: Callable[[str, Any], None]) -> None:
        self.link = link
        self.channel = link.key(name)
        self.on_change = on_change
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.link.subscribe(self.channel, self._received)

    def publish(self, payload: Any) -> None:
        """Queue a change (encoded now, so bad data fails the caller); one sender task keeps
        this engine's changes in the order they were made."""
        body = orjson.dumps({"change_id": uuid.uuid4().hex, "payload": payload})
        self._outbox.put_nowait(body)
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_loop())

    async def _send_loop(self) -> None:
        while True:
            body = await self._outbox.get()
            try:
                await self.link.client.publish(self.channel, body)
            except UNREACHABLE as exc:  # at-most-once: the write stands, the event is lost
                log.warning("change event on %s not published: redis unavailable: %s",
                            self.channel, exc)
            except Exception:
                log.exception("change event on %s not published", self.channel)
            finally:
                self._outbox.task_done()

    def _received(self, data: bytes) -> None:
        message = orjson.loads(data)
        self.on_change(message["change_id"], message["payload"])

    async def claim(self, change_id: str, key: str) -> bool:
        """True if this engine is the one to invoke binding ``key`` for this change."""
        name = self.link.key(f"trigger_claim:{change_id}:{key}")
        try:
            return bool(await self.link.client.set(name, self.link.owner, nx=True,
                                                   px=CLAIM_TTL_MS))
        except UNREACHABLE as exc:
            log.warning("trigger claim %s failed: redis unavailable: %s", name, exc)
            return False

    async def close(self) -> None:
        self.link.unsubscribe(self.channel)
        if self._sender is not None:
            # let queued changes go out briefly, then stop
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._outbox.join(), 1.0)
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
