"""Channels: byte streams between workers that bypass the control socket (spec §7).

A channel is created by ``engine::channels::create``; its two refs travel inside ordinary
payloads and each end opens ``<engine>/ws/channels/<id>?key=..&dir=read|write`` lazily,
on first use, so a ref that is never used costs no socket. Binary messages are the byte
stream (≤ 64 KiB each), text messages are out-of-band control messages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import quote

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from pyiii.protocol import KIB, MAX_INBOUND_MESSAGE

__all__ = [
    "CHUNK_SIZE",
    "StreamChannelRef",
    "ChannelWriter",
    "ChannelReader",
    "Channel",
    "is_channel_ref",
    "build_channel_url",
    "resolve_channel_refs",
]

log = logging.getLogger("pyiii.sdk.channels")

CHUNK_SIZE = 64 * KIB

#: ``(url, headers) -> socket`` with ``send``, ``close`` and async iteration; websockets by default
SocketOpener = Callable[[str, "dict[str, str] | None"], Awaitable[Any]]


class StreamChannelRef(dict):
    """``{channel_id, access_key, direction}``. A ``dict`` so it can be dropped into any
    payload and travel over any transport (JSON or in-process) as is, with attribute
    access for code written against the official SDK's model."""

    def __init__(self, channel_id: str, access_key: str, direction: str) -> None:
        super().__init__(channel_id=channel_id, access_key=access_key, direction=direction)

    channel_id = property(lambda self: self["channel_id"])
    access_key = property(lambda self: self["access_key"])
    direction = property(lambda self: self["direction"])

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return dict(self)

    @classmethod
    def of(cls, value: dict[str, Any]) -> "StreamChannelRef":
        return cls(value["channel_id"], value["access_key"], value["direction"])


def is_channel_ref(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("direction") in ("read", "write")
        and isinstance(value.get("channel_id"), str)
        and isinstance(value.get("access_key"), str)
    )


def build_channel_url(engine_ws_base: str, channel_id: str, access_key: str, direction: str) -> str:
    """Channel route on the engine the control link uses; a query already present on the
    engine URL (e.g. a token) is kept in front of the channel's own parameters."""
    base, _, query = engine_ws_base.partition("?")
    params = "&".join(p for p in (query, f"key={quote(access_key, safe='')}", f"dir={direction}") if p)
    return f"{base.rstrip('/')}/ws/channels/{channel_id}?{params}"


@functools.lru_cache(maxsize=64)
def _proxy_for(base: str) -> str | None:
    # the proxy environment is read once per engine address: websockets reads it on every
    # connect, a measurable cost when every HTTP request opens channels
    return get_proxy(parse_uri(base))


async def _open_websocket(url: str, headers: dict[str, str] | None) -> Any:
    return await ws_connect(url, additional_headers=headers, max_size=MAX_INBOUND_MESSAGE,
                            proxy=_proxy_for(url.split("/ws/channels/", 1)[0]),
                            compression=None)


