"""The HTTP listener (rebind on reload) and the concurrency limit (spec/workers.md §3.1, §3.3).

aiohttp sets TCP_NODELAY on every accepted connection; the listening socket gets it too.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import Any, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("pyiii.workers.http")

GRACE_S = 10.0  # in-flight requests on a replaced listener get this long


class Limiter:
    """A semaphore whose size can change while requests wait (live reload)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)

    def try_acquire(self) -> bool:
        """Take a free slot at once if there is one (no coroutine on the common path)."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self, timeout: float) -> bool:
        """Take a slot within ``timeout`` seconds; False when the wait ran out."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), max(0.0, timeout))
            return True
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return True  # granted at the last moment
            waiter.cancel()
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            waiter.cancel()
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Listener:
    """One bound address; ``rebind`` binds the new address first and keeps the old one on
    failure."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.web: web.Server | None = None
        self.server: asyncio.base_events.Server | None = None
        self.host: str | None = None
        self.port: int | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def _bind(self, host: str, port: int) -> tuple[web.Server, Any, int]:
        loop = asyncio.get_running_loop()
        web_server = web.Server(self.handler, access_log=None)
        server = await loop.create_server(web_server, host, port, reuse_address=True)
        bound = port
        for sock in server.sockets:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            bound = sock.getsockname()[1]
        return web_server, server, bound

    async def start(self, host: str, port: int) -> None:
        self.web, self.server, self.port = await self._bind(host, port)
        self.host = host
        log.info("iii-http listening on http://%s:%s", host, self.port)

    async def rebind(self, host: str, port: int) -> None:
        """Raises OSError (old listener untouched) when the new address cannot be bound."""
        new_web, new_server, bound = await self._bind(host, port)
        old_web, old_server = self.web, self.server
        self.web, self.server, self.host, self.port = new_web, new_server, host, bound
        log.info("iii-http now listening on http://%s:%s", host, bound)
        if old_server is not None and old_web is not None:
            task = asyncio.ensure_future(self._retire(old_web, old_server))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, web_server: web.Server, server: Any) -> None:
        server.close()
        web_server.pre_shutdown()  # idle keep-alive connections close now, busy ones after
        try:
            await web_server.shutdown(GRACE_S)
        except Exception as exc:
            log.info("iii-http: closing the old listener: %r", exc)
        await server.wait_closed()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        if self.server is not None and self.web is not None:
            self.server.close()
            self.web.pre_shutdown()
            try:
                await self.web.shutdown(1.0)
            except Exception:
                pass
            await self.server.wait_closed()
        self.server = self.web = None
