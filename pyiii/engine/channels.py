"""Channels (spec §7): byte and text streams between two workers, outside the control socket.

A channel is a bounded queue between a writer socket and a reader socket. When the queue is
full the engine stops reading the writer, which is the back-pressure: TCP flow control then
slows the writer down.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..protocol import Close, IdSequence

log = logging.getLogger("pyiii.engine.channels")

DEFAULT_BUFFER = 64
MAX_BUFFER = 1024
READER_CHUNK = 64 * 1024
UNCLAIMED_TTL_S = 300.0
SWEEP_INTERVAL_S = 60.0

_CLEAN_END = object()
_BROKEN_END = object()


class _RandomIds:
    """UUIDv4-shaped access keys from the OS's strong random source, read 4 KiB at a time and
    kept as hex: iii-http makes two channels per request, and a system call (or a
    bytes-to-hex conversion) per key showed."""

    _VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at + 32 > len(self._pool):
            self._pool, at = os.urandom(4096).hex(), 0
        h = self._pool[at:at + 32]
        self._at = at + 32
        # version nibble 4, variant bits 10xx; the other 122 bits stay random
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{self._VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_new_key = _RandomIds()
# Channel ids only need to be unique: the access key is what guards a channel (a wrong key and
# an unknown id get the same 404), so ids come from a counter behind a random prefix
_new_channel_id = IdSequence()


@dataclass(eq=False)
class Channel:
    id: str
    key: str
    size: int  # buffer size, in messages
    created: float = field(default_factory=time.monotonic)
    writer: ServerConnection | None = None
    reader: ServerConnection | None = None
    writer_taken: bool = False
    reader_taken: bool = False
    writer_done: bool = False
    reader_done: bool = False
    writer_waiter: asyncio.Future[None] | None = None  # resolved when the writer end is claimed
    _items: asyncio.Queue[Any] | None = None
    _preloaded: list[Any] | None = None  # what ``preload`` put in before there was a queue

    @property
    def items(self) -> asyncio.Queue[Any]:
        """The bounded buffer between the ends, made on first use (most channels of iii-http
        requests are never read)."""
        if self._items is None:
            self._items = asyncio.Queue(self.size)
            for item in self._preloaded or ():
                self._items.put_nowait(item)
            self._preloaded = None
        return self._items

    def ref(self, direction: str) -> dict[str, str]:
        return {"channel_id": self.id, "access_key": self.key, "direction": direction}


class ChannelHub:
    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.local_tasks: set[asyncio.Task[None]] = set()  # ends served without a socket
        self._sweeper: asyncio.Task[None] | None = None

    def create(self, buffer_size: int | None, key: str | None = None) -> Channel:
        """A new channel. ``key`` lets an owner give channels it hands to the same party one
        shared access key (iii-http: the two channels of one request go to one handler)."""
        size = DEFAULT_BUFFER if buffer_size is None else min(max(buffer_size, 1), MAX_BUFFER)
        channel = Channel(_new_channel_id(), key or _new_key(), size)
        self.channels[channel.id] = channel
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return channel

    def check(self, channel_id: str, key: str | None, direction: str | None) -> int:
        """HTTP status for an upgrade request: 101 means it may proceed."""
        channel = self.channels.get(channel_id)
        # constant-time: ids are not secret (see _new_channel_id), so the key must not leak
        if channel is None or key is None or not hmac.compare_digest(key, channel.key):
            return 404
        if direction not in ("read", "write"):
            return 400
        taken = channel.writer_taken if direction == "write" else channel.reader_taken
        return 409 if taken else 101

    def claim(self, channel_id: str, direction: str) -> Channel | None:
        channel = self.channels.get(channel_id)
        if channel is None:
            return None
        if direction == "write":
            if channel.writer_taken:
                return None
            channel.writer_taken = True
            waiter = channel.writer_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        else:
            if channel.reader_taken:
                return None
            channel.reader_taken = True
        return channel

    # -- the owner's shortcuts (in-process owners: no socket, no invocation) ----------------

    def writer_claimed(self, channel_id: str) -> asyncio.Future[None]:
        """A future resolved once someone claims the writing end (already resolved if done)."""
        channel = self.channels.get(channel_id)
        waiter = channel.writer_waiter if channel is not None else None
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            if channel is None or channel.writer_taken:
                waiter.set_result(None)
            else:
                channel.writer_waiter = waiter
        return waiter

    def preload(self, channel_id: str, data: bytes) -> bool:
        """Write ``data`` and end the stream without a writer socket; False when the writing
        end is taken or the buffer has no room (use a writer then)."""
        channel = self.channels.get(channel_id)
        if channel is None or channel.writer_taken or channel._items is not None:
            return False
        if channel.size < (2 if data else 1):
            return False
        channel.writer_taken = channel.writer_done = True
        channel._preloaded = [data, _CLEAN_END] if data else [_CLEAN_END]
        return True

    def retire(self, channel_id: str) -> None:
        """The owner is done with the channel: an end nobody claimed is closed off (a writer
        still attached is told the reader went away), and the channel is forgotten as soon as
        no end is attached. An end someone holds keeps working until it is done."""
        channel = self.channels.get(channel_id)
        if channel is None:
            return
        if not channel.reader_taken:
            channel.reader_taken = channel.reader_done = True
            channel._preloaded = None  # nobody will read them
            items = channel._items
            while items is not None and not items.empty():
                items.get_nowait()
            writer = channel.writer
            if channel.writer_taken and not channel.writer_done and writer is not None:
                task = asyncio.ensure_future(writer.close(Close.INTERNAL, "channel reader went away"))
                self.local_tasks.add(task)
                task.add_done_callback(self.local_tasks.discard)
        if not channel.writer_taken:
            channel.writer_taken = channel.writer_done = True
            waiter = channel.writer_waiter
            if waiter is not None and not waiter.done():
                waiter.cancel()
        if channel.writer_done and channel.reader_done:
            self.channels.pop(channel.id, None)

    async def serve(self, ws: ServerConnection, channel: Channel, direction: str) -> None:
        try:
            if direction == "write":
                await self._pump_writer(ws, channel)
            else:
                await self._pump_reader(ws, channel)
        finally:
            if channel.writer_done and channel.reader_done:
                self.channels.pop(channel.id, None)

    async def _pump_writer(self, ws: ServerConnection, channel: Channel) -> None:
        channel.writer = ws
        end: object = _CLEAN_END
        try:
            async for message in ws:
                if channel.reader_done:
                    break
                await channel.items.put(message)
        except ConnectionClosed:
            pass
        if ws.protocol.close_rcvd is None:
            end = _BROKEN_END
        channel.writer_done = True
        if channel.reader_done:
            await ws.close(Close.INTERNAL, "channel reader went away")
        else:
            await channel.items.put(end)

    async def _pump_reader(self, ws: ServerConnection, channel: Channel) -> None:
        channel.reader = ws
        closer = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                getter = asyncio.ensure_future(channel.items.get())
                done, _ = await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                item = getter.result()
                if item is _CLEAN_END or item is _BROKEN_END:
                    code = Close.NORMAL if item is _CLEAN_END else Close.INTERNAL
                    await ws.close(code, "end of stream")
                    break
                if isinstance(item, str):
                    await ws.send(item)
                else:
                    for start in range(0, max(len(item), 1), READER_CHUNK):
                        await ws.send(item[start:start + READER_CHUNK])
        except ConnectionClosed:
            pass
        finally:
            closer.cancel()
            channel.reader_done = True
            writer = channel.writer
            if not channel.writer_done and writer is not None:
                await writer.close(Close.INTERNAL, "channel reader went away")

    async def _sweep(self) -> None:
        while self.channels:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            for channel in list(self.channels.values()):
                stale = now - channel.created > UNCLAIMED_TTL_S and not (
                    channel.writer_taken and channel.reader_taken)
                if stale:
                    self.channels.pop(channel.id, None)
                    for ws in (channel.writer, channel.reader):
                        if ws is not None:
                            await ws.close(Close.INTERNAL, "channel peer never connected")
        self._sweeper = None
