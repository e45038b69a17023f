"""Read-only engine functions: the ``engine::*::list`` / ``::info`` family (spec §6.2-§6.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..protocol import DEFAULT_NAMESPACE, Code
from .connection import Connection
from .errors import CallError, bad_input
from .functions import FunctionEntry
from .triggers import Binding, TriggerType

if TYPE_CHECKING:
    from .core import CallContext, Engine


# -- row shapes -----------------------------------------------------------------------------


def function_summary(entry: FunctionEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"function_id": entry.function_id, "namespace": entry.namespace,
                           "worker_name": entry.worker_name}
    if entry.description:
        row["description"] = entry.description
    if entry.metadata is not None:
        row["metadata"] = entry.metadata
    return row


def function_detail(engine: "Engine", entry: FunctionEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"function_id": entry.function_id, "namespace": entry.namespace,
                           "worker_name": entry.worker_name}
    if entry.description:
        row["description"] = entry.description
    if entry.request_format is not None:
        row["request_schema"] = entry.request_format
    if entry.response_format is not None:
        row["response_schema"] = entry.response_format
    if entry.metadata is not None:
        row["metadata"] = entry.metadata
    row["registered_triggers"] = [
        {"id": b.id, "trigger_type": b.trigger_type, "config": b.config}
        for b in sorted(engine.triggers.bindings.values(), key=lambda b: b.id)
        if b.function_id == entry.function_id and b.namespace == entry.namespace and b.active
    ]
    return row


def trigger_type_summary(ttype: TriggerType) -> dict[str, Any]:
    return {"id": ttype.key[1], "namespace": ttype.key[0], "worker_name": ttype.worker_name,
            "description": ttype.description}


def trigger_type_detail(engine: "Engine", ttype: TriggerType) -> dict[str, Any]:
    row = trigger_type_summary(ttype)
    for key, value in (("configuration_schema", ttype.configuration_schema),
                       ("request_schema", ttype.request_schema),
                       ("response_schema", ttype.response_schema)):
        if value is not None:
            row[key] = value
    row["instance_count"] = len(engine.triggers.active_on(ttype.key))
    return row


def binding_summary(engine: "Engine", binding: Binding) -> dict[str, Any]:
    target = engine.functions.get(binding.namespace, binding.function_id)
    text = orjson.dumps(binding.config).decode()
    return {
        "id": binding.id,
        "trigger_type": binding.trigger_type,
        "function_id": binding.function_id,
        "worker_name": target.worker_name if target else binding.function_id.split("::", 1)[0],
        "config": binding.config,
        "config_summary": text if len(text) <= 80 else text[:80] + "…",
        "status": "active" if binding.active else "pending",
    }


def worker_summary(conn: Connection, function_count: int) -> dict[str, Any]:
    info = conn.info
    assert info is not None
    return {
        "name": info.name, "description": info.description, "version": info.version,
        "id": conn.worker_id, "namespace": conn.namespace or DEFAULT_NAMESPACE,
        "runtime": info.runtime, "os": info.os, "status": "connected",
        "function_count": function_count, "connected_at_ms": conn.connected_at_ms,
        "active_invocations": conn.active_invocations, "isolation": info.isolation,
        "ip_address": conn.ip_address,
    }


# -- helpers --------------------------------------------------------------------------------


def _opt(ctx: "CallContext", data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise bad_input(ctx.function_id, f"'{key}' must be a {kind.__name__}")
    return value


def _visible(ctx: "CallContext", function_id: str, namespace: str) -> bool:
    policy = ctx.caller.policy if ctx.caller is not None else None
    return policy is None or policy.check_invoke(function_id, namespace) is None


def _type_visible(ctx: "CallContext", type_id: str) -> bool:
    """An RBAC caller sees only the trigger types its AuthResult lets it bind."""
    policy = ctx.caller.policy if ctx.caller is not None else None
    return policy is None or policy.check_trigger_type(type_id) is None


def _forbidden(ctx: "CallContext", function_id: str, namespace: str) -> CallError | None:
    """The FORBIDDEN answer of a single lookup an RBAC caller may not see: the invocation
    gate's own message, given whether the item exists or not."""
    policy = ctx.caller.policy if ctx.caller is not None else None
    denial = policy.check_invoke(function_id, namespace) if policy is not None else None
    return None if denial is None else CallError.from_body(denial)


def _hidden_id(function_id: str) -> bool:
    return function_id.startswith("engine::") and not function_id.startswith("engine::queue::")


# -- functions ------------------------------------------------------------------------------


