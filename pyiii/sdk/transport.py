"""What carries frames between the client and the engine.

The client only needs three coroutines (send a frame dict, receive one, close), so the
link is a tiny protocol: the default opens a WebSocket and speaks JSON; the engine can
hand a connector for its in-process queues that pass the dicts as they are. Anything
honouring ``Transport`` works unchanged (tests use an in-memory fake).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol, runtime_checkable

from websockets.asyncio.client import connect

from pyiii.protocol import (
    MAX_INBOUND_MESSAGE,
    PING_INTERVAL_S,
    PING_TIMEOUT_S,
    TransportClosed,
    decode,
    encode,
)
from pyiii.wswire import DirectClientConnection, write_text

__all__ = ["Transport", "TransportClosed", "Connector", "WebSocketTransport", "websocket_connector"]

log = logging.getLogger("pyiii.sdk.transport")


@runtime_checkable
class Transport(Protocol):
    """One live link to the engine. ``recv`` raises ``TransportClosed`` when it ends;
    ``send`` on an ended link raises ``TransportClosed`` too."""

    async def send(self, frame: dict[str, Any]) -> None: ...

    async def recv(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...

    # Optional: ``send_nowait(frame)``, a synchronous ``send`` (same errors), used on the
    # per-call path when present.
    # Optional: ``async run(dispatch)`` delivers every later frame by calling ``dispatch``
    # until the link ends (then raises TransportClosed); used instead of a ``recv`` loop.


Connector = Callable[[], Awaitable[Transport]]


class WebSocketTransport:
    """JSON frames over a websockets client connection, on the fast path of ``pyiii.wswire``.

    Frames are written without awaiting (encoded bytes sent as *text* messages, §1.3) and,
    once ``run`` starts, each received message is decoded and dispatched inside the socket's
    ``data_received``: no task switch per message. Before that, ``recv`` reads them in order
    (the greeting). Unparseable or empty messages are skipped with a warning (forward compat).
    """

    __slots__ = ("_ws", "_inbox")

    def __init__(self, ws: DirectClientConnection) -> None:
        self._ws = ws
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        ws.start_delivery(self._to_inbox)
        asyncio.ensure_future(self._watch_close())

    async def _watch_close(self) -> None:
        await self._ws.wait_closed()
        self._inbox.put_nowait(None)

    def _to_inbox(self, payload: bytes, text: bool) -> None:
        frame = _parse(payload)
        if frame is not None:
            self._inbox.put_nowait(frame)

    def _closed(self) -> TransportClosed:
        ws = self._ws
        close = ws.protocol.close_rcvd or ws.protocol.close_sent
        return TransportClosed(close.code if close else None, close.reason if close else "")

    async def send(self, frame: dict[str, Any]) -> None:
        if not write_text(self._ws, encode(frame)):
            raise self._closed()

    def send_nowait(self, frame: dict[str, Any]) -> None:
        """``send`` without the coroutine: the frame goes to the socket's write buffer."""
        if not write_text(self._ws, encode(frame)):
            raise self._closed()

    async def recv(self) -> dict[str, Any]:
        frame = await self._inbox.get()
        if frame is None:
            self._inbox.put_nowait(None)  # stay closed for later readers
            raise self._closed()
        return frame

    async def run(self, dispatch: Callable[[dict[str, Any]], None]) -> None:
        """Dispatch every later frame directly until the link ends; then raise TransportClosed."""
        while not self._inbox.empty():
            frame = self._inbox.get_nowait()
            if frame is None:
                raise self._closed()
            dispatch(frame)

        def on_message(payload: bytes, text: bool) -> None:
            frame = _parse(payload)
            if frame is not None:
                dispatch(frame)

        self._ws.on_message = on_message
        await self._ws.wait_closed()
        raise self._closed()

    async def close(self) -> None:
        await self._ws.close()


def _parse(payload: bytes) -> dict[str, Any] | None:
    try:
        return decode(payload)
    except ValueError as exc:
        log.warning("dropping engine message: %s", exc)
        return None


def websocket_connector(url: str, headers: dict[str, str] | None = None) -> Connector:
    """The default connector: one WebSocket per call, no compression (the engine declines
    it anyway, and it costs latency), 64 MiB inbound messages (large-messages.v1), and
    protocol pings every 20 s so a half-open link is noticed."""

    async def open_link() -> Transport:
        ws = await connect(
            url,
            create_connection=DirectClientConnection,
            max_size=MAX_INBOUND_MESSAGE,
            compression=None,
            ping_interval=PING_INTERVAL_S,
            ping_timeout=PING_TIMEOUT_S,
            additional_headers=headers,
        )
        return WebSocketTransport(ws)

    return open_link