class _ChannelEnd:
    """Lazy socket shared by both ends: opened once, under a lock, on first use. Every ref in
    a payload becomes one of these, used or not (an HTTP handler gets two), so the URL, the
    lock and the stream facade are only made when first needed."""

    # set on first use; class-level defaults keep construction to the fields every end needs
    _typed_ref: StreamChannelRef | None = None
    _ws: Any = None
    _lock: asyncio.Lock | None = None
    _stream: Any = None

    def __init__(self, engine_ws_base: str, ref: dict[str, Any], direction: str,
                 headers: dict[str, str] | None, opener: SocketOpener | None,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self._ref = ref
        # the client's loop: lets sync handlers (executor threads) use fire-and-forget ops
        self._loop = loop
        self._base = engine_ws_base
        self._direction = direction
        self._headers = headers
        self._opener = opener or _open_websocket

    @property
    def ref(self) -> StreamChannelRef:
        if self._typed_ref is None:
            self._typed_ref = StreamChannelRef.of(self._ref)
        return self._typed_ref

    @property
    def _url(self) -> str:
        ref = self._ref
        return build_channel_url(self._base, ref["channel_id"], ref["access_key"], self._direction)

    async def _socket(self) -> Any:
        if self._ws is None:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._ws is None:
                    self._ws = await self._opener(self._url, self._headers)
        return self._ws


class ChannelWriter(_ChannelEnd):
    """Writing end. Operations run strictly in call order, whether awaited or not:
    ``send_message``/``close`` return an awaitable task, so both the official SDK's
    fire-and-forget style and ``await writer.close()`` work and never reorder data."""

    _tail: "asyncio.Future[Any] | None" = None  # the last queued operation
    _closed = False

    def __init__(self, engine_ws_base: str, ref: dict[str, Any], headers: dict[str, str] | None = None,
                 *, opener: SocketOpener | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(engine_ws_base, ref, "write", headers, opener, loop)

    @property
    def stream(self) -> "WritableStream":
        if self._stream is None:
            self._stream = WritableStream(self)
        return self._stream

    def _enqueue(self, op: Callable[[], Awaitable[None]]) -> Any:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is not None and running is not self._loop:
            # called from a sync handler's thread: hop to the client loop (FIFO keeps order)
            async def hop() -> None:
                await self._enqueue(op)

            return asyncio.run_coroutine_threadsafe(hop(), self._loop)
        prev = self._tail

        async def run() -> None:
            if prev is not None and not prev.done():
                await asyncio.wait((prev,))
            await op()

        task = asyncio.ensure_future(run())
        task.add_done_callback(_log_failure)
        self._tail = task
        return task

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to the stream, split into ≤ 64 KiB binary messages."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data

        async def op() -> None:
            ws = await self._socket()
            if len(view) <= CHUNK_SIZE:
                await ws.send(bytes(view))
                return
            for start in range(0, len(view), CHUNK_SIZE):
                await ws.send(bytes(view[start:start + CHUNK_SIZE]))

        await _wait(self._enqueue(op))

    def send_message(self, msg: str) -> "asyncio.Future[None]":
        """Send an out-of-band text message (e.g. ``{"type":"set_status",...}``)."""

        async def op() -> None:
            ws = await self._socket()
            await ws.send(msg)

        return self._enqueue(op)

    async def send_message_async(self, msg: str) -> None:
        await _wait(self.send_message(msg))

    def close(self) -> "asyncio.Future[None]":
        """End the stream (after everything written before). Idempotent."""

        async def op() -> None:
            if self._closed:
                return
            self._closed = True
            ws = await self._socket()  # an unopened writer still ends: open, then close
            await ws.close()

        return self._enqueue(op)

    async def close_async(self) -> None:
        await _wait(self.close())


class ChannelReader(_ChannelEnd):
    """Reading end: ``async for chunk in reader`` yields the bytes; text messages go to
    ``on_message`` callbacks as they arrive, in stream order."""

    def __init__(self, engine_ws_base: str, ref: dict[str, Any], headers: dict[str, str] | None = None,
                 *, opener: SocketOpener | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(engine_ws_base, ref, "read", headers, opener, loop)
        self._callbacks: list[Callable[[str], Any]] = []

    @property
    def stream(self) -> "ReadableStream":
        if self._stream is None:
            self._stream = ReadableStream(self)
        return self._stream

    def on_message(self, callback: Callable[[str], Any]) -> None:
        self._callbacks.append(callback)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        ws = await self._socket()
        try:
            async for message in ws:
                if isinstance(message, (bytes, bytearray, memoryview)):
                    yield bytes(message)
                    continue
                for callback in self._callbacks:
                    try:
                        result = callback(message)
                        if asyncio.iscoroutine(result):
                            await result
                    except Exception:
                        log.exception("channel message callback failed")
        except ConnectionClosed:
            pass

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def close_async(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def close(self) -> "asyncio.Future[None]":
        return asyncio.ensure_future(self.close_async())


class WritableStream:
    """Node-style facade (``write`` / ``end``) over a writer, as in the official SDK."""

    def __init__(self, writer: ChannelWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> Any:
        writer = self._writer
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if writer._loop is not None and running is not writer._loop:
            # a sync handler's thread: run on the client loop (FIFO keeps it before a close)
            return asyncio.run_coroutine_threadsafe(writer.write(data), writer._loop)
        return asyncio.ensure_future(writer.write(data))

    def end(self, data: bytes | None = None) -> "asyncio.Future[None]":
        if data is not None:
            self.write(data)
        return self._writer.close()


class ReadableStream:
    """Async-iterable facade over a reader, as in the official SDK."""

    def __init__(self, reader: ChannelReader) -> None:
        self._reader = reader

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._reader.__aiter__()


@dataclass
class Channel:
    """Both ends of a new channel plus their refs (pass a ref to another worker)."""

    writer: ChannelWriter
    reader: ChannelReader
    writer_ref: StreamChannelRef
    reader_ref: StreamChannelRef


_LEAVES = frozenset({str, int, float, bool, type(None), bytes})


def resolve_channel_refs(data: Any, make: Callable[[dict[str, Any]], Any]) -> Any:
    """Replace every ChannelRef anywhere in ``data`` with ``make(ref)``; containers without
    refs are returned as the same objects (no copy on the hot path). Runs on every incoming
    invocation, so scalars are skipped by their exact class before any ``isinstance``, empty
    containers are skipped, and the full ref test only runs on dicts that have a
    ``channel_id``."""
    if isinstance(data, dict):
        return _resolve_dict(data, make)
    if isinstance(data, list):
        return _resolve_list(data, make)
    return data


def _resolve_dict(data: dict[str, Any], make: Callable[[dict[str, Any]], Any]) -> Any:
    if "channel_id" in data and is_channel_ref(data):
        return make(data)
    out = None
    for key, value in data.items():
        cls = value.__class__
        if cls in _LEAVES:
            continue
        if cls is dict:  # the common container: a ref is made here, without another call
            if not value:
                continue
            if "channel_id" in value and is_channel_ref(value):
                new = make(value)
            else:
                new = _resolve_dict(value, make)
        else:
            new = _resolve_other(value, make)
        if new is not value:
            if out is None:
                out = dict(data)
            out[key] = new
    return data if out is None else out


def _resolve_list(data: list[Any], make: Callable[[dict[str, Any]], Any]) -> Any:
    out = None
    for i, value in enumerate(data):
        if value.__class__ in _LEAVES:
            continue
        new = _resolve_other(value, make)
        if new is not value:
            if out is None:
                out = list(data)
            out[i] = new
    return data if out is None else out


def _resolve_other(value: Any, make: Callable[[dict[str, Any]], Any]) -> Any:
    if isinstance(value, dict):
        return _resolve_dict(value, make) if value else value
    if isinstance(value, list) and value:
        return _resolve_list(value, make)
    return value


async def _wait(fut: Any) -> None:
    """Await an op handle made on this loop or, from a foreign loop, on the client's."""
    if isinstance(fut, concurrent.futures.Future):
        fut = asyncio.wrap_future(fut)
    await fut


def _log_failure(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        # the caller may never await a fire-and-forget op: make sure failures are visible
        log.debug("channel operation failed: %r", task.exception())
