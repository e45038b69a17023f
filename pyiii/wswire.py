"""Fast message path on top of ``websockets``' asyncio connections, for engine and SDK alike.

``websockets`` parses frames with generators, queues each message and wakes the task awaiting
``recv()``; writes go through ``await send()``. For a hub that forwards every message at once,
that costs more than the routing itself. Here, once a connection is open:

- complete, unfragmented data frames are parsed directly in ``data_received`` and handed to
  ``on_message`` synchronously; pings are answered and pongs acknowledged the same way;
- text messages are framed here and written without awaiting; frames produced while a
  ``data_received`` call runs go out with one system call per connection when it returns,
  frames written by tasks (32 callers each sending a call) at the next turn of the loop.

Anything unusual (a close frame, a fragmented or compressed message, one over the size limit)
hands the connection back to the library, which then handles the rest of it as usual: close
handshakes, errors and limits keep the library's behaviour. A connection over its unsent-bytes
limit is failed with close code 1011 instead of blocking.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from typing import Any, Callable

import websockets.frames
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Side, State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the C extension ships in the wheels we install
    from websockets.utils import apply_mask

from . import busypoll, protocol

log = logging.getLogger("pyiii.wswire")

MessageHandler = Callable[[bytes, bool], None]  # (payload, is_text)
_UNKNOWN, _FAST, _LIBRARY = 0, 1, 2


class _BufferedEntropy:
    """Client frame masks from the OS's strong random source, read 4 KiB at a time.

    A mask per frame is required (RFC 6455 §5.3) and must be unpredictable; reading it with one
    system call per frame is not. websockets' own client frames use this too.
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


_entropy = _BufferedEntropy()
websockets.frames.secrets = _entropy  # type: ignore[attr-defined]

# frames held back at most before a write. Small enough that a burst (32 callers' calls read
# at once) goes on in slices: with 64, caller, engine and worker took turns on the whole burst
# and the three processes together kept one of two cores busy; with 16 the next process starts
# on the first slice while this one works on the rest (hub benchmark at concurrency 32:
# 29.6k -> 35k calls/s). Smaller slices cost more system calls than they gain.
FLUSH_EVERY = 16
class _ThreadState(threading.local):
    """Write batching is per thread: pyiii.sdk may run its own loop in a background thread
    while the program's loop (or an engine) runs in another, and one thread's read must never
    flush, or be flushed by, the other's connections."""

    batching = False  # inside a data_received call

    def __init__(self) -> None:
        self.dirty: list[Any] = []  # connections written to during it


_state = _ThreadState()


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
    _mode = _UNKNOWN
    _rbuf: bytearray | None = None
    _out: list[bytes] | None = None

    def start_delivery(self, handler: MessageHandler) -> None:
        early, self._early = self._early, None
        self.on_message = handler
        for payload, text in early or ():
            handler(payload, text)

    # -- receiving ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        state = _state
        nested = state.batching
        state.batching = True
        try:
            if self._mode == _FAST or (self._mode == _UNKNOWN and self._may_go_fast()):
                self._mode = _FAST
                self._receive_fast(data)
            else:
                super().data_received(data)  # type: ignore[misc]
        finally:
            if not nested:
                state.batching = False
                if state.dirty:
                    flush_all()  # each write opens the busy-poll window
                else:  # a read that wrote nothing opens it here
                    busypoll.touch(self.loop)  # type: ignore[attr-defined]

    def _may_go_fast(self) -> bool:
        # only at a frame boundary of the library's parser: nothing buffered, no fragments
        proto = self.protocol  # type: ignore[attr-defined]
        return (self.direct and proto.state is State.OPEN and not proto.reader.buffer
                and self._parts is None)

    def _receive_fast(self, data: bytes) -> None:
        rbuf = self._rbuf
        if rbuf:
            rbuf += data
            buf: bytes | bytearray = rbuf
        else:
            buf = data
        proto = self.protocol  # type: ignore[attr-defined]
        from_client = proto.side is Side.SERVER  # frames from a client are masked
        max_size = proto.max_message_size
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, pos + 2
            if length == 126:
                if size - head < 2:
                    break
                length, head = int.from_bytes(buf[head:head + 2], "big"), head + 2
            elif length == 127:
                if size - head < 8:
                    break
                length, head = int.from_bytes(buf[head:head + 8], "big"), head + 8
            opcode = b0 & 0x0F
            if (b0 & 0xF0) != 0x80 or bool(b1 & 0x80) != from_client \
                    or opcode not in (1, 2, 9, 10) or (max_size is not None and length > max_size):
                return self._hand_back(bytes(buf[pos:]))  # close, fragments, errors, limits
            if from_client:
                if size - head < 4:
                    break
                mask, head = buf[head:head + 4], head + 4
            end = head + length
            if end > size:
                break
            payload = bytes(buf[head:end])
            if from_client:
                payload = apply_mask(payload, mask)
            pos = end
            if opcode <= 2:
                self._deliver(payload, opcode == 1)
            elif opcode == 9:
                proto.send_pong(payload)
                _mark_dirty(self)
            else:
                self.acknowledge_pings(payload)  # type: ignore[attr-defined]
        if pos == size:
            self._rbuf = None
        elif rbuf:
            del rbuf[:pos]
        else:
            self._rbuf = bytearray(buf[pos:])

    def _hand_back(self, rest: bytes) -> None:
        self._mode = _LIBRARY
        self._rbuf = None
        super().data_received(rest)  # type: ignore[misc]

    def process_event(self, event: Any) -> None:
        """Library path: used before the fast path starts and after it hands back."""
        if not self.direct or not isinstance(event, Frame):  # handshake events
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

    def send_data(self) -> None:
        """The library's own writes (pongs, close frames) go after our frames not yet flushed."""
        out = self._out
        if out:
            self._out = None
            transport = self.transport  # type: ignore[attr-defined]
            if transport is not None and not transport.is_closing():
                transport.write(out[0] if len(out) == 1 else b"".join(out))
        super().send_data()  # type: ignore[misc]

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


