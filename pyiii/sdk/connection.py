"""The connection half of the client: link lifecycle, replay, outbound queue, inbound dispatch.

Everything here runs on the client's event loop (its own background loop, or the loop it
was attached to). ``III`` (client.py) builds the public API on top of this core.

Why the structure:
- Registrations live in dicts (the source of truth) and are *replayed* on every
  connection instead of being queued, so nothing registered while offline is lost or
  duplicated. Other frames (calls, results) are queued while offline, up to 1000.
- While a fresh link replays, new frames go to a replay buffer flushed right after, so
  the engine sees: reattach, trigger types, functions, triggers, queued frames, then the
  ``engine::workers::register`` call (spec §2.2).
- Calls are futures keyed by invocation id, with timeouts kept by ``Deadlines`` (one timer
  per distinct timeout, not per call): no task per call; a result frame resolves its future
  synchronously in the read loop.
- An incoming invocation runs its handler at once (``eager.start``) and gets a task only if
  the handler has to wait, so a handler that answers straight away costs no task and no
  extra turn of the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
from typing import Any, Callable

from pyiii.protocol import HANDSHAKE_TIMEOUT_MS, Code, Frame

from . import eager
from .deadlines import Deadlines
from .errors import InvocationError, RegistrationRejectedError, error_from_wire
from .invoke import Invoker, error_body_for
from .provider import TriggerProviderOps
from .transport import Transport, TransportClosed
from .triggers import TriggerHandler
from .types import MAX_QUEUE_SIZE, IIIConnectionState, ReconnectionConfig

log = logging.getLogger("pyiii.sdk")

_PONG = {"type": Frame.PONG}


class _Function:
    __slots__ = ("frame", "invoke")

    def __init__(self, frame: dict[str, Any], invoke: Invoker | None) -> None:
        self.frame = frame
        self.invoke = invoke  # None: HTTP-invoked, the engine calls it, never us


class _TriggerType:
    __slots__ = ("frame", "handler")

    def __init__(self, frame: dict[str, Any], handler: TriggerHandler[Any]) -> None:
        self.frame = frame
        self.handler = handler


class _Pending:
    __slots__ = ("future", "timeout_ms", "function_id")

    def __init__(self, future: asyncio.Future[Any], timeout_ms: int, function_id: str) -> None:
        self.future = future
        self.timeout_ms = timeout_ms
        self.function_id = function_id


class ConnectionCore(TriggerProviderOps):
    """State and coroutines shared by every public method; see the module docstring."""

    _loop: asyncio.AbstractEventLoop
    _loop_thread_id: int | None

    def _init_core(self, reconnection: ReconnectionConfig, connector: Callable[[], Any],
                   register_call: dict[str, Any]) -> None:
        self._reconnection = reconnection
        self._connector = connector
        self._register_call = register_call  # the engine::workers::register frame
        self._functions: dict[str, _Function] = {}
        self._trigger_types: dict[str, _TriggerType] = {}
        self._triggers: dict[str, dict[str, Any]] = {}
        self._queue: list[dict[str, Any]] = []
        self._pending: dict[str, _Pending] = {}
        self._deadlines = Deadlines(self._loop, self._expire)
        self._sync_streak = 0  # calls answered synchronously in a row (see Calls.trigger_async)
        self._turn_deadline = 0.0  # when this turn of the loop stops taking such calls
        self._link: Transport | None = None
        self._replay_buf: list[tuple[dict[str, Any], bool]] | None = None
        self._state: IIIConnectionState = "disconnected"
        self._listeners: list[Callable[[IIIConnectionState], None]] = []
        self._worker_id: str | None = None
        self._reattach_token: str | None = None
        self._fatal: Exception | None = None
        self._rejections: list[dict[str, Any]] = []
        self._closing = False
        self._greeted = False
        self._run_task: asyncio.Task[None] | None = None
        self._connected_async = asyncio.Event()
        self._settled_sync = threading.Event()  # connected, or failed for good
        self._tasks: set[asyncio.Future[Any]] = set()
        self._trigger_ops: dict[str, asyncio.Task[None]] = {}

    # -- threads ------------------------------------------------------------------------

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread_id

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run bookkeeping on the loop thread: FIFO, so calls keep their order."""
        if self._on_loop_thread():
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- state --------------------------------------------------------------------------

    def _set_state(self, state: IIIConnectionState) -> None:
        if state == self._state:
            return
        self._state = state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("connection state listener failed")

    def _fail_pending(self, exc_factory: Callable[[str, str], Exception]) -> None:
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        for inv_id, p in pending.items():
            if not p.future.done():
                p.future.set_exception(exc_factory(inv_id, p.function_id))

    # -- outbound -----------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any], registration: bool = False) -> None:
        """Send now, or buffer: replay buffer while a link replays, the offline queue for
        non-registration frames (registrations are replayed from the dicts instead)."""
        link = self._link
        if link is not None:
            try:
                await link.send(frame)
                return
            except TransportClosed:
                if registration:
                    return
        if self._replay_buf is not None:
            self._replay_buf.append((frame, registration))
        elif not registration:
            if len(self._queue) < MAX_QUEUE_SIZE:
                self._queue.append(frame)
            else:
                log.warning("offline queue full (%d frames): dropping %s", MAX_QUEUE_SIZE, frame.get("type"))

    def _send_now(self, frame: dict[str, Any]) -> bool:
        """Write ``frame`` synchronously when the live link can (no coroutine per frame);
        False: use ``_send``. Encoding errors propagate as from ``_send``."""
        send_now = getattr(self._link, "send_nowait", None)
        if send_now is None:
            return False
        try:
            send_now(frame)
        except TransportClosed:
            return False
        return True

    def _send_registration(self, frame: dict[str, Any]) -> None:
        """Loop thread only. A registration change made while offline needs no frame."""
        if self._link is not None or self._replay_buf is not None:
            self._spawn(self._send(frame, True))

    # -- connection loop ----------------------------------------------------------------

    def _backoff_s(self, attempt: int) -> float:
        cfg = self._reconnection
        base = min(cfg.initial_delay_ms * cfg.backoff_multiplier ** attempt, cfg.max_delay_ms)
        jitter = base * cfg.jitter_factor * (2 * random.random() - 1)
        return max(0.0, base + jitter) / 1000

    async def _run(self) -> None:
        """Connect, serve, and after ANY end of the link reconnect with backoff, until
        shutdown, a fatal rejection, or ``max_retries`` failed attempts."""
        attempt = 0
        self._set_state("connecting")
        while not self._closing:
            self._greeted = False
            try:
                transport = await self._connector()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.log(logging.WARNING if attempt == 0 else logging.DEBUG,
                        "cannot reach the engine: %s", exc)
            else:
                try:
                    await self._session(transport)
                except TransportClosed as exc:
                    log.info("engine link closed: %s", exc)
                except asyncio.TimeoutError:
                    log.warning("engine sent no workerregistered frame in time; reconnecting")
                except Exception:
                    log.exception("engine link failed")
                finally:
                    self._link = None
                    self._connected_async.clear()
                    try:
                        await transport.close()
                    except Exception:
                        pass
            if self._closing or self._fatal is not None:
                break
            if self._greeted:  # a link that got as far as the greeting resets the backoff
                attempt = 0
            retries = self._reconnection.max_retries
            if 0 <= retries <= attempt:
                self._give_up(ConnectionError(f"engine unreachable after {attempt} retries"))
                break
            self._set_state("reconnecting")
            delay = self._backoff_s(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    def _give_up(self, exc: Exception) -> None:
        self._fatal = exc
        self._set_state("failed")
        self._fail_pending(lambda _i, _f: exc)
        self._connected_async.set()
        self._settled_sync.set()

    async def _session(self, transport: Transport) -> None:
        """One link: greeting, replay, then the read loop until the link ends (raises)."""
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (shutdown)
        # when the frame arrives in the same loop iteration
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_MS / 1000):
            first = await transport.recv()
        if first.get("type") != Frame.WORKER_REGISTERED:
            log.warning("first engine frame is %r, not workerregistered", first.get("type"))
            self._dispatch(first, transport)
        self._greeted = True
        previous = (self._worker_id, self._reattach_token)
        if first.get("type") == Frame.WORKER_REGISTERED:
            self._worker_id = first.get("worker_id")
            self._reattach_token = first.get("reattach_token")
        await self._replay(transport, previous)
        await self._send(dict(self._register_call))
        self._set_state("connected")
        self._connected_async.set()
        self._settled_sync.set()
        dispatch = self._dispatch
        run = getattr(transport, "run", None)
        if run is not None:  # the transport calls us per frame: no task switch per message
            await run(functools.partial(dispatch, transport=transport))
            return
        recv = transport.recv
        while True:
            dispatch(await recv(), transport)

    async def _replay(self, transport: Transport, previous: tuple[str | None, str | None]) -> None:
        self._replay_buf = []
        frames: list[dict[str, Any]] = []
        if previous[0] and previous[1]:
            frames.append({"type": Frame.REATTACH, "previous_worker_id": previous[0],
                           "reattach_token": previous[1]})
        frames += [t.frame for t in list(self._trigger_types.values())]
        frames += [f.frame for f in list(self._functions.values())]
        frames += list(self._triggers.values())
        try:
            for frame in frames:
                await transport.send(frame)
            while self._queue:
                frame = self._queue.pop(0)
                try:
                    await transport.send(frame)
                except BaseException:
                    self._queue.insert(0, frame)
                    raise
            while self._replay_buf:
                frame, _ = self._replay_buf.pop(0)
                await transport.send(frame)
            self._link = transport
        finally:
            leftover, self._replay_buf = self._replay_buf or [], None
            if self._link is not transport:  # these came after everything still queued
                self._queue.extend(f for f, registration in leftover if not registration)

    # -- inbound ------------------------------------------------------------------------

    def _dispatch(self, frame: dict[str, Any], transport: Transport) -> None:
        kind = frame.get("type")
        if kind == Frame.INVOCATION_RESULT:
            self._on_result(frame)
        elif kind == Frame.INVOKE_FUNCTION:
            eager.start(self._loop, self._on_invoke(frame), self._tasks)
        elif kind == Frame.REGISTER_TRIGGER or kind == Frame.UNREGISTER_TRIGGER:
            self._on_trigger_op(frame)
        elif kind == Frame.PING:
            self._spawn(self._send(_PONG))
        elif kind == Frame.TRIGGER_REGISTRATION_RESULT:
            if frame.get("error") is not None:
                log.warning("trigger %s (%s → %s) refused: %s", frame.get("id"), frame.get("trigger_type"),
                            frame.get("function_id"), frame.get("error"))
        elif kind == Frame.REGISTRATION_REJECTED:
            self._on_rejected(frame, transport)
        elif kind == Frame.WORKER_REGISTERED:
            self._worker_id = frame.get("worker_id", self._worker_id)
            self._reattach_token = frame.get("reattach_token", self._reattach_token)
        elif kind == Frame.ERROR:
            log.warning("engine error: %s", frame.get("error"))

    def _on_result(self, frame: dict[str, Any]) -> None:
        inv_id = frame.get("invocation_id")
        pending = self._pending.pop(inv_id, None)  # type: ignore[arg-type]
        if pending is None:
            return  # late answer after a timeout, or not ours
        self._deadlines.discard(inv_id, pending.timeout_ms)  # type: ignore[arg-type]
        if pending.future.done():
            return
        error = frame.get("error")
        if error is not None:
            pending.future.set_exception(error_from_wire(error, pending.function_id, inv_id))
        else:
            pending.future.set_result(frame.get("result"))

    def _expire(self, inv_id: str, timeout_ms: int) -> None:
        pending = self._pending.pop(inv_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(InvocationError(
                Code.TIMEOUT, f"Invocation of {pending.function_id} timed out after {timeout_ms} ms",
                pending.function_id, None, inv_id))

    def _on_rejected(self, frame: dict[str, Any], transport: Transport) -> None:
        code = frame.get("code")
        if code == Code.FUNCTION_NAMESPACE_CONFLICT:
            log.warning("function %s refused in namespace %s: %s", frame.get("function_id"),
                        frame.get("namespace"), frame.get("message") or "owned by another worker")
            self._rejections.append(frame)
            return
        error = RegistrationRejectedError(
            str(code), str(frame.get("namespace", "")), str(frame.get("worker_name", "")),
            str(frame.get("owner_worker_id", "")), frame.get("message"))
        log.error("%s; not reconnecting", error)
        self._give_up(error)
        self._spawn(transport.close())

    def _resolve_refs(self, data: Any) -> Any:  # overridden by III (channels need the address)
        return data

    async def _on_invoke(self, frame: dict[str, Any]) -> None:
        inv_id = frame.get("invocation_id")
        function_id = frame.get("function_id")
        fn = self._functions.get(function_id)  # type: ignore[arg-type]
        reply: dict[str, Any] = {"type": Frame.INVOCATION_RESULT, "invocation_id": inv_id,
                                 "function_id": function_id}
        if fn is None or fn.invoke is None:
            code = "function_not_invokable" if fn is not None else Code.FUNCTION_NOT_FOUND
            reply["error"] = {"code": code, "message": f"Function '{function_id}' is not invokable here"}
        else:
            try:
                data = frame.get("data")
                if data.__class__ is dict or data.__class__ is list:
                    data = self._resolve_refs(data)
                reply["result"] = await fn.invoke(data, frame.get("metadata"))
            except (Exception, SystemExit, KeyboardInterrupt) as exc:
                # a handler calling sys.exit() must fail its call, not kill the client loop
                if inv_id is None:
                    log.exception("handler %s failed", function_id)
                reply.pop("result", None)
                reply["error"] = error_body_for(exc)
        if not inv_id:
            return
        try:
            if not self._send_now(reply):
                await self._send(reply)
        except (TypeError, ValueError) as exc:  # the result could not be encoded
            reply.pop("result", None)
            reply["error"] = {"code": Code.INVOCATION_FAILED,
                              "message": f"result of {function_id} is not JSON-serialisable: {exc}"}
            await self._send(reply)
