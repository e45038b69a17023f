"""The WebSocket listener (spec §1): routes, limits, liveness, and the WebSocket connection.

Built on ``websockets``' asyncio server with the fast message path of :mod:`pyiii.wswire`:
control messages are handled inside ``data_received`` and replies written without awaiting, so
forwarding a call creates no task; unsent data is bounded instead (§1.4, 256 MiB, then 1011).
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State

from .. import protocol
from ..protocol import Close
from .connection import Connection, FrameTooLarge
from ..wswire import DirectServerConnection, write_text
from .telemetry import handle_telemetry

if TYPE_CHECKING:
    from .core import Engine

log = logging.getLogger("pyiii.engine.listener")


@dataclass
class ListenerConfig:
    host: str = "0.0.0.0"
    port: int = protocol.DEFAULT_ENGINE_PORT
    handshake_timeout_ms: int = protocol.HANDSHAKE_TIMEOUT_MS
    ping_interval_s: float = protocol.PING_INTERVAL_S
    ping_timeout_s: float = protocol.PING_TIMEOUT_S
    rbac: Any = None
    middleware_function_id: str | None = None


class WsConnection(Connection):
    transport = "websocket"

    def __init__(self, ws: DirectServerConnection, ip_address: str | None) -> None:
        super().__init__(ip_address)
        self.ws = ws

    def send(self, frame: dict[str, Any]) -> None:
        data = protocol.encode(frame)
        if len(data) > self.recipient_limit:
            raise FrameTooLarge(len(data), self.recipient_limit)
        write_text(self.ws, data)

    def close(self, code: int = Close.NORMAL, reason: str = "") -> None:
        ws = self.ws
        if ws.protocol.state is State.OPEN:
            asyncio.ensure_future(ws.close(code, reason))


def _reject(status: http.HTTPStatus, text: str) -> Response:
    body = (text + "\n").encode()
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"),
                       ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)


class Listener:
    """One engine listener: ``/`` (workers), ``/otel`` (telemetry), ``/ws/channels/{id}``."""

    def __init__(self, engine: "Engine", config: ListenerConfig) -> None:
        self.engine = engine
        self.config = config
        self.server: Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        cfg = self.config
        self.server = await serve(
            self._handler, cfg.host, cfg.port,
            process_request=self._route,
            create_connection=DirectServerConnection,
            compression=None,
            max_size=protocol.MAX_INBOUND_MESSAGE,
            max_queue=64,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            open_timeout=cfg.handshake_timeout_ms / 1000,
            close_timeout=2,
            select_subprotocol=lambda conn, offered: None,
            server_header=None,
            logger=logging.getLogger("pyiii.engine.websockets"),
        )

    async def close(self, code: int = Close.GOING_AWAY) -> None:
        """Stop accepting, close every socket with ``code`` and wait for the handlers."""
        if self.server is None:
            return
        server = self.server
        server.close(close_connections=False)
        for ws in list(server.connections):
            asyncio.ensure_future(ws.close(code, "engine shutting down"))
        # handlers end when their socket closes; one blocked elsewhere (a channel writer
        # waiting for buffer space) is cancelled rather than holding shutdown hostage
        done, pending = await asyncio.wait(server.handler_tasks, timeout=3) \
            if server.handler_tasks else (set(), set())
        for task in pending:
            task.cancel()
        await server.wait_closed()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=False)

    # -- routing ----------------------------------------------------------------------------

    def _route(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path
        if path in ("/", "/otel"):
            ws.direct = True  # type: ignore[attr-defined]
            return None
        if path.startswith("/ws/channels/"):
            channel_id = path[len("/ws/channels/"):]
            query = parse_qs(parts.query)
            key = query.get("key", [None])[0]
            direction = query.get("dir", [None])[0]
            status = self.engine.channels.check(channel_id, key, direction)
            if status == 101:
                return None
            text = {404: "unknown channel or wrong key", 400: "dir must be read or write",
                    409: "this end of the channel is already connected"}[status]
            return _reject(http.HTTPStatus(status), text)
        return _reject(http.HTTPStatus.NOT_FOUND, f"no route {path}; use /, /otel or /ws/channels/<id>")

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        if parts.path == "/":
            await self._control(ws)
        elif parts.path == "/otel":
            await self._telemetry(ws)
        else:
            query = parse_qs(parts.query)
            direction = query["dir"][0]
            channel = self.engine.channels.claim(parts.path[len("/ws/channels/"):], direction)
            if channel is None:
                await ws.close(Close.POLICY, "channel end already taken")
                return
            await self.engine.channels.serve(ws, channel, direction)

    async def _control(self, ws: DirectServerConnection) -> None:
        peer = ws.remote_address
        conn = WsConnection(ws, peer[0] if peer else None)
        engine = self.engine
        engine.accept(conn)
        handle = engine.handle
        decode = protocol.decode
        prefixes = protocol.TELEMETRY_PREFIXES

        def on_message(payload: bytes, text: bool) -> None:
            if not text and payload[:4] in prefixes:
                return handle_telemetry(payload)
            try:
                frame = decode(payload)
            except ValueError as exc:
                log.warning("dropped frame from %s: %s", conn.label(), exc)
                return
            if frame is None:
                return
            try:
                handle(conn, frame)
            except FrameTooLarge as exc:
                log.warning("reply to %s not sent: %s", conn.label(), exc)
            except Exception:  # a bug must not take the connection down
                log.exception("error handling %s frame from %s", frame.get("type"), conn.label())

        try:
            ws.start_delivery(on_message)
            await ws.wait_closed()
        finally:
            engine.disconnect(conn)

    async def _telemetry(self, ws: DirectServerConnection) -> None:
        def on_message(payload: bytes, text: bool) -> None:
            if not text and payload[:4] in protocol.TELEMETRY_PREFIXES:
                handle_telemetry(payload)

        ws.start_delivery(on_message)
        await ws.wait_closed()
