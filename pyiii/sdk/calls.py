"""Calls to functions: the request/response, Void and Enqueue paths of ``III``.

Kept apart from ``client.py`` because this is the per-call hot path: one frame dict, a future
and a deadline per call, written to the link synchronously when it allows (``send_nowait``),
with no task and no timer of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyiii.protocol import DEFAULT_NAMESPACE, Frame

from .connection import ConnectionCore, _Pending
from .invoke import to_json_value
from .types import TriggerRequest, action_to_wire

__all__ = ["Calls", "SYNC_STREAK_MAX", "TURN_BUDGET_S"]

_BUILTIN_PREFIXES = ("engine::", "configuration::")
SYNC_STREAK_MAX = 32  # calls answered synchronously in a row (≈ 0.3 ms in-process) before a yield
TURN_BUDGET_S = 0.002  # time one turn of the loop may spend on such calls before each yields


class Calls(ConnectionCore):
    """``trigger``/``trigger_async``/``trigger_nowait`` on top of the connection core."""

    _namespace: str | None
    _timeout_ms: int
    _next_call_id: Any  # IdSequence

    def _refuse_on_loop(self, name: str, alternative: str) -> None:  # provided by III
        raise NotImplementedError

    def _call_namespace(self, explicit: str | None, what: str) -> str | None:
        if explicit is not None:
            if not isinstance(explicit, str) or not explicit.strip():
                raise ValueError(f"{what} is blank: name a namespace or leave it unset")
            return explicit
        return self._namespace

    def trigger(self, request: dict[str, Any] | TriggerRequest) -> Any:
        """Blocking call (own-loop mode, or any thread but the client's loop)."""
        self._refuse_on_loop("trigger", "trigger_async")
        return asyncio.run_coroutine_threadsafe(self.trigger_async(request), self._loop).result()

    async def trigger_async(self, request: dict[str, Any] | TriggerRequest) -> Any:
        """Call a function: its result; ``None`` for Void; ``{"messageReceiptId"}`` for
        Enqueue. Raises ``InvocationError`` (``TIMEOUT`` when no answer in time)."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is not self._loop:  # run on the client's loop, where this takes the path below
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                self.trigger_async(request), self._loop))
        # the body of the call is here, not in a helper coroutine: one coroutine per call
        frame, function_id, timeout_ms = self._call_frame(request)
        action = frame.get("action")
        future: asyncio.Future[Any] | None = None
        if action is not None and action["type"] == "void":
            if not self._send_now(frame):
                await self._send(frame)
        else:
            inv_id, timeout_ms, future = self._await_answer(frame, function_id, timeout_ms)
            try:
                if not self._send_now(frame):  # no coroutine layers when the link writes at once
                    await self._send(frame)
            except BaseException:  # cancelled by the caller, or the send failed
                self._forget_call(inv_id, timeout_ms)
                raise
        if future is None or future.done():
            # finished without waiting (void, or answered during the send by an in-process
            # handler): no task switch was needed, but a caller looping over such calls must
            # not starve the loop (nor the handlers it starts, nor the socket). A caller
            # yields once after SYNC_STREAK_MAX of them in a row (the next task then starts
            # its own streak), and every one yields once the loop's turn has spent
            # TURN_BUDGET_S on them: the turn stays short however many tasks call. Inline:
            # this runs on every in-process call
            loop = self._loop
            deadline = self._turn_deadline
            if deadline == 0.0:  # the first such call in this turn of the loop
                self._turn_deadline = loop.time() + TURN_BUDGET_S
                loop.call_soon(self._end_turn)
            streak = self._sync_streak
            if streak >= SYNC_STREAK_MAX or (deadline != 0.0 and loop.time() > deadline):
                self._sync_streak = 0
                await asyncio.sleep(0)
            else:
                self._sync_streak = streak + 1
            if future is None:
                return None
        try:
            return await future
        finally:
            if not future.done():  # cancelled by the caller
                self._forget_call(inv_id, timeout_ms)

    def _call_frame(self, request: Any) -> tuple[dict[str, Any], str, Any]:
        """The ``invokefunction`` frame of a trigger request (no invocation id yet), its
        function id and its ``timeout_ms`` (None: the client's default)."""
        if self._fatal is not None:
            raise self._fatal
        if isinstance(request, dict):
            get = request.get
        else:
            def get(key: str, default: Any = None) -> Any:
                return getattr(request, key, default)
        function_id = get("function_id")
        if not isinstance(function_id, str) or not function_id:
            raise ValueError("trigger request needs a function_id")
        explicit_ns = get("namespace")
        if explicit_ns is not None:
            namespace: str | None = self._call_namespace(explicit_ns, "TriggerRequest.namespace")
        elif function_id.startswith(_BUILTIN_PREFIXES):
            namespace = DEFAULT_NAMESPACE
        else:
            namespace = self._namespace
        frame: dict[str, Any] = {"type": Frame.INVOKE_FUNCTION, "function_id": function_id,
                                 "data": to_json_value(get("payload"))}
        metadata = get("metadata")
        if metadata is not None:
            frame["metadata"] = metadata
        value = get("traceparent")  # W3C trace context, relayed by the engine
        if value is not None:
            frame["traceparent"] = value
        value = get("baggage")
        if value is not None:
            frame["baggage"] = value
        if namespace is not None:
            frame["namespace"] = namespace
        action = action_to_wire(get("action"))
        if action is not None:
            frame["action"] = action
        return frame, function_id, get("timeout_ms")

    def _await_answer(self, frame: dict[str, Any], function_id: str,
                      timeout_ms: Any) -> tuple[str, int, asyncio.Future[Any]]:
        """Give ``frame`` an invocation id and a pending future with its deadline."""
        timeout_ms = timeout_ms or self._timeout_ms
        inv_id = self._next_call_id()
        frame["invocation_id"] = inv_id
        future = self._loop.create_future()
        self._deadlines.add(inv_id, timeout_ms)
        self._pending[inv_id] = _Pending(future, timeout_ms, function_id)
        return inv_id, timeout_ms, future

    def _forget_call(self, inv_id: str, timeout_ms: int) -> None:
        self._deadlines.discard(inv_id, timeout_ms)
        self._pending.pop(inv_id, None)

    def _end_turn(self) -> None:
        self._sync_streak = 0
        self._turn_deadline = 0.0

    def trigger_nowait(self, request: dict[str, Any] | TriggerRequest) -> "asyncio.Future[Any]":
        """Start a request/response call and return its future at once (pyiii addition, on
        the client's loop only): no coroutine and no task, for code that races a call against
        other events. The future fails like ``trigger_async`` (``TIMEOUT`` after
        ``timeout_ms``); cancelling it only stops waiting. Void and Enqueue actions are not
        accepted here (use ``trigger_async``)."""
        if not self._on_loop_thread():
            raise RuntimeError("III.trigger_nowait() runs on the client's event loop only")
        frame, function_id, timeout_ms = self._call_frame(request)
        if frame.get("action") is not None:
            raise ValueError("trigger_nowait() is for request/response calls; use trigger_async")
        inv_id, timeout_ms, future = self._await_answer(frame, function_id, timeout_ms)
        try:
            sent = self._send_now(frame)
        except BaseException:
            self._forget_call(inv_id, timeout_ms)
            raise
        if not sent:
            self._spawn(self._send_or_fail(frame, future, inv_id, timeout_ms))
        return future

    async def _send_or_fail(self, frame: dict[str, Any], future: "asyncio.Future[Any]",
                            inv_id: str, timeout_ms: int) -> None:
        try:
            await self._send(frame)
        except Exception as exc:
            self._forget_call(inv_id, timeout_ms)
            if not future.done():
                future.set_exception(exc)

