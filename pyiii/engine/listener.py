"""The WebSocket listener (spec §1): routes, limits, liveness, and the WebSocket connection.

A listener with an `rbac` block (or a middleware) authenticates each connection before it is
registered and gives it a policy (:mod:`pyiii.engine.rbac`); its frames then pass through a
:class:`~pyiii.engine.rbac_session.Session`. A trusted listener skips all of that: its
connections have no policy and their frames go straight to the engine.

Built on ``websockets``' asyncio server with the fast message path of :mod:`pyiii.wswire`:
control messages are handled inside ``data_received`` and replies written without awaiting, so
forwarding a call creates no task; unsent data is bounded instead (§1.4, 256 MiB, then 1011).
"""

from __future__ import annotations

import asyncio
import hmac
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
from .rbac import Policy
from .rbac_rules import RbacSettings, parse_rbac
from .rbac_session import AUTH_TIMEOUT_S, AuthRefused, Session, auth_error_frame, auth_request, \
    authenticate
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
    rbac: Any = None  # the raw `rbac` block (validated here) or RbacSettings
    middleware_function_id: str | None = None
    token: str | None = None  # bearer token required on `/` and `/otel` (blank: none)


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


class PolicyWsConnection(WsConnection):
    """A connection with a policy: its own ids carry the registration prefix inside the engine
    and lose it on the way out, so its SDK only ever sees the ids it registered (§8.6)."""

    strip: str | None = None  # "<prefix>::"

    def send(self, frame: dict[str, Any]) -> None:
        strip = self.strip
        if strip is not None and frame.get("type") in _STRIPPED:
            function_id = frame.get("function_id")
            if isinstance(function_id, str) and function_id.startswith(strip):
                frame = {**frame, "function_id": function_id[len(strip):]}
        super().send(frame)


_STRIPPED = frozenset({protocol.Frame.INVOKE_FUNCTION, protocol.Frame.TRIGGER_REGISTRATION_RESULT})


