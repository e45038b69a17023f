"""Middleware calls (spec/workers.md §3.4): global ones by priority, then a binding's own."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ...sdk import III, InvocationError
from . import messages

log = logging.getLogger("pyiii.workers.http")


@dataclass(frozen=True)
class Step:
    function_id: str
    namespace: str | None = None
    metadata: Any = None


async def call_within(iii: III, request: dict[str, Any], seconds: float) -> Any:
    """``trigger_async`` bounded by ``seconds`` (raises ``asyncio.TimeoutError``). The SDK's own
    timeout is set a little later so that the worker's deadline is the one that fires."""
    if seconds <= 0:
        raise asyncio.TimeoutError
    request["timeout_ms"] = int(seconds * 1000) + 1000
    return await asyncio.wait_for(iii.trigger_async(request), seconds)


async def run(iii: III, steps: list[Step], request_info: dict[str, Any], deadline: float,
              timeout_ms: int, trace: dict[str, str] | None = None) -> web.Response | None:
    """Run ``steps`` in order; a ``respond`` answer short-circuits with its response.
    ``trace`` (traceparent / baggage of the request) goes with every call."""
    loop = asyncio.get_running_loop()
    for step in steps:
        payload = {"phase": "preHandler", "request": request_info, "context": {}}
        call: dict[str, Any] = {"function_id": step.function_id, "payload": payload}
        if step.namespace:
            call["namespace"] = step.namespace
        if step.metadata is not None:
            call["metadata"] = step.metadata
        if trace:
            call.update(trace)
        budget = min(timeout_ms / 1000, deadline - loop.time())
        try:
            answer = await call_within(iii, call, budget)
        except asyncio.TimeoutError:
            raise messages.middleware_timeout() from None
        except InvocationError as exc:
            raise messages.failed(exc.code, exc.message) from None
        if isinstance(answer, dict) and answer.get("action") == "respond":
            response = answer.get("response")
            if not isinstance(response, dict):
                response = {}
            # status_code defaults to 200 and the body is sent as JSON
            return messages.result_response({k: response[k] for k in
                                             ("status_code", "headers", "body") if k in response})
        if not (isinstance(answer, dict) and answer.get("action") == "continue"):
            log.info("http: middleware %s answered %r; continuing", step.function_id, answer)
    return None
