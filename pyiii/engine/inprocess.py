"""The in-process transport: a worker in the engine's event loop, no sockets, no JSON.

Frames are the same dict objects on both sides. Worker → engine is a direct call into the
core (so ordering is exactly the call order); engine → worker goes through an asyncio queue
that the SDK's receive loop drains. Payload objects are shared, not copied: a handler that
mutates its input mutates the caller's object, as documented for in-process workers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..protocol import TransportClosed
from .connection import Connection

if TYPE_CHECKING:
    from .core import Engine

_CLOSED = None


class InProcessConnection(Connection):
    transport = "in-process"

    def __init__(self, engine: "Engine") -> None:
        super().__init__(ip_address=None)
        self.engine = engine
        self.inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.recipient_limit = 1 << 62  # no wire, no size limit (§1.7)

    def send(self, frame: dict[str, Any]) -> None:
        if not self.closing or frame.get("type") == "registrationrejected":
            self.inbox.put_nowait(frame)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.inbox.put_nowait(_CLOSED)


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

    async def recv(self) -> dict[str, Any]:
        frame = await self._conn.inbox.get()
        if frame is _CLOSED:
            self._closed = True
            raise TransportClosed(None, "in-process connection closed by the engine")
        return frame

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.disconnect(self._conn)


def local_connector(engine: "Engine") -> Any:
    """A connector for ``pyiii.sdk.InitOptions(connector=...)`` bound to ``engine``."""

    async def connect() -> LocalTransport:
        return LocalTransport(engine)

    return connect
