"""Invocation routing (spec §4): legs, delivery, results, engine-initiated calls.

The hot path is ``invoke`` → ``_deliver`` → (worker answers) → ``result``: two dict lookups,
one frame built per direction, no task created for calls between workers. Engine functions
and HTTP-invoked functions run as tasks so that the read loop never waits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..protocol import DEFAULT_NAMESPACE, Code, Frame, InvalidFrame
from .connection import Connection, FrameTooLarge
from .errors import CallError
from .functions import FunctionEntry

if TYPE_CHECKING:
    from .core import Engine

log = logging.getLogger("pyiii.engine.router")

QUEUE_ENQUEUE = "engine::queue::enqueue"


@dataclass(slots=True, eq=False)
class Leg:
    id: str
    function_id: str
    callee: Connection
    caller: Connection | None
    reply_id: str | None  # the caller's invocation id; None: nothing goes back
    caller_function_id: str
    future: asyncio.Future[Any] | None = None  # engine-internal caller


@dataclass(slots=True)
class CallFrame:
    """The parts of a W→E ``invokefunction`` the engine acts on."""

    function_id: str
    data: Any
    reply_id: str | None
    namespace: str
    metadata: Any = None
    traceparent: str | None = None
    baggage: str | None = None
    caller_extra: Any = None
    action: str | None = None  # None (sync), "void", "enqueue"
    queue: str | None = None


def parse_call(frame: dict[str, Any]) -> CallFrame:
    """Validate an incoming call. Raises ``InvalidFrame`` (answered when it has an id)."""
    invocation_id = frame.get("invocation_id")
    if invocation_id is not None and not isinstance(invocation_id, str):
        raise InvalidFrame("invocation_id", "must be a string")
    function_id = protocol.req_str(frame, "function_id")
    action = frame.get("action")
    kind = queue = None
    if action is not None:
        kind = action.get("type") if isinstance(action, dict) else None
        if kind == "enqueue":
            queue = action.get("queue")
            if not isinstance(queue, str) or not queue:
                raise InvalidFrame("action.queue", "must be a non-empty string")
        elif kind != "void":
            raise InvalidFrame("action", "must be {\"type\":\"void\"} or {\"type\":\"enqueue\",\"queue\":…}")
    get = frame.get
    namespace = get("namespace")
    traceparent = get("traceparent")
    baggage = get("baggage")
    if namespace is None:
        namespace = DEFAULT_NAMESPACE
    elif namespace.__class__ is not str:
        namespace = protocol.opt_str(frame, "namespace")  # raises for a non-string
    if traceparent is not None and traceparent.__class__ is not str:
        protocol.opt_str(frame, "traceparent")
    if baggage is not None and baggage.__class__ is not str:
        protocol.opt_str(frame, "baggage")
    # positional: this runs for every call
    return CallFrame(function_id, get("data"), invocation_id or None, namespace,
                     get("metadata"), traceparent, baggage, get("caller"), kind, queue)


class Router:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.functions = engine.functions
        self.legs: dict[str, Leg] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        # caller → (its name, its "caller" block): shared by the frames of its calls, which
        # nobody changes (the engine builds them; workers only read them)
        self.caller_blocks: dict[Connection, tuple[str | None, dict[str, Any]]] = {}

    # -- calls from workers -----------------------------------------------------------------

    def invoke(self, conn: Connection, call: CallFrame) -> None:
        reply_id = None if call.action == "void" else call.reply_id
        if protocol.is_blank(call.namespace):
            return self._fail(conn, call, reply_id, protocol.error_body(
                Code.INVALID_NAMESPACE, "namespace must not be blank; omit it for \"default\""))
        if conn.policy is not None and conn.policy.intercept(conn, call, reply_id):
            return  # RBAC listener: denied, or diverted to the listener's middleware
        if call.action == "enqueue":
            return self._spawn(self._enqueue(conn, call, reply_id))
        entry = self.functions.get(call.namespace, call.function_id)
        if entry is None:
            return self._fail(conn, call, reply_id, protocol.function_not_found(
                call.function_id, call.namespace,
                self.functions.namespaces_of(call.function_id)))
        if entry.owner is None or entry.invocation is not None:
            return self._spawn(self._run_local(conn, call, reply_id, entry))
        self._deliver(entry, call, conn, reply_id, None)

    def _deliver(self, entry: FunctionEntry, call: CallFrame, caller: Connection | None,
                 reply_id: str | None, future: asyncio.Future[Any] | None) -> None:
        callee = entry.owner
        assert callee is not None
        leg_id = reply_id
        if leg_id is None or leg_id in self.legs or not (
                (caller is not None and caller.uuid_ids) or protocol.is_uuid(leg_id)):
            leg_id = protocol.new_id()
        frame: dict[str, Any] = {
            "type": Frame.INVOKE_FUNCTION,
            "invocation_id": leg_id,
            "function_id": entry.function_id,
            "data": call.data,
        }
        if call.metadata is not None:
            frame["metadata"] = call.metadata
        if call.traceparent is not None:
            frame["traceparent"] = call.traceparent
        if call.baggage is not None:
            frame["baggage"] = call.baggage
        if caller is not None:
            extra = call.caller_extra
            if extra is None:  # the usual case: the same block for every call of this caller
                info = caller.info
                name = info.name if info is not None else None
                cached = self.caller_blocks.get(caller)
                if cached is None or cached[0] != name:
                    cached = self.caller_blocks[caller] = (name, _caller_block(caller, None))
                frame["caller"] = cached[1]
            else:
                frame["caller"] = _caller_block(caller, extra)
        # the leg exists before the frame goes out: an in-process worker may answer inside send
        leg = Leg(leg_id, entry.function_id, callee, caller, reply_id, call.function_id, future)
        self.legs[leg_id] = leg
        callee.legs_in.add(leg_id)
        if caller is not None:
            caller.legs_out.add(leg_id)
        try:
            callee.send(frame)
        except FrameTooLarge as exc:
            self.legs.pop(leg_id, None)
            callee.legs_in.discard(leg_id)
            if caller is not None:
                caller.legs_out.discard(leg_id)
            error = protocol.error_body(Code.PAYLOAD_TOO_LARGE, exc.describe("the invocation"))
            if future is not None:
                future.set_exception(CallError.from_body(error))
            else:
                self._fail(caller, call, reply_id, error)

    def result(self, conn: Connection, frame: dict[str, Any]) -> None:
        leg_id = frame.get("invocation_id")
        leg = self.legs.get(leg_id) if isinstance(leg_id, str) else None
        if leg is None or leg.callee is not conn:
            log.debug("dropped invocationresult %r from %s: no such pending leg", leg_id, conn.label())
            return
        del self.legs[leg_id]
        conn.legs_in.discard(leg_id)
        error = frame.get("error")
        if error is not None:
            error = protocol.normalise_error(error)
        caller = leg.caller
        if caller is not None:
            caller.legs_out.discard(leg_id)
        if leg.future is not None:
            if not leg.future.done():
                if error is not None:
                    leg.future.set_exception(CallError.from_body(error))
                else:
                    leg.future.set_result(frame.get("result"))
            return
        if leg.reply_id is None or caller is None:
            if error is not None:
                log.info("void call to %s failed: [%s] %s", leg.function_id,
                         error["code"], error["message"])
            return
        self._answer(caller, leg.reply_id, leg.caller_function_id, frame.get("result"), error,
                     protocol.opt_str(frame, "traceparent") if "traceparent" in frame else None,
                     protocol.opt_str(frame, "baggage") if "baggage" in frame else None)

    def _answer(self, caller: Connection, reply_id: str, function_id: str, result: Any,
                error: dict[str, Any] | None, traceparent: str | None = None,
                baggage: str | None = None) -> None:
        if caller.closing:
            return
        try:
            caller.send(protocol.result_frame(reply_id, function_id, result=result, error=error,
                                              traceparent=traceparent, baggage=baggage))
        except FrameTooLarge as exc:
            caller.send(protocol.result_frame(reply_id, function_id, error=protocol.error_body(
                Code.PAYLOAD_TOO_LARGE, exc.describe("the result"))))

    def _fail(self, caller: Connection | None, call: CallFrame, reply_id: str | None,
              error: dict[str, Any]) -> None:
        if reply_id is None or caller is None:
            log.info("call to %s failed (no reply requested): [%s] %s",
                     call.function_id, error["code"], error["message"])
            return
        self._answer(caller, reply_id, call.function_id, None, error)

    # -- calls the engine runs itself -------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_local(self, conn: Connection, call: CallFrame, reply_id: str | None,
                         entry: FunctionEntry) -> None:
        try:
            result = await self._call_entry(entry, call, conn)
        except CallError as exc:
            self._fail(conn, call, reply_id, exc.body)
        except Exception as exc:  # a bug in an engine function must not kill the engine
            log.exception("engine function %s crashed", entry.function_id)
            self._fail(conn, call, reply_id, protocol.error_body(
                Code.INVOCATION_FAILED, f"{entry.function_id} failed inside the engine: {exc}"))
        else:
            if reply_id is not None and conn.live:
                self._answer(conn, reply_id, call.function_id, result, None)

    async def _call_entry(self, entry: FunctionEntry, call: CallFrame,
                          caller: Connection | None) -> Any:
        if entry.engine_handler is not None:
            return await self.engine.run_engine_function(entry, call, caller)
        if entry.invocation is not None:
            return await self.engine.http_functions.call(entry, call)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._deliver(entry, call, caller, None, future)
        return await future

    async def call(self, function_id: str, data: Any, namespace: str = DEFAULT_NAMESPACE,
                   metadata: Any = None, traceparent: str | None = None,
                   baggage: str | None = None) -> Any:
        """Engine-initiated invocation (§4.7): no caller, fresh leg id. Raises CallError."""
        entry = self.functions.get(namespace, function_id)
        if entry is None:
            raise CallError.from_body(protocol.function_not_found(
                function_id, namespace, self.functions.namespaces_of(function_id)))
        call = CallFrame(function_id, data, None, namespace, metadata, traceparent, baggage)
        return await self._call_entry(entry, call, None)

    async def _enqueue(self, conn: Connection, call: CallFrame, reply_id: str | None) -> None:
        receipt = protocol.new_id()
        payload: dict[str, Any] = {
            "queue": call.queue,
            "function_id": call.function_id,
            "data": call.data,
            "messageReceiptId": receipt,
            "traceparent": call.traceparent,
            "baggage": call.baggage,
        }
        if call.namespace != DEFAULT_NAMESPACE:
            payload["namespace"] = call.namespace
        try:
            if self.functions.get(DEFAULT_NAMESPACE, QUEUE_ENQUEUE) is None:
                raise CallError(Code.ENQUEUE_ERROR, (
                    f"cannot enqueue {call.function_id} on queue '{call.queue}': no queue provider "
                    f"is installed ({QUEUE_ENQUEUE} is not registered); add the queue worker "
                    "(iii-queue), which provides engine::queue::enqueue"))
            await self.call(QUEUE_ENQUEUE, payload)
        except CallError as exc:
            message = exc.message if exc.code == Code.ENQUEUE_ERROR else f"[{exc.code}] {exc.message}"
            self._fail(conn, call, reply_id, protocol.error_body(Code.ENQUEUE_ERROR, message))
        else:
            if reply_id is not None and conn.live:
                self._answer(conn, reply_id, call.function_id, {"messageReceiptId": receipt}, None)

    # -- cleanup ----------------------------------------------------------------------------

    def drop_connection(self, conn: Connection) -> None:
        """§2.6 steps 3-4: fail legs delivered to ``conn``; forget legs it made."""
        for leg_id in list(conn.legs_in):
            leg = self.legs.pop(leg_id, None)
            if leg is None:
                continue
            stopped = protocol.invocation_stopped()
            if leg.future is not None:
                if not leg.future.done():
                    leg.future.set_exception(CallError.from_body(stopped))
            elif leg.caller is not None:
                leg.caller.legs_out.discard(leg_id)
                if leg.reply_id is not None:
                    self._answer(leg.caller, leg.reply_id, leg.caller_function_id, None, stopped)
        conn.legs_in.clear()
        for leg_id in list(conn.legs_out):
            leg = self.legs.get(leg_id)
            if leg is not None:
                leg.caller = None
                leg.reply_id = None
        conn.legs_out.clear()
        self.caller_blocks.pop(conn, None)


def _caller_block(caller: Connection, extra: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"worker_id": caller.worker_id}
    if caller.name is not None:
        block["worker_name"] = caller.name
    if isinstance(extra, dict):
        for key in ("function_id", "invocation_id"):
            if isinstance(extra.get(key), str):
                block[key] = extra[key]
        parent = extra.get("parent")
        if isinstance(parent, dict):
            block["parent"] = {k: v for k, v in parent.items() if not isinstance(v, (dict, list))}
    return block