# -- sending --------------------------------------------------------------------------------


def _mark_dirty(ws: Any) -> None:
    if not ws._flush_pending:
        ws._flush_pending = True
        state = _state
        if state.batching:
            state.dirty.append(ws)
        else:
            # written from a task (a caller's trigger): when other callbacks are ready to run
            # in this turn of the loop (32 callers, each sending a call), flush after them, so
            # their frames go out in one system call; alone, flush now (no added latency).
            # A loop that does not show its ready queue (uvloop) always flushes after them
            loop = ws.loop
            if not getattr(loop, "_ready", True):
                ws._flush_pending = False
                _flush(ws)
                return
            try:
                loop.call_soon(_flush_later, ws)
            except RuntimeError:  # the loop is closed: nothing will ever be sent
                ws._flush_pending = False


def _flush_later(ws: Any) -> None:
    if ws._flush_pending:
        ws._flush_pending = False
        _flush(ws)


def flush_all() -> None:
    dirty = _state.dirty
    while dirty:
        ws = dirty.pop()
        ws._flush_pending = False
        _flush(ws)


def _flush(ws: Any) -> None:
    transport = ws.transport
    out = ws._out
    if out:
        ws._out = None
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            busypoll.touch(ws.loop)
    try:
        ws.send_data()  # whatever the library queued (pongs, close frames) goes after
    except Exception as exc:  # the transport failed; the library reports the close
        log.debug("write failed: %s", exc)
        return
    if transport is not None and transport.get_write_buffer_size() > protocol.OUTBOUND_BACKLOG_LIMIT:
        log.warning("closing a connection with over %d unsent bytes (the peer stopped reading)",
                    protocol.OUTBOUND_BACKLOG_LIMIT)
        # a polite close would queue behind the backlog it is meant to stop
        ws.protocol.fail(protocol.Close.INTERNAL, "outbound backlog")
        transport.abort()


def _text_frame(data: bytes, client: bool) -> bytes:
    size = len(data)
    bit = 0x80 if client else 0
    if size < 126:
        head = bytes((0x81, size | bit))
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, 126 | bit, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127 | bit, size)
    if client:
        mask = _entropy.token_bytes(4)
        return head + mask + apply_mask(data, mask)
    return head + data


def write_text(ws: ServerConnection | ClientConnection, data: bytes) -> bool:
    """Queue one text message; False if not open. It goes out at the end of the current read
    when written while handling one, else at the next turn of the loop (one system call for
    every frame written to the connection in between); the library's own frames (close, pong)
    always go after it.

    Messages above 16 MiB are sent as fragments of at most 1 MiB, cut on UTF-8 boundaries.
    """
    proto = ws.protocol
    if proto.state is not State.OPEN:
        return False
    if len(data) <= protocol.SINGLE_FRAME_MAX:
        out = ws._out  # type: ignore[union-attr]
        frame = _text_frame(data, proto.side is Side.CLIENT)
        if out is None:
            ws._out = [frame]  # type: ignore[union-attr]
        else:
            out.append(frame)
            if len(out) >= FLUSH_EVERY:
                # a long burst goes out in slices: the peer starts on the first frames while
                # this side still produces the others
                _flush(ws)
                return True
        _mark_dirty(ws)
        return True
    _flush(ws)  # earlier frames first: order is kept
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
    _flush(ws)
    return True


class DirectServerConnection(DirectDelivery, ServerConnection):
    """Server side (the engine's listener)."""


class DirectClientConnection(DirectDelivery, ClientConnection):
    """Client side (pyiii.sdk): direct from the first frame, so nothing reaches the library's
    queue between the handshake and ``start_delivery``."""

    direct = True
