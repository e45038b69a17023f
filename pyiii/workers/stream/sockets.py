"""Live sync of stream changes to WebSocket clients (spec/workers.md §7.4).

One listener on ``host:port`` (path ``/``); the optional ``auth_function`` runs inside the
HTTP handshake, so a refused client gets HTTP 401 and is never upgraded. Each client has an
outbound buffer drained by one sender task; a client with ``channel_size`` events waiting is
closed with 1013. Client frames are handled one after another, like the reference.
"""

from __future__ import annotations

import asyncio
import http
import logging
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .messages import parse_client_frame, wrap

if TYPE_CHECKING:
    from .worker import StreamWorker

log = logging.getLogger("pyiii.workers.stream")

AUTH_TIMEOUT_S = 10.0
TRY_AGAIN_LATER = 1013


def json_response(status: int, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                       ("Connection", "close")])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def _auth_input(connection: ServerConnection, request: Request) -> dict[str, Any]:
    parts = urlsplit(request.path)
    headers: dict[str, str] = {}
    for name, value in request.headers.raw_items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    peer = connection.remote_address
    addr = ""
    if peer:
        host = str(peer[0])
        addr = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return {"headers": headers, "path": parts.path,
            "query_params": parse_qs(parts.query, keep_blank_values=True), "addr": addr}


class Client:
    """One browser-side socket: its subscriptions and its outbound buffer."""

    def __init__(self, hub: "SocketHub", ws: ServerConnection, context: Any) -> None:
        self.hub = hub
        self.ws = ws
        self.context = context
        self.subs: dict[str, tuple[str, str, str | None]] = {}
        self.queue: deque[str] = deque()
        self.wake = asyncio.Event()
        self.hold: list[str] | None = None  # events held while a join reads its sync data
        self.closing = False
        self.sender = asyncio.ensure_future(self._send_loop())

    def matches(self, message: dict[str, Any]) -> bool:
        stream, group, item = message["streamName"], message["groupId"], message["id"]
        return any(s == stream and g == group and (i is None or i == item)
                   for s, g, i in self.subs.values())

    def push(self, text: str) -> None:
        if self.hold is not None:
            self.hold.append(text)
        else:
            self.enqueue(text)

    def enqueue(self, text: str) -> None:
        if self.closing:
            return
        if len(self.queue) >= self.hub.worker.settings.channel_size:
            log.warning("closing stream socket: %d events waiting to be sent", len(self.queue))
            self.closing = True
            self.queue.clear()
            self.hub.spawn(self.ws.close(TRY_AGAIN_LATER, "too many events waiting; re-join"))
            return
        self.queue.append(text)
        self.wake.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue and not self.closing:
                    await self.ws.send(self.queue.popleft())
        except ConnectionClosed:
            pass

    def stop(self) -> None:
        self.closing = True
        self.sender.cancel()


