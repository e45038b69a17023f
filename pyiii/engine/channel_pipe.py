"""Channel ends for in-process workers: the channel hub without a socket in between.

An in-process worker (iii-http above all, which opens channels for every request) would
otherwise open a loopback WebSocket per channel end. ``open_local_end`` gives the SDK an object
with the subset of the websockets connection API its channel reader/writer use, wired through
a bounded pipe to ``ChannelHub.serve``, so back-pressure and the end-of-stream rules stay the
hub's own.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from ..protocol import Close
from .channels import ChannelHub

PIPE_DEPTH = 16
_END = object()


class _CloseInfo:
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Protocol:
    close_rcvd: _CloseInfo | None = None


class PipeEnd:
    """One side of an in-memory message pipe, shaped like a websockets connection."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(PIPE_DEPTH)
        self.peer: PipeEnd | None = None
        self.protocol = _Protocol()
        self.close_code: int | None = None
        self._closed = asyncio.Event()

    async def send(self, message: str | bytes) -> None:
        peer = self.peer
        if self._closed.is_set() or peer is None or peer._closed.is_set():
            raise ConnectionClosedOK(None, None)
        await peer._inbox.put(message)

    async def recv(self) -> str | bytes:
        item = await self._inbox.get()
        if item is _END:
            self._inbox.put_nowait(_END)  # stay ended for later readers
            raise ConnectionClosedOK(None, None)
        return item

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosedOK:
                return

    async def close(self, code: int = Close.NORMAL, reason: str = "") -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.close_code = code
        _drop_waiting(self._inbox)  # what this end has not read is moot once it closes
        self._inbox.put_nowait(_END)
        peer = self.peer
        if peer is not None and not peer._closed.is_set():
            peer.protocol.close_rcvd = _CloseInfo(code, reason)
            peer.close_code = code
            peer._closed.set()
            await peer._inbox.put(_END)  # after the data already sent: the peer reads it all

    async def wait_closed(self) -> None:
        await self._closed.wait()


def _drop_waiting(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()


def open_local_end(hub: ChannelHub, url: str) -> PipeEnd:
    """The SDK-side end for channel URL ``…/ws/channels/<id>?key=…&dir=…``; the hub serves the
    other end in a task. Refusals raise like a failed WebSocket upgrade would."""
    parts = urlsplit(url)
    channel_id = parts.path.rsplit("/", 1)[-1]
    query = parse_qs(parts.query)
    key, direction = query.get("key", [None])[0], query.get("dir", [None])[0]
    status = hub.check(channel_id, key, direction)
    channel = hub.claim(channel_id, direction) if status == 101 else None
    if channel is None:
        raise InvalidStatus(_Status(status if status != 101 else 409))  # type: ignore[arg-type]
    mine, theirs = PipeEnd(), PipeEnd()
    mine.peer, theirs.peer = theirs, mine
    task = asyncio.ensure_future(hub.serve(theirs, channel, direction))  # type: ignore[arg-type]
    hub.local_tasks.add(task)
    task.add_done_callback(hub.local_tasks.discard)
    return mine


class _Status:
    """Enough of an HTTP response for ``InvalidStatus`` to describe the refusal."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason_phrase = {404: "Not Found", 400: "Bad Request", 409: "Conflict"}.get(status, "")
        self.headers: dict[str, str] = {}
        self.body = b""
