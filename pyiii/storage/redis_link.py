"""One Redis connection set per adapter: a command client and a subscriber that survives outages.

The ``redis`` adapter must let its worker start while Redis is down, fail each call that needs
Redis with a message beginning ``redis unavailable:``, and come back on its own
(spec/workers.md §1.3). Commands therefore go straight to redis-py's pool, which opens a new
connection on the next call once the server answers again; the subscriber connection has its own
loop that reconnects with backoff (0.1 s doubling to 5 s) and subscribes again to every channel
that still has a listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .kv import StorageUnavailable

log = logging.getLogger("pyiii.storage.redis")

REDIS_KEYS = ("redis_url", "key_prefix", "connect_timeout_ms")
DEFAULT_URL = "redis://localhost:6379"
DEFAULT_CONNECT_TIMEOUT_MS = 5000
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0
# What "the server cannot be reached" looks like from redis-py and the socket layer.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)

T = TypeVar("T")


@dataclass(frozen=True)
class RedisConfig:
    url: str = DEFAULT_URL
    key_prefix: str = ""
    connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS


def redis_config(options: dict[str, Any]) -> RedisConfig:
    """Validate the ``redis`` keys of an adapter's ``config`` (other keys are the caller's)."""
    url = options.get("redis_url", DEFAULT_URL)
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("config.adapter.config.redis_url must be a redis:// , rediss:// or "
                         f"unix:// URL, got {url!r}")
    prefix = options.get("key_prefix", "")
    if not isinstance(prefix, str):
        raise ValueError(f"config.adapter.config.key_prefix must be a string, got {prefix!r}")
    timeout = options.get("connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
        raise ValueError("config.adapter.config.connect_timeout_ms must be an integer ≥ 1, "
                         f"got {timeout!r}")
    return RedisConfig(url, prefix, timeout)


class RedisUnavailable(StorageUnavailable):
    """Redis could not be reached; the message is what the caller sees."""

    def __init__(self, cause: BaseException) -> None:
        detail = str(cause) or type(cause).__name__
        super().__init__(f"redis unavailable: {detail}")


async def guarded(operation: Awaitable[T]) -> T:
    """Await a Redis command; an unreachable server becomes ``RedisUnavailable``."""
    try:
        return await operation
    except UNREACHABLE as exc:
        raise RedisUnavailable(exc) from exc


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN/PSUBSCRIBE pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisLink:
    """The command client, the engine's identity in claims, and the subscriber connection."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.owner = uuid.uuid4().hex  # who holds a claim or lock taken through this link
        # One retry on a fresh connection covers a pooled socket that died with the server;
        # without backoff so a call never waits longer than one connect timeout.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            config.url, socket_connect_timeout=config.connect_timeout_ms / 1000,
            retry=Retry(NoBackoff(), 1))
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}
        self._subscribed: set[bytes] = set()
        self._pubsub: Any = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def key(self, name: str) -> str:
        """A key or channel name under this adapter's ``key_prefix``."""
        return self.config.key_prefix + name

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        """Deliver every message of ``channel`` to ``handler`` (called on the event loop),
        now and after every reconnection, until ``unsubscribe``."""
        self._handlers[channel.encode()] = handler
        self._changed.set()
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())
        else:
            self._spawn(self._sync())

    def unsubscribe(self, channel: str) -> None:
        if self._handlers.pop(channel.encode(), None) is not None:
            self._spawn(self._sync())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync(self) -> None:
        """Bring the live subscriber connection in line with the wanted channels."""
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None:
                return  # the listener subscribes to everything when it (re)connects
            wanted = set(self._handlers)
            add, drop = wanted - self._subscribed, self._subscribed - wanted
            try:
                if add:
                    await pubsub.subscribe(*add)
                if drop:
                    await pubsub.unsubscribe(*drop)
                self._subscribed = wanted
            except Exception as exc:  # the listener notices the broken connection
                log.debug("redis subscription change deferred: %s", exc)

    async def _listen(self) -> None:
        delay = BACKOFF_FIRST_S
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                while not self._handlers:
                    self._changed.clear()
                    await self._changed.wait()
                async with self._lock:
                    self._subscribed = set(self._handlers)
                    await pubsub.subscribe(*self._subscribed)
                    self._pubsub = pubsub
                if delay > BACKOFF_FIRST_S:
                    log.info("redis subscriber reconnected to %s", self.config.url)
                delay = BACKOFF_FIRST_S
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                log.warning("redis subscriber: redis unavailable: %s; retrying in %.1f s",
                            exc, delay)
            except Exception:
                log.exception("redis subscriber failed; retrying in %.1f s", delay)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _deliver(self, channel: bytes, data: bytes) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(data)
        except Exception:  # one bad message never stops the subscriber
            log.exception("redis message on %r could not be handled", channel)

    # -- lifecycle --------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise ``RedisUnavailable`` unless the server answers (a hot swap checks this before
        moving work to a new adapter)."""
        await guarded(self.client.ping())

    async def close(self) -> None:
        pending = [t for t in (self._listener, *self._tasks) if t is not None]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._handlers.clear()
        with contextlib.suppress(Exception):
            await self.client.aclose()
