"""The in-process transport: a worker in the engine's event loop, no sockets, no JSON.

Frames are the same dict objects on both sides, and both directions are direct calls: worker →
engine calls the core (so ordering is exactly the call order); engine → worker calls the SDK's
dispatch function once the SDK runs the link (before that, frames wait in a queue: the greeting). Payload objects are shared, not copied: a handler that
mutates its input mutates the caller's object, as documented for in-process workers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from ..protocol import TransportClosed
from .connection import Connection

if TYPE_CHECKING:
    from .core import Engine

_CLOSED = None
log = logging.getLogger("pyiii.engine.inprocess")


class InProcessConnection(Connection):
    transport = "in-process"
    uuid_ids = True

    def __init__(self, engine: "Engine") -> None:
        super().__init__(ip_address=None)
        self.engine = engine
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.recipient_limit = 1 << 62  # no wire, no size limit (§1.7)
        self.deliver: Callable[[dict[str, Any]], None] | None = None
        self.ended = asyncio.Event()

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing and frame.get("type") != "registrationrejected":
            return
        if self.deliver is not None:
            try:
                self.deliver(frame)
            except Exception:  # the worker's bug must not fail the sender's frame
                log.exception("in-process worker %s failed to take a %s frame", self.label(),
                              frame.get("type"))
        else:
            self.inbox.put_nowait(frame)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.deliver = None
        self.inbox.put_nowait(_CLOSED)
        self.ended.set()


class LocalTransport:
    """SDK-side end of an in-process connection (the SDK's ``Transport`` protocol)."""

    def __init__(self, engine: "Engine") -> None:
        self._conn = InProcessConnection(engine)
        self._engine = engine
        self._closed = False
        engine.accept(self._conn)

    async def send(self, frame: dict[str, Any]) -> None:
        if self._closed or self._conn.closing:
            raise TransportClosed(None, "in-process connection closed")
        self._engine.handle(self._conn, frame)

    def send_nowait(self, frame: dict[str, Any]) -> None:
        if self._closed or self._conn.closing:
            raise TransportClosed(None, "in-process connection closed")
        self._engine.handle(self._conn, frame)

    async def recv(self) -> dict[str, Any]:
        frame = await self._conn.inbox.get()
        if frame is _CLOSED:
            self._closed = True
            raise TransportClosed(None, "in-process connection closed by the engine")
        return frame

    async def run(self, dispatch: Callable[[dict[str, Any]], None]) -> None:
        """Deliver every later frame by calling ``dispatch`` directly, until the link ends."""
        conn = self._conn
        while not conn.inbox.empty():
            frame = conn.inbox.get_nowait()
            if frame is _CLOSED:
                self._closed = True
                raise TransportClosed(None, "in-process connection closed by the engine")
            dispatch(frame)
        conn.deliver = dispatch
        await conn.ended.wait()
        self._closed = True
        raise TransportClosed(None, "in-process connection closed")

    async def close(self) -> None:
        self._conn.deliver = None
        self._conn.ended.set()
        if not self._closed:
            self._closed = True
            self._engine.disconnect(self._conn)


def local_connector(engine: "Engine") -> Any:
    """A connector for ``pyiii.sdk.InitOptions(connector=...)`` bound to ``engine``."""

    async def connect() -> LocalTransport:
        return LocalTransport(engine)

    async def open_channel(url: str, headers: Any = None) -> Any:
        # channel ends of in-process workers skip the loopback WebSocket too
        from .channel_pipe import open_local_end

        return open_local_end(engine.channels, url)

    connect.open_channel = open_channel  # type: ignore[attr-defined]
    # in-process workers create channels without an engine::channels::create round trip
    connect.channel_hub = engine.channels  # type: ignore[attr-defined]
    return connect