class SocketHub:
    def __init__(self, worker: "StreamWorker") -> None:
        self.worker = worker
        self.server: Server | None = None
        self.retired: list[Server] = []  # old listeners still serving their open sockets
        self.clients: set[Client] = set()
        self.contexts: weakref.WeakKeyDictionary[ServerConnection, Any] = \
            weakref.WeakKeyDictionary()
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, host: str, port: int) -> Server:
        return await serve(self._handle, host, port, process_request=self._authenticate,
                           compression=None, open_timeout=AUTH_TIMEOUT_S + 5, close_timeout=5,
                           server_header=None, logger=logging.getLogger("pyiii.workers.stream.ws"))

    async def start(self, host: str, port: int) -> None:
        self.server = await self._serve(host, port)

    async def rebind(self, host: str, port: int) -> None:
        """Bind the new address first; only then stop accepting on the old one."""
        new = await self._serve(host, port)
        old, self.server = self.server, new
        if old is not None:
            old.close(close_connections=False)
            self.retired.append(old)

    # -- delivery ---------------------------------------------------------------------------

    def publish(self, message: dict[str, Any]) -> None:
        """Send one change to every socket with a matching subscription, once per socket."""
        text: str | None = None
        for client in list(self.clients):
            if client.matches(message):
                text = text or orjson.dumps(message).decode()
                client.push(text)

    # -- connections ------------------------------------------------------------------------

    async def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/":
            return json_response(404, {"error": {"code": "NOT_FOUND", "message": "Not Found"}})
        function_id = self.worker.settings.auth_function
        if function_id is None:
            return None
        try:
            result = await asyncio.wait_for(self.worker.iii.trigger_async({
                "function_id": function_id, "payload": _auth_input(connection, request),
                "timeout_ms": int(AUTH_TIMEOUT_S * 1000)}), AUTH_TIMEOUT_S)
        except asyncio.TimeoutError:
            return self._refuse(f"auth function {function_id} did not answer within {AUTH_TIMEOUT_S:g} s")
        except Exception as exc:
            detail = getattr(exc, "message", None) or str(exc)
            if getattr(exc, "code", None) == "TIMEOUT":
                return self._refuse(f"auth function {function_id} did not answer within {AUTH_TIMEOUT_S:g} s")
            return self._refuse(f"authentication failed: {detail}")
        if not isinstance(result, dict):
            what = "no result" if result is None else "a non-object result"
            return self._refuse(f"auth function {function_id} returned {what}")
        self.contexts[connection] = result.get("context")
        return None

    @staticmethod
    def _refuse(message: str) -> Response:
        log.info("stream socket refused: %s", message)
        return json_response(401, {"error": {"code": "AUTH_ERROR", "message": message}})

    async def _handle(self, ws: ServerConnection) -> None:
        client = Client(self, ws, self.contexts.pop(ws, None))
        self.clients.add(client)
        try:
            async for raw in ws:
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                if not text.strip():
                    continue  # empty frames are skipped
                try:
                    parsed = parse_client_frame(orjson.loads(text))
                except orjson.JSONDecodeError:
                    parsed = None
                if parsed is None:
                    log.info("stream socket: ignored a frame that is not a join or leave")
                    continue
                kind, data = parsed
                if kind == "join":
                    await self._join(client, data)
                else:
                    self._leave(client, data)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            client.stop()
            for sid, (stream, group, item) in list(client.subs.items()):
                self.worker.triggers.left(_membership(sid, stream, group, item, client.context))
            client.subs.clear()

    async def _join(self, client: Client, data: dict[str, Any]) -> None:
        sid, stream, group, item = (data["subscriptionId"], data["streamName"], data["groupId"],
                                    data["id"])
        payload = _membership(sid, stream, group, item, client.context)
        if not await self.worker.triggers.allow_join(payload):
            client.enqueue(orjson.dumps(wrap(stream, group, item,
                                             {"type": "unauthorized"})).decode())
            return
        client.subs[sid] = (stream, group, item)  # a reused subscriptionId replaces the old one
        client.hold = []
        try:
            current = await self.worker.sync_data(stream, group, item)
        except Exception as exc:
            log.error("stream join %s: reading %s/%s failed: %s", sid, stream, group, exc)
            current = _FAILED
        finally:
            held, client.hold = client.hold, None
        if current is not _FAILED:
            client.enqueue(orjson.dumps(wrap(stream, group, item,
                                             {"type": "sync", "data": current})).decode())
        for text in held:
            client.enqueue(text)

    def _leave(self, client: Client, data: dict[str, Any]) -> None:
        client.subs.pop(data["subscriptionId"], None)
        self.worker.triggers.left(_membership(data["subscriptionId"], data["streamName"],
                                              data["groupId"], data["id"], client.context))

    # -- shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        servers = ([self.server] if self.server else []) + self.retired
        self.server, self.retired = None, []
        for server in servers:
            server.close(close_connections=False)
        for client in list(self.clients):
            client.stop()
            self.spawn(client.ws.close(1001, "stream worker stopping"))
        for server in servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 3)
            except asyncio.TimeoutError:
                for ws in list(server.connections):
                    ws.transport.abort()
        for task in list(self.tasks):
            task.cancel()


_FAILED = object()


def _membership(sid: str, stream: str, group: str, item: str | None,
                context: Any) -> dict[str, Any]:
    return {"subscription_id": sid, "stream_name": stream, "group_id": group, "id": item,
            "context": context}
