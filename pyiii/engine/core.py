"""The engine core: connection lifecycle and the handling of every control frame.

Transport-agnostic and synchronous: a transport calls ``accept(conn)`` once, ``handle(conn,
frame)`` for each decoded frame in arrival order and ``disconnect(conn)`` when the link ends.
Every registration frame is fully applied (with every frame it makes the engine send) before
``handle`` returns, which gives the ordering guarantees of spec §2.1 for free; only calls that
the engine itself executes run as tasks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

from .. import protocol
from ..protocol import DEFAULT_NAMESPACE, Code, Frame, InvalidFrame
from .connection import Connection, FrameTooLarge
from .errors import CallError, bad_input
from .functions import FunctionEntry, FunctionTable
from .registration import Registrations
from .router import CallFrame, Router, parse_call
from .triggers import TriggerTable

log = logging.getLogger("pyiii.engine")

REGISTER_WORKER = "engine::workers::register"
HELD_TYPES = frozenset({
    Frame.REGISTER_FUNCTION, Frame.UNREGISTER_FUNCTION, Frame.REGISTER_SERVICE,
    Frame.REGISTER_TRIGGER_TYPE, Frame.UNREGISTER_TRIGGER_TYPE,
    Frame.REGISTER_TRIGGER, Frame.UNREGISTER_TRIGGER,
})


@dataclass
class EngineSettings:
    namespace_grace_ms: int = protocol.NAMESPACE_GRACE_MS
    functions_poll_ms: int = 1000
    http_security: dict[str, Any] | None = None  # `security:` of iii-http-functions


@dataclass(slots=True)
class CallContext:
    """What an engine function may know about its call."""

    engine: "Engine"
    caller: Connection | None
    function_id: str
    baggage: str | None
    traceparent: str | None


class Engine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        from .builtins import register_builtins
        from .channels import ChannelHub
        from .http_functions import HttpFunctions

        self.settings = settings or EngineSettings()
        self.functions = FunctionTable()
        self.triggers = TriggerTable()
        self.router = Router(self)
        self.connections: dict[str, Connection] = {}
        self.leases: dict[tuple[str, str], Connection] = {}
        self.channels = ChannelHub()
        self.http_functions = HttpFunctions(self.settings.http_security or {})
        self.reserved: set[str] = set()
        self.registrations = Registrations(self)
        self.extra_workers: Callable[[], list[dict[str, Any]]] | None = None
        self._announced: set[tuple[str, str]] | None = None
        self._announced_version = -1
        self._poller: asyncio.Task[None] | None = None
        register_builtins(self)

    # -- engine functions -------------------------------------------------------------------

    def add_engine_function(self, function_id: str, handler: Callable[..., Any],
                            description: str, internal: bool = False) -> None:
        self.reserved.add(function_id)
        self.functions.add(FunctionEntry(
            function_id, DEFAULT_NAMESPACE, None, description=description,
            metadata={"internal": True} if internal else None, engine_handler=handler))

    async def run_engine_function(self, entry: FunctionEntry, call: CallFrame,
                                  caller: Connection | None) -> Any:
        data = call.data
        if data is None:
            data = {}
        elif not isinstance(data, dict):
            raise bad_input(entry.function_id, f"expected an object, got {type(data).__name__}")
        ctx = CallContext(self, caller, entry.function_id, call.baggage, call.traceparent)
        assert entry.engine_handler is not None
        result = entry.engine_handler(ctx, data)
        if inspect.isawaitable(result):
            result = await result
        return result

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start background duties (function-set announcements). Needs a running loop."""
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_functions())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for task in list(self.router.tasks):
            task.cancel()
        await self.http_functions.close()

    def accept(self, conn: Connection) -> None:
        self.connections[conn.worker_id] = conn
        conn.send(protocol.worker_registered(conn.worker_id, conn.reattach_token))
        self.fire_event("engine::workers-available",
                        {"event": "worker_connected", "worker_id": conn.worker_id})
        grace = self.settings.namespace_grace_ms / 1000
        conn.grace_handle = asyncio.get_running_loop().call_later(grace, self._grace_expired, conn)

    def _grace_expired(self, conn: Connection) -> None:
        conn.grace_handle = None
        if conn.namespace is None and not conn.closing:
            self.fix_namespace(conn, DEFAULT_NAMESPACE)

    def fix_namespace(self, conn: Connection, namespace: str) -> None:
        """End the pending phase (§2.4): later frames apply directly, held ones now, in order."""
        conn.namespace = namespace
        if conn.grace_handle is not None:
            conn.grace_handle.cancel()
            conn.grace_handle = None
        held, conn.held = conn.held, []
        for frame in held:
            if conn.closing:
                break
            self.handle(conn, frame)

    def disconnect(self, conn: Connection) -> None:
        """Cleanup (§2.6), exactly once per connection."""
        if conn.closing:
            return
        conn.closing = True
        if conn.grace_handle is not None:
            conn.grace_handle.cancel()
        conn.held = []
        for entry in self.functions.owned_by(conn):
            self.functions.remove(entry)
        self.functions.forget_owner(conn)
        self.router.drop_connection(conn)
        self.triggers.drop_connection(conn)
        if conn.info is not None and conn.info.name is not None:
            key = (conn.namespace or DEFAULT_NAMESPACE, conn.info.name)
            if self.leases.get(key) is conn:
                del self.leases[key]
        self.connections.pop(conn.worker_id, None)
        self.fire_event("engine::workers-available",
                        {"event": "worker_disconnected", "worker_id": conn.worker_id})

    # -- frames -----------------------------------------------------------------------------

    def handle(self, conn: Connection, frame: dict[str, Any]) -> None:
        if conn.closing:
            return
        kind = frame["type"]
        if kind == Frame.INVOKE_FUNCTION:
            return self._invoke(conn, frame)
        if kind == Frame.INVOCATION_RESULT:
            return self.router.result(conn, frame)
        if kind in HELD_TYPES:
            if conn.namespace is None:
                conn.held.append(frame)
                return
            try:
                return self.registrations.apply(conn, kind, frame)
            except InvalidFrame as exc:
                log.warning("dropped %s from %s: %s", kind, conn.label(), exc)
                return
        if kind == Frame.TRIGGER_REGISTRATION_RESULT:
            trigger_id = frame.get("id")
            if isinstance(trigger_id, str):
                self.triggers.provider_answer(conn, trigger_id, frame.get("error"))
            return
        if kind == Frame.REATTACH:
            return self.registrations.reattach(conn, frame)
        if kind == Frame.PING:
            return conn.send({"type": Frame.PONG})
        if kind == Frame.PONG or kind in Frame.IGNORED:
            return
        log.debug("ignored unknown frame type %r from %s", kind, conn.label())

    def _invoke(self, conn: Connection, frame: dict[str, Any]) -> None:
        try:
            call = parse_call(frame)
        except InvalidFrame as exc:
            invocation_id = frame.get("invocation_id")
            if isinstance(invocation_id, str) and invocation_id:
                conn.send(protocol.result_frame(
                    invocation_id, frame.get("function_id") if isinstance(
                        frame.get("function_id"), str) else None,
                    error=protocol.error_body(Code.INVALID_MESSAGE,
                                              f"invalid invokefunction: {exc}")))
            else:
                log.warning("dropped invokefunction from %s: %s", conn.label(), exc)
            return
        if call.function_id == REGISTER_WORKER and call.namespace == DEFAULT_NAMESPACE:
            return self.registrations.register_worker(conn, call)
        if conn.held:  # invocations queue behind held registrations (pyiii decision, §2.4)
            conn.held.append(frame)
            return
        self.router.invoke(conn, call)

    # -- engine trigger types ---------------------------------------------------------------

    def fire_event(self, type_id: str, payload: dict[str, Any]) -> None:
        key = (DEFAULT_NAMESPACE, type_id)
        for binding in self.triggers.active_on(key):
            self.router._spawn(self._deliver_event(binding.function_id, payload,
                                                   binding.namespace, binding.metadata))

    async def _deliver_event(self, function_id: str, payload: Any, namespace: str,
                             metadata: Any) -> None:
        try:
            await self.router.call(function_id, payload, namespace, metadata)
        except CallError as exc:
            log.info("engine trigger handler %s failed: %s", function_id, exc)

    async def _poll_functions(self) -> None:
        from .introspection import function_summary

        interval = self.settings.functions_poll_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if self.functions.version == self._announced_version:
                continue
            self._announced_version = self.functions.version
            keys = self.functions.keys()
            if keys == self._announced:
                continue
            self._announced = keys
            rows = sorted((function_summary(e) for e in self.functions),
                          key=lambda r: (r["function_id"], r["namespace"]))
            self.fire_event("engine::functions-available",
                            {"event": "functions_changed", "functions": rows})

    # -- helpers for transports -------------------------------------------------------------

    def send_safely(self, conn: Connection, frame: dict[str, Any]) -> None:
        try:
            conn.send(frame)
        except FrameTooLarge:
            log.warning("frame %s too large for %s", frame.get("type"), conn.label())
