"""Channels (spec §7): byte and text streams between two workers, outside the control socket.

A channel is a bounded queue between a writer socket and a reader socket. When the queue is
full the engine stops reading the writer, which is the back-pressure: TCP flow control then
slows the writer down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .. import protocol
from ..protocol import Close

log = logging.getLogger("pyiii.engine.channels")

DEFAULT_BUFFER = 64
MAX_BUFFER = 1024
READER_CHUNK = 64 * 1024
UNCLAIMED_TTL_S = 300.0
SWEEP_INTERVAL_S = 60.0

_CLEAN_END = object()
_BROKEN_END = object()


@dataclass(eq=False)
class Channel:
    id: str
    key: str
    items: asyncio.Queue[Any]
    created: float = field(default_factory=time.monotonic)
    writer: ServerConnection | None = None
    reader: ServerConnection | None = None
    writer_taken: bool = False
    reader_taken: bool = False
    writer_done: bool = False
    reader_done: bool = False

    def ref(self, direction: str) -> dict[str, str]:
        return {"channel_id": self.id, "access_key": self.key, "direction": direction}


class ChannelHub:
    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.local_tasks: set[asyncio.Task[None]] = set()  # ends served without a socket
        self._sweeper: asyncio.Task[None] | None = None

    def create(self, buffer_size: int | None) -> Channel:
        size = DEFAULT_BUFFER if buffer_size is None else min(max(buffer_size, 1), MAX_BUFFER)
        channel = Channel(protocol.new_id(), protocol.new_id(), asyncio.Queue(size))
        self.channels[channel.id] = channel
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return channel

    def check(self, channel_id: str, key: str | None, direction: str | None) -> int:
        """HTTP status for an upgrade request: 101 means it may proceed."""
        channel = self.channels.get(channel_id)
        if channel is None or key != channel.key:
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
        else:
            if channel.reader_taken:
                return None
            channel.reader_taken = True
        return channel

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
