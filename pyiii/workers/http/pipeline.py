"""One request through iii-http (spec/workers.md §3.3): preflight, slot, route, middleware,
body, condition, binding middleware, handler, response."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...sdk import InvocationError
from . import cors, messages, middleware, streaming
from .config import HttpSettings
from .routing import Route

if TYPE_CHECKING:
    from .worker import HttpWorker

log = logging.getLogger("pyiii.workers.http")


async def handle(worker: "HttpWorker", request: web.BaseRequest) -> web.StreamResponse:
    settings = worker.settings  # one snapshot per request: a reload applies to the next one
    if cors.is_preflight(request):
        return cors.preflight(settings.cors, request)
    extra = cors.response_headers(settings.cors, request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.default_timeout / 1000
    limiter = worker.limiter
    if not limiter.try_acquire() and not await limiter.acquire(deadline - loop.time()):
        return messages.request_timeout(settings.default_timeout).response(extra)
    try:
        return await _pipeline(worker, request, settings, deadline, extra)
    except messages.HttpError as error:
        return error.response(extra)
    except Exception as exc:
        return messages.internal(exc).response(extra)
    finally:
        limiter.release()


async def _pipeline(worker: "HttpWorker", request: web.BaseRequest, settings: HttpSettings,
                    deadline: float, extra: dict[str, str]) -> web.StreamResponse:
    path = request.rel_url.raw_path
    match = worker.routes.match(request.method, path)
    if match is None:
        allowed = worker.routes.allowed(path)
        raise messages.method_not_allowed(allowed) if allowed else messages.not_found()
    route, binding = match.route, match.route.binding
    headers = messages.headers_of(request)
    query = messages.query_of(request)
    info = {"path_params": match.path_params, "query_params": query, "headers": headers,
            "method": request.method}
    ms = settings.default_timeout
    if settings.middleware:
        steps = [middleware.Step(m.function_id) for m in settings.middleware]
        early = await middleware.run(worker.iii, steps, info, deadline, ms)
        if early is not None:
            return _with(early, extra)

    if "application/json" in request.headers.get("Content-Type", "").lower():
        raw, body = await _read_body(request, settings, deadline)
    else:  # other bodies stay unread: they are streamed into the request channel
        raw = body = None
    payload: dict[str, Any] = {
        "path": route.api_path, "method": request.method, "path_params": match.path_params,
        "query_params": query, "headers": headers, "body": body,
        "trigger": {"type": "http", "path": route.api_path, "method": route.method},
    }
    namespace = binding.namespace or "default"
    if route.condition_function_id:
        await _condition(worker, route, payload, namespace, deadline, ms)
    if route.middleware_function_ids:
        steps = [middleware.Step(f, namespace, binding.metadata)
                 for f in route.middleware_function_ids]
        early = await middleware.run(worker.iii, steps, info, deadline, ms)
        if early is not None:
            return _with(early, extra)
    return await _invoke(worker, request, route, payload, raw, deadline, ms, extra)


def _with(response: web.Response, extra: dict[str, str]) -> web.Response:
    for name, value in extra.items():
        response.headers.setdefault(name, value)
    return response


async def _read_body(request: web.BaseRequest, settings: HttpSettings,
                     deadline: float) -> tuple[bytes | None, Any]:
    """JSON bodies are buffered (up to ``body_limit``) and parsed; others stay unread and are
    streamed into the request channel later."""
    content_type = request.headers.get("Content-Type", "").lower()
    if "application/json" not in content_type:
        return None, None
    limit = settings.body_limit
    length = request.content_length
    if length is not None and length > limit:
        raise messages.payload_too_large(limit)
    loop = asyncio.get_running_loop()

    async def read() -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise messages.payload_too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    try:
        raw = await asyncio.wait_for(read(), max(0.0, deadline - loop.time()))
    except asyncio.TimeoutError:
        raise messages.request_timeout(settings.default_timeout) from None
    return raw, messages.parse_json_body(raw)


async def _condition(worker: "HttpWorker", route: Route, payload: dict[str, Any], namespace: str,
                     deadline: float, ms: int) -> None:
    """The exact-false rule of spec/protocol.md §5.11 (as ``conditions.passes``), with the
    failing function's own code kept for the 500 body and the request deadline applied."""
    call: dict[str, Any] = {"function_id": route.condition_function_id, "payload": payload,
                            "namespace": namespace}
    if route.binding.metadata is not None:
        call["metadata"] = route.binding.metadata
    loop = asyncio.get_running_loop()
    try:
        result = await middleware.call_within(worker.iii, call, deadline - loop.time())
    except asyncio.TimeoutError:
        raise messages.request_timeout(ms) from None
    except InvocationError as exc:
        raise messages.failed(exc.code, exc.message) from None
    if result is False:
        raise messages.condition_not_met()


