"""Fast message path on top of ``websockets``' asyncio connections, for engine and SDK alike.

``websockets`` normally queues each received message and wakes the task awaiting ``recv()``;
writes go through ``await send()``. For a hub that forwards every message at once, that costs a
task switch per message and a system call per frame. Here:

- ``DirectDelivery`` hands each complete data message to a callback *inside* ``data_received``
  (fragments reassembled; size limits, pings and closes still handled by the library);
- ``write_text`` encodes a frame with the library's sans-I/O protocol object and writes it
  without awaiting; frames produced while a ``data_received`` call runs are written with one
  system call per connection when it returns.

A connection over its unsent-bytes limit is failed with close code 1011 instead of blocking.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import websockets.frames

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from . import protocol

log = logging.getLogger("pyiii.wswire")

MessageHandler = Callable[[bytes, bool], None]  # (payload, is_text)


class _BufferedEntropy:
    """Client frame masks from the OS's strong random source, read 4 KiB at a time.

    websockets asks ``secrets.token_bytes(4)`` for every frame a client sends: one system call
    per frame on the hot path. The masks stay unpredictable (RFC 6455 §5.3); only the reads are
    batched.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def token_bytes(self, n: int) -> bytes:
        if self._at + n > len(self._pool):
            self._pool, self._at = os.urandom(4096), 0
        start = self._at
        self._at += n
        return self._pool[start:self._at]


websockets.frames.secrets = _BufferedEntropy()  # type: ignore[attr-defined]

_dirty: list[Any] = []  # connections written to during the current data_received
_batching = False


class DirectDelivery:
    """Mixin for a websockets asyncio connection: messages go to ``on_message`` synchronously.

    Until ``on_message`` is set (the handler has not started yet), messages are kept in order and
    delivered when it is.
    """

    direct = False  # set per connection (e.g. by the route) to enable the fast path
    on_message: MessageHandler | None = None
    _parts: list[bytes] | None = None
    _text = False
    _early: list[tuple[bytes, bool]] | None = None
    _flush_pending = False

    def start_delivery(self, handler: MessageHandler) -> None:
        early, self._early = self._early, None
        self.on_message = handler
        for payload, text in early or ():
            handler(payload, text)

    def process_event(self, event: Any) -> None:
        if not self.direct or not isinstance(event, Frame):  # handshake events, slow path
            return super().process_event(event)  # type: ignore[misc]
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if event.fin:
                self._deliver(event.data, opcode is Opcode.TEXT)
            else:
                self._parts = [event.data]
                self._text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            assert self._parts is not None
            self._parts.append(event.data)
            if event.fin:
                payload, self._parts = b"".join(self._parts), None
                self._deliver(payload, self._text)
        else:
            super().process_event(event)  # type: ignore[misc]

    def _deliver(self, payload: bytes, text: bool) -> None:
        handler = self.on_message
        if handler is None:
            if self._early is None:
                self._early = []
            self._early.append((payload, text))
            return
        try:
            handler(payload, text)
        except Exception:  # a bug in a handler must not break the connection's protocol state
            log.exception("message handler failed")

    def data_received(self, data: bytes) -> None:
        global _batching
        if _batching:  # nested (cannot normally happen): no batching
            return super().data_received(data)  # type: ignore[misc]
        _batching = True
        try:
            super().data_received(data)  # type: ignore[misc]
        finally:
            _batching = False
            flush_all()


def flush_all() -> None:
    while _dirty:
        ws = _dirty.pop()
        ws._flush_pending = False
        _flush(ws)


def _flush(ws: Any) -> None:
    try:
        ws.send_data()
    except Exception as exc:  # the transport failed; the library reports the close
        log.debug("write failed: %s", exc)
        return
    transport = ws.transport
    if transport is not None and transport.get_write_buffer_size() > protocol.OUTBOUND_BACKLOG_LIMIT:
        log.warning("closing a connection with over %d unsent bytes (the peer stopped reading)",
                    protocol.OUTBOUND_BACKLOG_LIMIT)
        # a polite close would queue behind the backlog it is meant to stop
        ws.protocol.fail(protocol.Close.INTERNAL, "outbound backlog")
        transport.abort()


def write_text(ws: ServerConnection | ClientConnection, data: bytes) -> bool:
    """Write one text message now (or at the end of the current read); False if not open.

    Messages above 16 MiB are sent as fragments of at most 1 MiB, cut on UTF-8 boundaries.
    """
    proto = ws.protocol
    if proto.state is not State.OPEN:
        return False
    if len(data) <= protocol.SINGLE_FRAME_MAX:
        proto.send_text(data)
    else:
        size, start, first = len(data), 0, True
        view = memoryview(data)
        while start < size:
            end = min(start + protocol.OUTBOUND_FRAGMENT, size)
            while end < size and (data[end] & 0xC0) == 0x80:
                end -= 1  # never split a UTF-8 sequence
            chunk, fin = bytes(view[start:end]), end >= size
            if first:
                proto.send_text(chunk, fin=fin)
                first = False
            else:
                proto.send_continuation(chunk, fin=fin)
            start = end
    if _batching:
        if not ws._flush_pending:  # type: ignore[union-attr]
            ws._flush_pending = True  # type: ignore[union-attr]
            _dirty.append(ws)
    else:
        _flush(ws)
    return True


class DirectServerConnection(DirectDelivery, ServerConnection):
    """Server side (the engine's listener)."""


class DirectClientConnection(DirectDelivery, ClientConnection):
    """Client side (pyiii.sdk): direct from the first frame, so nothing reaches the library's
    queue between the handshake and ``start_delivery``."""

    direct = True
