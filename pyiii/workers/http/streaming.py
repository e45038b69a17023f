"""The handler call and its two channels (spec/workers.md §3.4-3.5).

Each routed request gets a ``request_body`` channel (the worker writes the raw request bytes)
and a ``response`` channel (the worker reads what a streaming handler writes). The handler's
result and the first binary frame of the response channel race: a non-null result before the
first binary frame wins; a binary frame first starts a streamed response.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from ...sdk import III, Channel, ChannelReader, ChannelWriter, InvocationError
from . import messages
from .middleware import call_within

log = logging.getLogger("pyiii.workers.http")

ATTACH_WAIT_S = 0.5  # a null result with no channel activity within this answers 200 {}
CHUNK = 64 * 1024
RETIRE_TIMEOUT_S = 5.0


class RawStreamResponse(web.StreamResponse):
    """A streamed response to which aiohttp adds no default ``content-type``."""

    async def _prepare_headers(self) -> None:
        had_type = hdrs.CONTENT_TYPE in self._headers
        await super()._prepare_headers()
        if not had_type:
            self._headers.popall(hdrs.CONTENT_TYPE, None)


class ResponseChannel:
    """Our reading end of the ``response`` channel: control frames, then body chunks.

    ``reader`` may be a factory, called on first use. ``attached`` (optional) is a future
    resolved when the handler claims the channel's writing end; with it, the reading end is
    opened only then, so a handler that just returns a result costs no channel socket."""

    def __init__(self, reader: ChannelReader | Callable[[], ChannelReader],
                 attached: "asyncio.Future[None] | None" = None) -> None:
        self._reader = reader if isinstance(reader, ChannelReader) else None
        self._make_reader = None if self._reader is not None else reader
        self.attached = attached
        self.status = 200
        self.binary_seen = False
        self.failed: BaseException | None = None
        # made on first use: most responses never touch the channel
        self._headers: CIMultiDict[str] | None = None
        self._activity: asyncio.Event | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        if self._reader is not None:
            self._reader.on_message(self._on_text)

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict()
        return self._headers

    @property
    def activity(self) -> asyncio.Event:
        """Set once the handler attached (a frame arrived, or it closed the channel)."""
        if self._activity is None:
            self._activity = asyncio.Event()
        return self._activity

    @property
    def chunks(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            self._chunks = self._items()
        return self._chunks

    @property
    def reader(self) -> ChannelReader:
        if self._reader is None:
            self._reader = self._make_reader()  # type: ignore[misc]
            self._reader.on_message(self._on_text)
        return self._reader

    @property
    def opened(self) -> bool:
        """Whether the reading end was (or is being) opened."""
        return self._reader is not None

    def _on_text(self, text: str) -> None:
        self.activity.set()
        if self.binary_seen:
            return  # the first binary frame fixed status and headers
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        if not isinstance(frame, dict):
            return
        if frame.get("type") == "set_status":
            code = frame.get("status_code")
            if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
                self.status = code
        elif frame.get("type") == "set_headers" and isinstance(frame.get("headers"), dict):
            for name, value in frame["headers"].items():
                if messages.valid_header(name, value):
                    self.headers[name] = value

    async def _items(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.reader:
                self.binary_seen = True
                self.activity.set()
                yield chunk
            self.activity.set()  # the writer closed the channel
        except Exception as exc:  # the socket could not be opened: treat as "never attached"
            self.failed = exc

    async def close(self) -> None:
        if self._chunks is not None:
            try:
                await self._chunks.aclose()  # type: ignore[attr-defined]
            except Exception:
                pass
        if self._reader is None:
            return
        try:
            await self._reader.close_async()
        except Exception:
            pass


async def pump_request_body(writer: ChannelWriter, raw: bytes | None,
                            request: web.BaseRequest) -> None:
    """Write the raw request bytes to the ``request_body`` channel, then end it."""
    try:
        if raw is not None:
            if raw:
                await writer.write(raw)
        else:
            async for chunk in request.content.iter_chunked(CHUNK):
                await writer.write(chunk)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.info("http: request body not fully streamed: %r", exc)
    finally:
        try:
            await asyncio.wait_for(asyncio.shield(writer.close_async()), RETIRE_TIMEOUT_S)
        except BaseException:
            pass


async def retire(iii: III, request_channel: Channel, response_channel: Channel) -> None:
    """Remove both channels: finish the ends the handler never took (an end it holds is
    refused with 409 and left to it)."""

    async def drain() -> None:
        async for _ in iii.channel_end(request_channel.reader_ref):
            pass

    async def end_writer() -> None:
        await iii.channel_end(response_channel.writer_ref).close_async()

    for job in (drain, end_writer):
        try:
            await asyncio.wait_for(job(), RETIRE_TIMEOUT_S)
        except Exception:
            pass


def _error_of(task: "asyncio.Future[Any]", timeout_ms: int) -> messages.HttpError | None:
    exc = task.exception()
    if exc is None:
        return None
    if isinstance(exc, asyncio.TimeoutError):
        return messages.request_timeout(timeout_ms)
    if isinstance(exc, InvocationError):
        return messages.failed(exc.code, exc.message)
    return messages.internal(exc)


async def answer(iii: III, request: web.BaseRequest, call: dict[str, Any], channel: ResponseChannel,
                 deadline: float, timeout_ms: int, extra: dict[str, str],
                 invocation: "asyncio.Future[Any] | None" = None) -> web.StreamResponse:
    """Invoke the handler (unless ``invocation`` is the call already started) and turn its
    result or its response channel into the response."""
    loop = asyncio.get_running_loop()
    if invocation is None:
        invocation = asyncio.ensure_future(call_within(iii, call, deadline - loop.time()))
    attached = channel.attached
    first: asyncio.Future[Any] | None = None

    def start_first() -> "asyncio.Future[Any]":
        nonlocal first
        if first is None:
            first = asyncio.ensure_future(channel.chunks.__anext__())
        return first

    if attached is None:
        start_first()
    try:
        # the result, or the first chunk of a streamed response, whichever comes first
        while not invocation.done():
            watch = first if first is not None else attached
            assert watch is not None
            await asyncio.wait({invocation, watch}, timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
            if first is None and attached is not None and attached.done():
                start_first()  # the handler took the response writer: read what it sends
                continue
            break
        if first is not None and _has_chunk(first):
            return await _stream(request, channel, first.result(), invocation, extra)
        if not invocation.done():  # the channel ended first: the result decides
            await asyncio.wait({invocation}, timeout=max(0.0, deadline - loop.time()))
        if not invocation.done():
            raise messages.request_timeout(timeout_ms)
        error = _error_of(invocation, timeout_ms)
        if error is not None:
            raise error
        result = invocation.result()
        if result is not None:
            return messages.result_response(result, extra)
        # no result: stream if the handler attached to the channel, else 200 {}
        waited = loop.time()
        if first is None:
            assert attached is not None
            if not attached.done():
                await asyncio.wait({attached}, timeout=min(ATTACH_WAIT_S,
                                                           max(0.0, deadline - loop.time())))
            if not attached.done() or attached.cancelled():
                return messages.result_response({}, extra)
            start_first()
        first_ = start_first()
        if not channel.activity.is_set() and not first_.done():
            left = ATTACH_WAIT_S - (loop.time() - waited)
            try:
                await asyncio.wait_for(asyncio.shield(channel.activity.wait()),
                                       min(max(0.0, left), max(0.0, deadline - loop.time())))
            except asyncio.TimeoutError:
                pass
        if not channel.activity.is_set() or channel.failed is not None:
            return messages.result_response({}, extra)
        if not first_.done():
            await asyncio.wait({first_}, timeout=max(0.0, deadline - loop.time()))
        if not first_.done():
            raise messages.request_timeout(timeout_ms)
        if _has_chunk(first_):
            return await _stream(request, channel, first_.result(), invocation, extra)
        # the channel closed without a body: the status and headers it set, empty body
        return _head_only(channel, extra)
    finally:
        if first is not None:
            if not first.done():
                first.cancel()
            elif not first.cancelled():
                first.exception()  # retrieved: an ended channel is not an error
        if not invocation.done():
            invocation.add_done_callback(_log_late_failure)


def _has_chunk(task: "asyncio.Future[Any]") -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _head_only(channel: ResponseChannel, extra: dict[str, str]) -> web.Response:
    headers = CIMultiDict(channel.headers)
    for name, value in extra.items():
        headers.setdefault(name, value)
    return web.Response(status=channel.status, headers=headers)


async def _stream(request: web.BaseRequest, channel: ResponseChannel, chunk: bytes,
                  invocation: "asyncio.Future[Any]", extra: dict[str, str]) -> web.StreamResponse:
    headers = CIMultiDict(channel.headers)
    for name, value in extra.items():
        headers.setdefault(name, value)
    response = RawStreamResponse(status=channel.status, headers=headers)
    await response.prepare(request)
    head = request.method == "HEAD"
    while True:
        if not head:
            await response.write(chunk)
        nxt = asyncio.ensure_future(channel.chunks.__anext__())
        if not invocation.done():
            await asyncio.wait({nxt, invocation}, return_when=asyncio.FIRST_COMPLETED)
        if invocation.done() and not invocation.cancelled() and invocation.exception() is not None:
            nxt.cancel()
            log.warning("http: handler %s failed after streaming began (%r); response cut short",
                        request.path, invocation.exception())
            if request.transport is not None:
                request.transport.close()
            return response
        try:
            chunk = await nxt
        except StopAsyncIteration:
            break
    await response.write_eof()
    return response


def _log_late_failure(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("http: handler failed after the response was sent: %r", task.exception())
