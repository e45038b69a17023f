"""What carries frames between the client and the engine.

The client only needs three coroutines (send a frame dict, receive one, close), so the
link is a tiny protocol: the default opens a WebSocket and speaks JSON; the engine can
hand a connector for its in-process queues that pass the dicts as they are. Anything
honouring ``Transport`` works unchanged (tests use an in-memory fake).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Protocol, runtime_checkable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pyiii.protocol import (
    MAX_INBOUND_MESSAGE,
    PING_INTERVAL_S,
    PING_TIMEOUT_S,
    TransportClosed,
    decode,
    encode,
)

__all__ = ["Transport", "TransportClosed", "Connector", "WebSocketTransport", "websocket_connector"]

log = logging.getLogger("pyiii.sdk.transport")


@runtime_checkable
class Transport(Protocol):
    """One live link to the engine. ``recv`` raises ``TransportClosed`` when it ends;
    ``send`` on an ended link raises ``TransportClosed`` too."""

    async def send(self, frame: dict[str, Any]) -> None: ...

    async def recv(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


Connector = Callable[[], Awaitable[Transport]]


class WebSocketTransport:
    """JSON frames over a websockets client connection.

    Sends encoded bytes as *text* messages (the wire contract, §1.3) without a decode
    round trip, receives raw bytes and lets orjson parse them directly. Unparseable or
    empty messages are skipped with a warning: the peer stays connected (forward compat).
    """

    __slots__ = ("_ws",)

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self._ws.send(encode(frame), text=True)
        except ConnectionClosed as exc:
            raise TransportClosed(*_close_info(exc)) from None

    async def recv(self) -> dict[str, Any]:
        while True:
            try:
                message = await self._ws.recv(decode=False)
            except ConnectionClosed as exc:
                raise TransportClosed(*_close_info(exc)) from None
            try:
                frame = decode(message)
            except ValueError as exc:
                log.warning("dropping engine message: %s", exc)
                continue
            if frame is not None:
                return frame

    async def close(self) -> None:
        await self._ws.close()


def _close_info(exc: ConnectionClosed) -> tuple[int | None, str]:
    close = exc.rcvd or exc.sent
    return (close.code, close.reason) if close is not None else (None, "")


def websocket_connector(url: str, headers: dict[str, str] | None = None) -> Connector:
    """The default connector: one WebSocket per call, no compression (the engine declines
    it anyway, and it costs latency), 64 MiB inbound messages (large-messages.v1), and
    protocol pings every 20 s so a half-open link is noticed."""

    async def open_link() -> Transport:
        ws = await connect(
            url,
            max_size=MAX_INBOUND_MESSAGE,
            compression=None,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            additional_headers=headers,
        )
        return WebSocketTransport(ws)

    return open_link