async def _invoke(worker: "HttpWorker", request: web.BaseRequest, route: Route,
                  payload: dict[str, Any], raw: bytes | None, deadline: float, ms: int,
                  extra: dict[str, str]) -> web.StreamResponse:
    iii = worker.iii
    hub = iii.channel_hub
    if hub is not None:
        return await _invoke_local(worker, hub, request, route, payload, raw, deadline, ms, extra)
    loop = asyncio.get_running_loop()
    try:
        request_channel, response_channel = await asyncio.wait_for(
            asyncio.gather(iii.create_channel_async(), iii.create_channel_async()),
            max(0.0, deadline - loop.time()))
    except asyncio.TimeoutError:
        raise messages.request_timeout(ms) from None
    payload["request_body"] = request_channel.reader_ref
    payload["response"] = response_channel.writer_ref
    call = _call_of(route, payload)
    pump = asyncio.ensure_future(
        streaming.pump_request_body(request_channel.writer, raw, request))
    reader = streaming.ResponseChannel(response_channel.reader)
    try:
        return await streaming.answer(iii, request, call, reader, deadline, ms, extra)
    finally:
        if not pump.done():
            pump.cancel()
        worker.spawn(_finish(iii, pump, reader, request_channel, response_channel))


def _call_of(route: Route, payload: dict[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = {"function_id": route.binding.function_id, "payload": payload,
                            "namespace": route.binding.namespace or "default"}
    if route.binding.metadata is not None:
        call["metadata"] = route.binding.metadata
    return call


async def _invoke_local(worker: "HttpWorker", hub: Any, request: web.BaseRequest, route: Route,
                        payload: dict[str, Any], raw: bytes | None, deadline: float, ms: int,
                        extra: dict[str, str]) -> web.StreamResponse:
    """iii-http in the engine's process: both channels are made in the engine's channel hub
    directly; a body known in full is put into the request channel without a writer; the
    response channel is read only once the handler claims its writing end. A handler that
    just returns a result then costs no socket, pipe or task for either channel."""
    iii = worker.iii
    request_channel, response_channel = hub.create(None), hub.create(None)
    payload["request_body"] = request_channel.ref("read")
    payload["response"] = response_channel.ref("write")
    call = _call_of(route, payload)
    # the SDK's timeout is a backstop: the request deadline below is the one that answers
    call["timeout_ms"] = ms + 1000
    pump: asyncio.Future[None] | None = None
    known = raw if raw is not None else (b"" if not request.body_exists else None)
    if known is None or not hub.preload(request_channel.id, known):
        writer = iii.channel_end(request_channel.ref("write"))
        pump = asyncio.ensure_future(streaming.pump_request_body(writer, raw, request))
    reader = streaming.ResponseChannel(lambda: iii.channel_end(response_channel.ref("read")),
                                       attached=hub.writer_claimed(response_channel.id))
    try:
        invocation = iii.trigger_nowait(call)
    except Exception as exc:
        invocation = asyncio.get_running_loop().create_future()
        invocation.set_exception(exc)
    try:
        return await streaming.answer(iii, request, call, reader, deadline, ms, extra, invocation)
    finally:
        if pump is None and not reader.opened:
            hub.retire(request_channel.id)
            hub.retire(response_channel.id)
        else:
            if pump is not None and not pump.done():
                pump.cancel()
            worker.spawn(_finish_local(hub, pump, reader, request_channel.id,
                                       response_channel.id))


async def _finish_local(hub: Any, pump: "asyncio.Future[None] | None",
                        reader: streaming.ResponseChannel, request_id: str,
                        response_id: str) -> None:
    if pump is not None:
        try:
            await asyncio.wait({pump}, timeout=streaming.RETIRE_TIMEOUT_S)
        except Exception:
            pass
    await reader.close()
    hub.retire(request_id)
    hub.retire(response_id)


async def _finish(iii: Any, pump: "asyncio.Future[None]", reader: streaming.ResponseChannel,
                  request_channel: Any, response_channel: Any) -> None:
    try:
        await asyncio.wait({pump}, timeout=streaming.RETIRE_TIMEOUT_S)
    except Exception:
        pass
    await reader.close()
    await streaming.retire(iii, request_channel, response_channel)
