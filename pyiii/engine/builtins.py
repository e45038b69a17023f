"""The engine's own functions that change things: durable triggers, channels, log, baggage.

``register_builtins`` is the single list of every ``engine::*`` id the engine implements; the
read-only ones live in :mod:`pyiii.engine.introspection`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .. import protocol
from ..protocol import DEFAULT_NAMESPACE, Code
from . import introspection as intro
from . import logs
from .errors import CallError, bad_input
from .triggers import Binding

if TYPE_CHECKING:
    from .core import CallContext, Engine

DURABLE_ACK_TIMEOUT_S = 10.0
log = logging.getLogger("pyiii.engine")

_LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO,
           "warn": logging.WARNING, "error": logging.ERROR}


def register_builtins(engine: "Engine") -> None:
    add = engine.add_engine_function
    add("engine::workers::register", _unreachable, "Register worker metadata", internal=True)
    add("engine::workers::list", intro.workers_list, "List connected workers")
    add("engine::workers::info", intro.workers_info, "Details of one connected worker")
    add("engine::functions::list", intro.functions_list, "List registered functions")
    add("engine::functions::info", intro.functions_info, "Details of registered functions")
    add("engine::triggers::list", intro.triggers_list, "List trigger types")
    add("engine::triggers::info", intro.triggers_info, "Details of one trigger type")
    add("engine::registered-triggers::list", intro.registered_list, "List trigger bindings")
    add("engine::registered-triggers::info", intro.registered_info, "Details of one binding")
    add("engine::register_trigger", register_trigger, "Create a durable trigger binding")
    add("engine::unregister_trigger", unregister_trigger, "Remove any trigger binding by id")
    add("engine::channels::create", channels_create, "Create a streaming channel", internal=True)
    for level in _LEVELS:
        add(f"engine::log::{level}", _logger(level), f"Write a {level} line to the engine log")
    add("engine::baggage::get", baggage_get, "Read one W3C baggage entry of this call")
    add("engine::baggage::get_all", baggage_get_all, "Read the W3C baggage of this call")
    add("engine::baggage::set", baggage_set, "Explain how baggage propagates")


def _unreachable(ctx: "CallContext", data: dict[str, Any]) -> Any:
    # handled synchronously by the core before routing; reached only in another namespace
    raise CallError(Code.INVALID_NAMESPACE, "engine::workers::register is called in \"default\"")


def _str(ctx: "CallContext", data: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise bad_input(ctx.function_id, f"missing field `{key}`")
        return None
    if not isinstance(value, str):
        raise bad_input(ctx.function_id, f"`{key}` must be a string")
    return value


async def register_trigger(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    trigger_type = _str(ctx, data, "trigger_type", required=True)
    function_id = _str(ctx, data, "function_id", required=True)
    namespace = _str(ctx, data, "namespace")
    trigger_namespace = _str(ctx, data, "trigger_namespace")
    assert trigger_type is not None and function_id is not None
    if protocol.is_blank(namespace) or protocol.is_blank(trigger_namespace):
        raise CallError(Code.INVALID_NAMESPACE, "namespace and trigger_namespace must not be blank")
    policy = ctx.caller.policy if ctx.caller is not None else None
    if policy is not None:
        denial = policy.check_register_trigger(trigger_type, function_id,
                                               namespace or DEFAULT_NAMESPACE)
        if denial is not None:
            raise CallError(Code.FORBIDDEN, denial)
    binding = Binding(protocol.new_id(), trigger_type, function_id, data.get("config"),
                      data.get("metadata"), None, namespace or DEFAULT_NAMESPACE,
                      trigger_namespace, DEFAULT_NAMESPACE)
    triggers = ctx.engine.triggers
    binding.ack = asyncio.get_running_loop().create_future()
    triggers.bind(binding)
    key = binding.provider_key
    provider = triggers.types[key].provider if key is not None else None
    if provider is None and not binding.ack.done():
        binding.ack = None  # pending, or served by the engine itself: nothing to wait for
        return {"id": binding.id}
    try:
        error = await asyncio.wait_for(asyncio.shield(binding.ack), DURABLE_ACK_TIMEOUT_S)
    except asyncio.TimeoutError:
        error = None
    binding.ack = None
    if error is not None:
        triggers.unbind(None, binding.id)
        raise CallError(Code.TRIGGER_REGISTRATION_FAILED, f"{error['code']}: {error['message']}")
    return {"id": binding.id}


def unregister_trigger(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    trigger_id = _str(ctx, data, "id", required=True)
    assert trigger_id is not None
    return {"removed": ctx.engine.triggers.unbind(None, trigger_id)}


def channels_create(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    size = data.get("buffer_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise bad_input(ctx.function_id, "`buffer_size` must be an integer or null")
    channel = ctx.engine.channels.create(size)
    return {"writer": channel.ref("write"), "reader": channel.ref("read")}


def _logger(level: str) -> Any:
    number = _LEVELS[level]

    def write(ctx: "CallContext", data: dict[str, Any]) -> None:
        message = _str(ctx, data, "message", required=True)
        extras = []
        for key in ("service_name", "trace_id", "span_id"):
            value = data.get(key)
            if isinstance(value, str):
                extras.append(f"{key}={value}")
        if data.get("data") is not None:
            extras.append(f"data={protocol.encode(data['data']).decode()}")
        who = ctx.caller.label() if ctx.caller is not None else "engine"
        service = data.get("service_name")
        if not isinstance(service, str):
            service = ctx.caller.name if ctx.caller is not None else None
        ids = {key: value if isinstance(value, str) else None
               for key in ("trace_id", "span_id") for value in [data.get(key)]}
        logs.worker_record(number, message or "", component=who, service_name=service,
                           attributes=data.get("data"), line=" ".join([message or "", *extras]),
                           **ids)
        return None

    return write


def _parse_baggage(header: str | None) -> dict[str, str]:
    entries: dict[str, str] = {}
    for member in (header or "").split(","):
        pair = member.split(";", 1)[0]
        if "=" not in pair:
            continue
        key, value = pair.split("=", 1)
        if key.strip():
            entries[key.strip()] = unquote(value.strip())
    return entries


def baggage_get(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    key = _str(ctx, data, "key", required=True)
    return {"value": _parse_baggage(ctx.baggage).get(key or "")}


def baggage_get_all(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    return {"baggage": _parse_baggage(ctx.baggage)}


def baggage_set(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    _str(ctx, data, "key", required=True)
    return {"success": True, "note": (
        "baggage travels with each call in its W3C `baggage` field; the engine keeps no baggage "
        "between calls, so set it on the calls you make (trigger(..., baggage)) instead")}