def _bearer_ok(request: Request, query: str, token: str) -> bool:
    """The trusted listener's optional token: `Authorization: Bearer <t>` (what the SDKs send
    from III_TOKEN), or `?token=<t>` for clients that cannot set headers."""
    given = request.headers.get("Authorization", "")
    if given[:7].lower() == "bearer ":
        given = given[7:].strip()
    else:
        given = parse_qs(query).get("token", [""])[-1]
    return hmac.compare_digest(given.encode(), token.encode())


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
        self.rbac: RbacSettings | None = None
        self.middleware_function_id: str | None = None
        self.reconfigure(config)

    def reconfigure(self, config: ListenerConfig) -> None:
        """Apply `rbac` / `middleware_function_id` / `token` changes (hot reload, §8.1): later
        messages see the new rules; each connection keeps the AuthResult it was given.
        Raises ``ValueError`` (rules unchanged) for an invalid `rbac` block."""
        rbac = config.rbac
        self.rbac = rbac if rbac is None or isinstance(rbac, RbacSettings) else parse_rbac(rbac)
        if self.rbac is not None and self.rbac.auth_function_id is None:
            log.warning("the RBAC listener on port %s has no rbac.auth_function_id: every "
                        "connection may register functions and trigger types; set one on any "
                        "public listener", config.port)
        self.middleware_function_id = config.middleware_function_id
        self.config = config

    @property
    def guarded(self) -> bool:
        """Connections here get a policy (RBAC, or at least the middleware)."""
        return self.rbac is not None or self.middleware_function_id is not None

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
            backlog=1024,  # a burst of connections (or a flood) must not overflow the queue
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

    async def close(self, code: int = Close.GOING_AWAY,
                    reason: str = "engine shutting down") -> None:
        """Stop accepting, close every socket with ``code`` and wait for the handlers."""
        if self.server is None:
            return
        server = self.server
        server.close(close_connections=False)
        for ws in list(server.connections):
            asyncio.ensure_future(ws.close(code, reason))
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
            token = self.config.token
            if token and not _bearer_ok(request, parts.query, token):
                return _reject(http.HTTPStatus.UNAUTHORIZED, "AUTH_ERROR: missing or wrong bearer "
                               "token; set III_TOKEN to the engine's token")
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
        if parts.path in ("/", "/otel"):
            policy = None
            if self.guarded:
                policy = await self._authenticate(ws, parts.query)
                if policy is None:
                    return
            if parts.path == "/":
                await self._control(ws, policy)
            else:
                await self._telemetry(ws)
        else:
            query = parse_qs(parts.query)
            direction = query["dir"][0]
            channel = self.engine.channels.claim(parts.path[len("/ws/channels/"):], direction)
            if channel is None:
                await ws.close(Close.POLICY, "channel end already taken")
                return
            await self.engine.channels.serve(ws, channel, direction)

    async def _authenticate(self, ws: DirectServerConnection, query: str) -> Policy | None:
        """§8.3: the policy of a new connection, or None after refusing it (one AUTH_ERROR
        frame, close 1008). The handshake deadline bounds the wait too, so connections whose
        authentication hangs cannot pile up."""
        assert ws.request is not None
        peer = ws.remote_address
        request = auth_request(ws.request.headers.raw_items(), query, peer[0] if peer else None)
        timeout = min(AUTH_TIMEOUT_S, self.config.handshake_timeout_ms / 1000)
        try:
            auth = await authenticate(self.engine, self, request, timeout)
        except AuthRefused as exc:
            log.warning("refused connection from %s: %s", request["ip_address"], exc)
            write_text(ws, protocol.encode(auth_error_frame(str(exc))))
            await ws.close(Close.POLICY, "authentication failed")
            return None
        return Policy(self.engine, self, auth)

    async def _control(self, ws: DirectServerConnection, policy: Policy | None = None) -> None:
        peer = ws.remote_address
        engine = self.engine
        session = None
        if policy is None:
            conn: Connection = WsConnection(ws, peer[0] if peer else None)
            handle = engine.handle
        else:
            conn = PolicyWsConnection(ws, peer[0] if peer else None)
            conn.policy = policy
            if policy.prefix is not None:
                conn.strip = policy.prefix + "::"
            session = Session(engine, conn, policy)
            handle = lambda _conn, frame: session.feed(frame)  # noqa: E731
        engine.accept(conn)
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
            if session is not None:
                session.stop()
            engine.disconnect(conn)

    async def _telemetry(self, ws: DirectServerConnection) -> None:
        def on_message(payload: bytes, text: bool) -> None:
            if not text and payload[:4] in protocol.TELEMETRY_PREFIXES:
                handle_telemetry(payload)

        ws.start_delivery(on_message)
        await ws.wait_closed()


async def apply_listener_configs(engine: "Engine", running: list[Listener],
                                 configs: list[ListenerConfig]) -> list[Listener]:
    """Hot reload of the listeners (spec/workers.md §8.1), entry by entry in order.

    Same address: rules, middleware and token change in place (later messages see them; open
    connections keep their AuthResult). New address: the new listener binds first (on failure
    the old one keeps serving and the error is logged), then the old one closes with 1012 so
    SDKs reconnect. Entries gone: closed with 1001. Raises nothing; returns the running set.
    """
    result: list[Listener] = []
    for index, config in enumerate(configs):
        old = running[index] if index < len(running) else None
        if old is not None and (old.config.host, old.config.port) == (config.host, config.port):
            try:
                old.reconfigure(config)
            except ValueError as exc:
                log.error("listener %s:%s keeps its previous rules: %s", config.host,
                          config.port, exc)
            result.append(old)
            continue
        try:
            fresh = Listener(engine, config)
            await fresh.start()
        except (OSError, ValueError) as exc:
            log.error("cannot listen on %s:%s: %s%s", config.host, config.port, exc,
                      "; the previous listener keeps serving" if old is not None else "")
            if old is not None:
                result.append(old)
            continue
        result.append(fresh)
        if old is not None:
            log.info("listener moved from %s:%s to %s:%s", old.config.host, old.config.port,
                     config.host, fresh.port)
            await old.close(Close.RESTART, "listener moved; reconnect")
    for old in running[len(configs):]:
        log.info("listener %s:%s removed", old.config.host, old.config.port)
        await old.close(Close.GOING_AWAY, "listener removed")
    return result
