"""Turning a user handler into one uniform coroutine ``(data, metadata) -> result``.

Decided once at registration, so the per-call path does no introspection: whether the
handler is async, whether it wants ``metadata`` (only a parameter literally named
``metadata``, so handlers with unrelated extra parameters keep their call shape), and
whether it must run off the event loop (sync handlers go to a thread executor so a
blocking handler cannot stall every other invocation).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import traceback
from typing import Any, Awaitable, Callable

from pyiii.protocol import Code

__all__ = ["Invoker", "make_invoker", "metadata_mode", "error_body_for", "to_json_value",
           "request_format_of", "response_format_of"]

Invoker = Callable[[Any, Any], Awaitable[Any]]


def metadata_mode(handler: Callable[..., Any]) -> str:
    """``"positional"``, ``"keyword"`` or ``"none"``: how ``metadata`` is passed."""
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return "none"
    param = params.get("metadata")
    if param is None:
        return "none"
    if param.kind is inspect.Parameter.KEYWORD_ONLY:
        return "keyword"
    positional = [p for p in params.values()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 and positional[1] is param:
        return "positional"
    if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
        return "keyword"
    return "none"


def _is_async(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))


def make_invoker(handler: Callable[..., Any]) -> Invoker:
    mode = metadata_mode(handler)
    if mode == "positional":
        def call(data: Any, metadata: Any) -> Any:
            return handler(data, metadata)
    elif mode == "keyword":
        def call(data: Any, metadata: Any) -> Any:
            return handler(data, metadata=metadata)
    else:
        def call(data: Any, metadata: Any) -> Any:
            return handler(data)

    if _is_async(handler):
        # one coroutine per call and no wrapper in between: this runs for every invocation
        if mode == "none":
            async def invoke_async(data: Any, metadata: Any) -> Any:
                return to_json_value(await handler(data))
        else:
            async def invoke_async(data: Any, metadata: Any) -> Any:
                return to_json_value(await call(data, metadata))

        return invoke_async

    async def invoke_sync(data: Any, metadata: Any) -> Any:
        # copy the context so context variables set by the caller follow into the thread
        ctx = contextvars.copy_context()
        result = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(ctx.run, call, data, metadata))
        if inspect.isawaitable(result):  # a plain callable returning a coroutine
            result = await result
        return to_json_value(result)

    return invoke_sync


_PLAIN_TYPES = (dict, list, str, int, float, bool)
_PLAIN = frozenset(_PLAIN_TYPES)  # the exact classes: one set lookup for the usual case


def to_json_value(value: Any) -> Any:
    """Handler results as JSON-ready values: models are dumped, the rest passes untouched
    (orjson and the in-process transport take dicts, lists and scalars as they are)."""
    if value is None or value.__class__ in _PLAIN or isinstance(value, _PLAIN_TYPES):
        return value
    dump = getattr(value, "model_dump", None)
    if dump is not None and not isinstance(value, type):
        return dump(mode="json")
    return value


def error_body_for(exc: BaseException) -> dict[str, Any]:
    """What a handler failure becomes on the wire: ``invocation_failed``, the exception
    text, and the formatted traceback for the caller's debugging. A handler that raises
    ``InvocationError`` chooses its own code and message (how workers report their
    documented error codes)."""
    from .errors import InvocationError

    if isinstance(exc, InvocationError):
        return {"code": exc.code, "message": exc.message}
    return {
        "code": Code.INVOCATION_FAILED,
        "message": str(exc),
        "stacktrace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _schema_of(annotation: Any) -> Any:
    schema = getattr(annotation, "model_json_schema", None)
    return schema() if isinstance(annotation, type) and schema is not None else None


def request_format_of(handler: Callable[..., Any]) -> Any:
    """JSON Schema of the first parameter when it is annotated with a model class."""
    try:
        params = list(inspect.signature(handler).parameters.values())
        hints = inspect.get_annotations(handler, eval_str=True) if inspect.isfunction(handler) else {}
    except Exception:
        return None
    return _schema_of(hints.get(params[0].name)) if params else None


def response_format_of(handler: Callable[..., Any]) -> Any:
    """JSON Schema of the return annotation when it is a model class."""
    try:
        hints = inspect.get_annotations(handler, eval_str=True) if inspect.isfunction(handler) else {}
    except Exception:
        return None
    return _schema_of(hints.get("return"))
