"""Registration frames, the worker register call and reattach (spec §2.3, §2.5, §3.5-§3.11).

Frames from an RBAC connection arrive here already gated and rewritten by
:mod:`pyiii.engine.rbac_session` (hooks, prefix, trigger targets); only the namespace a register
call declares is checked here, because it is part of the call's answer.

Everything here runs synchronously inside ``Engine.handle`` so that a registration is fully
applied before the connection's next frame is read.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..protocol import DEFAULT_NAMESPACE, LARGE_MESSAGES_FEATURE, Code, Frame
from .connection import Connection, WorkerInfo
from .errors import CallError
from .functions import FunctionEntry
from .router import CallFrame
from .triggers import ENGINE_TRIGGER_TYPES, Binding

if TYPE_CHECKING:
    from .core import Engine

log = logging.getLogger("pyiii.engine")

# control characters, bidi embeddings/overrides/isolates, line and paragraph separators
_UNSAFE = re.compile("[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def sanitise(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = _UNSAFE.sub("", value)[:280].strip()
    return cleaned or None


class Registrations:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self._apply = {
            Frame.REGISTER_FUNCTION: self.register_function,
            Frame.UNREGISTER_FUNCTION: self.unregister_function,
            Frame.REGISTER_SERVICE: lambda conn, frame: None,  # legacy grouping, no effect
            Frame.REGISTER_TRIGGER_TYPE: self.register_trigger_type,
            Frame.UNREGISTER_TRIGGER_TYPE: self.unregister_trigger_type,
            Frame.REGISTER_TRIGGER: self.register_trigger,
            Frame.UNREGISTER_TRIGGER: self.unregister_trigger,
        }

    def apply(self, conn: Connection, kind: str, frame: dict[str, Any]) -> None:
        self._apply[kind](conn, frame)

    # -- functions --------------------------------------------------------------------------

    def register_function(self, conn: Connection, frame: dict[str, Any]) -> None:
        function_id = protocol.req_str(frame, "id")
        namespace = conn.namespace or DEFAULT_NAMESPACE
        engine = self.engine

        def refuse(owner: str, message: str) -> None:
            log.warning("refused function %s/%s from %s: %s", namespace, function_id,
                        conn.label(), message)
            engine.send_safely(conn, protocol.function_conflict(namespace, function_id, owner, message))

        if function_id in engine.reserved:
            return refuse("", f"'{function_id}' is implemented by the engine itself and cannot "
                              "be registered by a worker; choose another id")
        if function_id.startswith("engine::") and namespace != DEFAULT_NAMESPACE:
            return refuse("", f"'{function_id}': engine::* ids may only be registered in the "
                              f"\"default\" namespace, not in '{namespace}'")
        existing = engine.functions.get(namespace, function_id)
        if existing is not None and existing.owner is not conn and existing.owner is not None \
                and existing.owner.live:
            return refuse(existing.owner.worker_id, (
                f"'{function_id}' in namespace '{namespace}' is already owned by worker "
                f"'{existing.owner.name or existing.owner.worker_id}'; stop that worker or "
                "register under another id or namespace"))
        invocation = None
        if frame.get("invocation") is not None:
            try:
                invocation = engine.http_functions.prepare(frame["invocation"])
            except CallError as exc:
                return refuse("", f"HTTP-invoked function rejected: {exc.message}")
        engine.functions.add(FunctionEntry(
            function_id, namespace, conn,
            description=frame.get("description") if isinstance(frame.get("description"), str) else None,
            request_format=frame.get("request_format"),
            response_format=frame.get("response_format"),
            metadata=frame.get("metadata"),
            invocation=invocation,
        ))

    def unregister_function(self, conn: Connection, frame: dict[str, Any]) -> None:
        function_id = protocol.req_str(frame, "id")
        entry = self.engine.functions.get(conn.namespace or DEFAULT_NAMESPACE, function_id)
        if entry is not None and entry.owner is conn:
            self.engine.functions.remove(entry)

    # -- trigger types ----------------------------------------------------------------------

    def register_trigger_type(self, conn: Connection, frame: dict[str, Any]) -> None:
        type_id = protocol.req_str(frame, "id")
        namespace = protocol.opt_str(frame, "namespace")
        if protocol.is_blank(namespace):
            log.warning("refused trigger type %s from %s: blank namespace", type_id, conn.label())
            return
        if type_id in ENGINE_TRIGGER_TYPES:
            log.warning("refused trigger type %s from %s: provided by the engine itself",
                        type_id, conn.label())
            return
        description = frame.get("description")
        self.engine.triggers.register_type(
            conn, (namespace or conn.namespace or DEFAULT_NAMESPACE, type_id),
            description if isinstance(description, str) else "",
            frame.get("trigger_request_format"), frame.get("call_request_format"))

    def unregister_trigger_type(self, conn: Connection, frame: dict[str, Any]) -> None:
        type_id = protocol.req_str(frame, "id")
        namespace = protocol.opt_str(frame, "namespace") or conn.namespace or DEFAULT_NAMESPACE
        self.engine.triggers.unregister_type(conn, (namespace, type_id))

    # -- bindings ---------------------------------------------------------------------------

    def register_trigger(self, conn: Connection, frame: dict[str, Any]) -> None:
        trigger_id = protocol.req_str(frame, "id")
        trigger_type = protocol.req_str(frame, "trigger_type")
        function_id = protocol.req_str(frame, "function_id")
        namespace = protocol.opt_str(frame, "namespace")
        trigger_namespace = protocol.opt_str(frame, "trigger_namespace")

        def refuse(code: str, message: str) -> None:
            self.engine.send_safely(conn, protocol.trigger_result(
                trigger_id, trigger_type, function_id, protocol.error_body(code, message)))

        if protocol.is_blank(namespace) or protocol.is_blank(trigger_namespace):
            return refuse(Code.INVALID_NAMESPACE, "namespace and trigger_namespace must not be blank")
        target_ns = namespace or DEFAULT_NAMESPACE
        binding = Binding(trigger_id, trigger_type, function_id, frame.get("config"),
                          frame.get("metadata"), conn, target_ns, trigger_namespace,
                          conn.namespace or DEFAULT_NAMESPACE)
        error = self.engine.triggers.bind(binding)
        if error is not None:
            refuse(error["code"], error["message"])

    def unregister_trigger(self, conn: Connection, frame: dict[str, Any]) -> None:
        self.engine.triggers.unbind(conn, protocol.req_str(frame, "id"))

    # -- worker register call and reattach ---------------------------------------------------

    def register_worker(self, conn: Connection, call: CallFrame) -> None:
        engine = self.engine
        reply_id = None if call.action == "void" else call.reply_id

        def answer(result: Any = None, error: dict[str, Any] | None = None) -> None:
            if reply_id is not None:
                engine.send_safely(conn, protocol.result_frame(
                    reply_id, call.function_id, result=result, error=error))

        data = call.data if isinstance(call.data, dict) else {}
        declared = data.get("namespace")
        if declared is not None and not isinstance(declared, str):
            return answer(error=protocol.error_body(
                Code.DESERIALIZATION_ERROR,
                "Failed to deserialize input for engine::workers::register: "
                "namespace must be a string"))
        if protocol.is_blank(declared):
            log.warning("register call from %s has a blank namespace", conn.label())
            return answer(error=protocol.error_body(
                Code.INVALID_NAMESPACE, "namespace must not be blank; omit it for \"default\""))
        forbidden = None
        if declared is not None and conn.policy is not None:
            forbidden = conn.policy.check_namespace(declared)
            if forbidden is not None:
                declared = None
        namespace = conn.namespace
        if namespace is None:
            namespace = declared or DEFAULT_NAMESPACE
        elif declared is not None and declared != namespace:
            log.warning("%s declared namespace '%s' but is already in '%s'", conn.label(),
                        declared, namespace)
        name = sanitise(data.get("name"))
        if name is not None:
            holder = engine.leases.get((namespace, name))
            if holder is not None and holder is not conn and holder.live:
                engine.send_safely(conn, protocol.worker_name_conflict(
                    namespace, name, holder.worker_id,
                    f"a worker named '{name}' is already connected in namespace '{namespace}'; "
                    "stop it or give this worker another name (III_WORKER_NAME)"))
                answer(result={"success": False})
                conn.held = []
                engine.disconnect(conn)
                conn.close(protocol.Close.POLICY, "worker name conflict")
                return
        old_name = conn.info.name if conn.info else None
        if old_name is not None and old_name != name:
            old_key = (conn.namespace or namespace, old_name)
            if engine.leases.get(old_key) is conn:
                del engine.leases[old_key]
        if name is not None:
            engine.leases[(namespace, name)] = conn
        conn.info = _worker_info(data, name)
        if conn.transport == "in-process":
            conn.info.isolation = "in-process"  # the engine knows; never trust a claim here
        else:  # the supervisor's record for a managed worker; null for one that came on its own
            managed = getattr(engine, "managed_isolation", None) or {}
            conn.info.isolation = managed.get(name) if name is not None else None
        if LARGE_MESSAGES_FEATURE in conn.info.features or conn.info.runtime in \
                protocol.LARGE_MESSAGE_RUNTIMES:
            conn.recipient_limit = protocol.LARGE_RECIPIENT_LIMIT
        if conn.namespace is None:
            engine.fix_namespace(conn, namespace)
        engine.fire_event("engine::workers-available",
                          {"event": "worker_metadata_updated", "worker_id": conn.worker_id})
        if forbidden is not None:
            return answer(error=forbidden)
        answer(result={"success": True})

    def reattach(self, conn: Connection, frame: dict[str, Any]) -> None:
        previous_id = frame.get("previous_worker_id")
        token = frame.get("reattach_token")
        old = self.engine.connections.get(previous_id) if isinstance(previous_id, str) else None
        if old is None or old is conn or not isinstance(token, str) or token != old.reattach_token:
            log.warning("ignored reattach from %s (previous worker %r unknown or token wrong)",
                        conn.label(), previous_id)
            return
        log.info("%s reattached; retiring its previous connection %s", conn.label(), old.label())
        self.engine.disconnect(old)
        old.close(protocol.Close.NORMAL, "replaced by a reattached connection")


def _worker_info(data: dict[str, Any], name: str | None) -> WorkerInfo:
    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    pid = data.get("pid")
    features = data.get("features")
    return WorkerInfo(
        name=name,
        description=sanitise(data.get("description")),
        runtime=text("runtime"),
        version=text("version"),
        os=text("os"),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        isolation=text("isolation"),
        features=[f for f in features if isinstance(f, str)] if isinstance(features, list) else [],
    )