def workers_list(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    search = _opt(ctx, data, "search", str)
    runtime = _opt(ctx, data, "runtime", str)
    status = _opt(ctx, data, "status", str)
    engine = ctx.engine
    policy = ctx.caller.policy if ctx.caller is not None else None
    rows = [worker_summary(c, engine.functions.count_owned(c) if policy is None else sum(
                1 for e in engine.functions.owned_by(c) if _visible(ctx, e.function_id,
                                                                   e.namespace)))
            for c in engine.connections.values() if c.info is not None and c.live]
    rows = [r for r in rows
            if (runtime is None or r["runtime"] == runtime)
            and (status is None or r["status"] == status)
            and (search is None or search.lower() in (r["name"] or "").lower())]
    rows.sort(key=lambda r: (r["name"] or r["id"], r["id"]))
    return {"workers": rows}


def workers_info(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    name = data.get("name")
    if not isinstance(name, str):
        raise bad_input(ctx.function_id, "missing field `name`")
    namespace = _opt(ctx, data, "namespace", str)
    engine = ctx.engine
    by_ns = {c.namespace: c for c in engine.connections.values()
             if c.info is not None and c.info.name == name and c.live}
    spaces = ", ".join(sorted(ns for ns in by_ns if ns))
    if not by_ns:
        raise CallError(Code.NOT_FOUND, f"Worker '{name}' is not connected.")
    if namespace is not None:
        conn = by_ns.get(namespace)
        if conn is None:
            raise CallError(Code.NOT_FOUND, f"Worker '{name}' is not connected in the requested "
                                            f"namespace; it is connected in namespace(s): {spaces}.")
    elif DEFAULT_NAMESPACE in by_ns:
        conn = by_ns[DEFAULT_NAMESPACE]
    elif len(by_ns) == 1:
        conn = next(iter(by_ns.values()))
    else:
        raise CallError(Code.NOT_FOUND, f"Worker '{name}' is ambiguous: it is connected in "
                                        f"namespace(s): {spaces}. Pass `namespace` to disambiguate.")
    owned = sorted((e for e in engine.functions.owned_by(conn)
                    if _visible(ctx, e.function_id, e.namespace)), key=lambda e: e.function_id)
    worker = worker_summary(conn, len(owned))
    if conn.info and conn.info.pid is not None:
        worker["pid"] = conn.info.pid
    worker["internal"] = conn.transport == "in-process"
    return {
        "worker": worker,
        "functions": [function_summary(e) for e in owned],
        "trigger_types": [trigger_type_summary(t) for t in sorted(
            engine.triggers.types.values(), key=lambda t: t.key[1])
            if t.provider is conn and _type_visible(ctx, t.key[1])],
        "registered_triggers": [binding_summary(engine, b) for b in sorted(
            engine.triggers.bindings.values(), key=lambda b: b.id)
            if b.owner is conn and _visible(ctx, b.function_id, b.namespace)],
    }


def functions_list(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    search = _opt(ctx, data, "search", str)
    prefix = _opt(ctx, data, "prefix", str)
    worker = _opt(ctx, data, "worker", str)
    workers = _opt(ctx, data, "workers", list)
    include_internal = _opt(ctx, data, "include_internal", bool) or False
    names = set(workers or []) | ({worker} if worker else set())
    ranked = []
    for entry in ctx.engine.functions:
        fid = entry.function_id
        if not include_internal and (_hidden_id(fid) or entry.internal):
            continue
        if prefix is not None and not fid.startswith(prefix):
            continue
        if names and entry.worker_name not in names:
            continue
        if not _visible(ctx, fid, entry.namespace):
            continue
        rank = 0
        if search:
            needle = search.lower()
            low = fid.lower()
            if low.startswith(needle) or needle in low.split("::"):
                rank = 0
            elif needle in low:
                rank = 1
            elif needle in (entry.description or "").lower():
                rank = 2
            else:
                continue
        ranked.append((rank, fid, entry.namespace, entry))
    ranked.sort(key=lambda r: r[:3])
    return {"functions": [function_summary(r[3]) for r in ranked]}


def _resolve_function(ctx: "CallContext", function_id: str,
                      namespace: str | None) -> FunctionEntry | CallError:
    functions = ctx.engine.functions
    if namespace is not None:
        denied = _forbidden(ctx, function_id, namespace)
        if denied is not None:
            return denied  # before the existence check: a denial reveals nothing
    spaces = functions.namespaces_of(function_id)
    if ctx.caller is not None and ctx.caller.policy is not None:
        # an RBAC caller learns only of the namespaces where it may call the function
        spaces = [ns for ns in spaces if _visible(ctx, function_id, ns)]
        if not spaces:
            return _forbidden(ctx, function_id, namespace or DEFAULT_NAMESPACE) or CallError(
                Code.NOT_FOUND, f"Function '{function_id}' is not registered.")
    if namespace is not None:
        entry = functions.get(namespace, function_id)
        if entry is None:
            message = f"Function '{function_id}' is not registered in namespace '{namespace}'."
            if spaces:
                message += f" It is registered in namespace(s): {', '.join(spaces)}."
            return CallError(Code.NOT_FOUND, message)
    elif DEFAULT_NAMESPACE in spaces or len(spaces) == 1:
        entry = functions.get(DEFAULT_NAMESPACE if DEFAULT_NAMESPACE in spaces else spaces[0],
                              function_id)
    elif not spaces:
        return CallError(Code.NOT_FOUND, f"Function '{function_id}' is not registered.")
    else:
        return CallError(Code.NOT_FOUND, f"Function '{function_id}' is ambiguous: it is registered "
                                         f"in namespace(s): {', '.join(spaces)}. "
                                         "Pass `namespace` to select one.")
    assert entry is not None
    return _forbidden(ctx, entry.function_id, entry.namespace) or entry


def functions_info(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    one = _opt(ctx, data, "function_id", str)
    many = _opt(ctx, data, "function_ids", list)
    namespace = _opt(ctx, data, "namespace", str)
    if (one is None) == (many is None):
        raise CallError(Code.INVALID_ARGUMENTS, "pass exactly one of `function_id` or `function_ids`")
    if one is not None:
        found = _resolve_function(ctx, one, namespace)
        if isinstance(found, CallError):
            raise found
        return function_detail(ctx.engine, found)
    assert many is not None
    if not many or len(many) > 32 or not all(isinstance(i, str) for i in many):
        raise CallError(Code.INVALID_ARGUMENTS,
                        "`function_ids` must be a list of 1 to 32 function id strings")
    rows = []
    for fid in dict.fromkeys(many):
        found = _resolve_function(ctx, fid, namespace)
        if isinstance(found, CallError):
            rows.append({"function_id": fid,
                         "error": "forbidden" if found.code == Code.FORBIDDEN else "not_found"})
        else:
            rows.append(function_detail(ctx.engine, found))
    return {"functions": rows}


def triggers_list(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    search = _opt(ctx, data, "search", str)
    prefix = _opt(ctx, data, "prefix", str)
    worker = _opt(ctx, data, "worker", str)
    include_internal = _opt(ctx, data, "include_internal", bool) or False
    rows = []
    for ttype in ctx.engine.triggers.types.values():
        tid = ttype.key[1]
        if not include_internal and tid.startswith("engine::"):
            continue
        if prefix is not None and not tid.startswith(prefix):
            continue
        if worker is not None and ttype.worker_name != worker:
            continue
        if search and search.lower() not in tid.lower() \
                and search.lower() not in ttype.description.lower():
            continue
        if not _type_visible(ctx, tid):
            continue
        rows.append(trigger_type_summary(ttype))
    rows.sort(key=lambda r: (r["id"], r["namespace"]))
    return {"triggers": rows}


def triggers_info(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    type_id = data.get("id")
    if not isinstance(type_id, str):
        raise bad_input(ctx.function_id, "missing field `id`")
    namespace = _opt(ctx, data, "namespace", str) or DEFAULT_NAMESPACE
    policy = ctx.caller.policy if ctx.caller is not None else None
    denial = policy.check_trigger_type(type_id) if policy is not None else None
    if denial is not None:
        raise CallError(Code.FORBIDDEN, denial)
    ttype = ctx.engine.triggers.types.get((namespace, type_id))
    if ttype is None:
        raise CallError(Code.NOT_FOUND,
                        f"Trigger type '{type_id}' is not registered in namespace '{namespace}'.")
    return trigger_type_detail(ctx.engine, ttype)


def registered_list(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    search = _opt(ctx, data, "search", str)
    trigger_type = _opt(ctx, data, "trigger_type", str)
    function_id = _opt(ctx, data, "function_id", str)
    worker = _opt(ctx, data, "worker", str)
    include_internal = _opt(ctx, data, "include_internal", bool) or False
    include_pending = _opt(ctx, data, "include_pending", bool) or False
    rows = []
    for binding in ctx.engine.triggers.bindings.values():
        if not binding.active and not include_pending:
            continue
        if not include_internal and binding.function_id.startswith("engine::"):
            continue
        if trigger_type is not None and binding.trigger_type != trigger_type:
            continue
        if function_id is not None and binding.function_id != function_id:
            continue
        if search and not any(search.lower() in v.lower() for v in
                              (binding.id, binding.trigger_type, binding.function_id)):
            continue
        if not _visible(ctx, binding.function_id, binding.namespace):
            continue
        row = binding_summary(ctx.engine, binding)
        if worker is not None and row["worker_name"] != worker:
            continue
        rows.append(row)
    rows.sort(key=lambda r: r["id"])
    return {"registered_triggers": rows}


def registered_info(ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
    trigger_id = data.get("id")
    if not isinstance(trigger_id, str):
        raise bad_input(ctx.function_id, "missing field `id`")
    engine = ctx.engine
    binding = engine.triggers.bindings.get(trigger_id)
    if binding is None:
        raise CallError(Code.NOT_FOUND, f"Registered trigger '{trigger_id}' was not found.")
    denied = _forbidden(ctx, binding.function_id, binding.namespace)
    if denied is not None:
        raise denied
    row = binding_summary(engine, binding)
    del row["config_summary"]
    if binding.metadata is not None:
        row["metadata"] = binding.metadata
    key = binding.provider_key or engine.triggers.resolve(binding)
    ttype = engine.triggers.types.get(key) if key else None
    target = engine.functions.get(binding.namespace, binding.function_id)
    row["trigger"] = trigger_type_detail(engine, ttype) if ttype else None
    row["function"] = function_detail(engine, target) if target else None
    return row
