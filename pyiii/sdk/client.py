"""``III``: the public worker client (registrations, calls, channels, lifecycle).

Two modes, chosen at construction:
- *own loop*: built where no event loop runs (a script). The client runs its loop in a
  background thread, like the official SDK, and the sync API (``trigger``, ``shutdown``)
  blocks the caller's thread.
- *attached*: built inside a running loop (first-party workers live in the engine's
  loop). The client connects in the background on that loop; code uses the async API
  (``trigger_async``, ``shutdown_async``, ``await wait_connected()``), and the sync calls
  refuse to run on that loop since they would deadlock it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import warnings
from typing import Any, Callable

from pyiii.protocol import Frame, IdSequence, new_id
from pyiii.runtime import new_event_loop

from .channels import Channel, ChannelReader, ChannelWriter, StreamChannelRef, resolve_channel_refs
from .calls import Calls
from .connection import _Function, _TriggerType
from .errors import InvocationError
from .invoke import make_invoker, request_format_of, response_format_of, to_json_value
from .transport import websocket_connector
from .triggers import Trigger, TriggerHandler, TriggerTypeRef
from .types import (
    ConnectionStateCallback,
    FunctionRef,
    IIIConnectionState,
    InitOptions,
    ReconnectionConfig,
    as_mapping,
    format_to_wire,
    http_invocation_to_wire,
)
from .worker_info import resolve_headers, worker_metadata, worker_name, worker_namespace

__all__ = ["III"]

log = logging.getLogger("pyiii.sdk")

CONNECT_WAIT_S = 30.0


class III(Calls):
    """A worker's link to the engine. Prefer ``register_worker`` to build one."""

    def __init__(self, address: str, options: InitOptions | None = None) -> None:
        self._address = address
        self._options = options = options or InitOptions()
        self._namespace = worker_namespace(options.namespace)
        self._name = worker_name(options.worker_name)
        self._headers = resolve_headers(options.headers)
        self._timeout_ms = options.invocation_timeout_ms
        self._next_call_id = IdSequence()
        register_call = {
            "type": Frame.INVOKE_FUNCTION,
            "function_id": "engine::workers::register",
            "data": worker_metadata(self._name, options.worker_description, self._namespace),
            "action": {"type": "void"},
        }
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        self._thread: threading.Thread | None = None
        if running is not None:
            self._loop = running
            self._loop_thread_id = threading.get_ident()
        else:
            self._loop = new_event_loop()  # the SDK's own loop: uvloop where installed
            # not a daemon: like the official SDK, a worker script stays up until shutdown()
            self._thread = threading.Thread(target=self._loop.run_forever, name="pyiii-sdk")
            self._thread.start()
            self._loop_thread_id = self._thread.ident
        self._init_core(options.reconnection_config or ReconnectionConfig(),
                        options.connector or websocket_connector(address, self._headers),
                        register_call)
        self._call_on_loop(self._start)

    def _start(self) -> None:
        self._run_task = self._loop.create_task(self._run())

    # -- lifecycle ----------------------------------------------------------------------

    def _wait_until_connected(self, timeout: float = CONNECT_WAIT_S) -> None:
        """Block (own-loop mode) until connected; a fatal rejection raises, a slow engine
        only warns: the client keeps retrying and replays everything once connected."""
        if not self._settled_sync.wait(timeout):
            log.warning("no engine at %s after %.0f s; still retrying in the background",
                        self._address, timeout)
        if self._fatal is not None:
            raise self._fatal

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the link is up (registrations replayed). Raises the fatal error if
        the client gave up, ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        await self._bridge(self._wait_connected_here(timeout))

    async def _wait_connected_here(self, timeout: float | None) -> None:
        if self._fatal is None and self._state != "connected":
            await asyncio.wait_for(self._connected_async.wait(), timeout)
        if self._fatal is not None:
            raise self._fatal

    def shutdown(self) -> None:
        """Stop reconnecting, fail pending calls with ``SHUTDOWN``, close the link and, in
        own-loop mode, stop the background loop thread."""
        self._refuse_on_loop("shutdown", "shutdown_async")
        asyncio.run_coroutine_threadsafe(self.shutdown_async(), self._loop).result()
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def shutdown_async(self) -> None:
        await self._bridge(self._shutdown_here())

    async def _shutdown_here(self) -> None:
        if self._closing:
            return
        self._closing = True
        task = self._run_task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        link, self._link = self._link, None
        if link is not None:
            try:
                await link.close()
            except Exception:
                pass
        self._fail_pending(lambda inv_id, fid: InvocationError(
            "SHUTDOWN", "iii is shutting down", fid, None, inv_id))
        self._set_state("disconnected")

    def _refuse_on_loop(self, name: str, alternative: str) -> None:
        if self._on_loop_thread():
            raise RuntimeError(
                f"III.{name}() blocks and cannot run on the client's event loop thread; "
                f"use `await client.{alternative}(...)` there")

    async def _bridge(self, coro: Any) -> Any:
        """Run a coroutine on the client loop, whichever loop awaits it."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # -- state --------------------------------------------------------------------------

    def add_connection_state_listener(self, handler: ConnectionStateCallback) -> Callable[[], None]:
        """Call ``handler`` now with the current state, then on every change (on the loop
        thread). Returns an idempotent unsubscribe function."""
        self._listeners.append(handler)
        try:
            handler(self._state)
        except Exception:
            log.exception("connection state listener failed")
        done = False

        def unsubscribe() -> None:
            nonlocal done
            if not done:
                done = True
                try:
                    self._listeners.remove(handler)
                except ValueError:
                    pass

        return unsubscribe

    def get_connection_state(self) -> IIIConnectionState:
        return self._state

    def get_address(self) -> str:
        return self._address

    @property
    def worker_id(self) -> str | None:
        return self._worker_id

    @property
    def rejections(self) -> list[dict[str, Any]]:
        """``FUNCTION_NAMESPACE_CONFLICT`` frames received (non-fatal refusals)."""
        return list(self._rejections)

    # -- functions ----------------------------------------------------------------------

    def register_function(
        self,
        function_id: str,
        handler_or_invocation: Any,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        request_format: Any = None,
        response_format: Any = None,
        observe: Any = None,
        local_dispatch: bool = True,
    ) -> FunctionRef:
        """Host a function: a sync or async handler ``(data[, metadata])``, or an HTTP
        invocation config (``{"url", ...}``) for a function the engine calls over HTTP.
        ``observe``/``local_dispatch`` are accepted for source compatibility and ignored."""
        if not isinstance(function_id, str):
            raise TypeError(f"function_id must be str, got {type(function_id).__name__}")
        if not function_id.strip():
            raise ValueError("function id is required")
        if function_id in self._functions:
            raise ValueError(f"function id '{function_id}' already registered")
        if observe is not None:
            warnings.warn("pyiii.sdk has no observe support; `observe` is ignored", stacklevel=2)
        frame: dict[str, Any] = {"type": Frame.REGISTER_FUNCTION, "id": function_id}
        invoke = None
        if callable(handler_or_invocation) and not isinstance(handler_or_invocation, type):
            invoke = make_invoker(handler_or_invocation)
            if request_format is None:
                request_format = request_format_of(handler_or_invocation)
            if response_format is None:
                response_format = response_format_of(handler_or_invocation)
        else:
            frame["invocation"] = http_invocation_to_wire(handler_or_invocation)
        if description is not None:
            frame["description"] = description
        for key, value in (("request_format", format_to_wire(request_format)),
                           ("response_format", format_to_wire(response_format)),
                           ("metadata", metadata)):
            if value is not None:
                frame[key] = copy.deepcopy(value)
        entry = _Function(frame, invoke)
        self._functions[function_id] = entry
        self._call_on_loop(self._send_registration, frame)

        def unregister() -> None:
            if self._functions.get(function_id) is entry:
                del self._functions[function_id]
                self._call_on_loop(self._send_registration,
                                   {"type": Frame.UNREGISTER_FUNCTION, "id": function_id})

        return FunctionRef(id=function_id, unregister=unregister)

    # -- triggers -----------------------------------------------------------------------

    def register_trigger_type(self, trigger_type: Any, handler: TriggerHandler[Any]) -> TriggerTypeRef[Any, Any]:
        """Provide a trigger type; the engine forwards each binding of it to ``handler``."""
        spec = as_mapping(trigger_type)
        type_id = spec.get("id")
        if not isinstance(type_id, str) or not type_id.strip():
            raise ValueError("trigger type id is required")
        if not (hasattr(handler, "register_trigger") and hasattr(handler, "unregister_trigger")):
            raise TypeError("handler must implement register_trigger and unregister_trigger")
        frame: dict[str, Any] = {"type": Frame.REGISTER_TRIGGER_TYPE, "id": type_id,
                                 "description": spec.get("description") or ""}
        for key in ("trigger_request_format", "call_request_format"):
            value = format_to_wire(spec.get(key))
            if value is not None:
                frame[key] = copy.deepcopy(value)
        if spec.get("namespace") is not None:
            frame["namespace"] = spec["namespace"]
        self._trigger_types[type_id] = _TriggerType(frame, handler)
        self._call_on_loop(self._send_registration, frame)
        return TriggerTypeRef(self, type_id)

    def unregister_trigger_type(self, trigger_type: Any) -> None:
        spec = as_mapping(trigger_type)
        type_id = spec["id"]
        self._trigger_types.pop(type_id, None)
        frame = {"type": Frame.UNREGISTER_TRIGGER_TYPE, "id": type_id}
        if spec.get("namespace") is not None:
            frame["namespace"] = spec["namespace"]
        self._call_on_loop(self._send_registration, frame)

    def register_trigger(self, trigger: Any) -> Trigger:
        """Bind ``function_id`` to a trigger type. The binding id (UUIDv4) is made once and
        reused on every reconnection, so the provider sees a replacement, not a new one.
        ``namespace`` (of the target function) defaults to this worker's."""
        spec = as_mapping(trigger)
        trigger_type = spec.get("type") or spec.get("trigger_type")
        function_id = spec.get("function_id")
        if not isinstance(trigger_type, str) or not trigger_type:
            raise ValueError("trigger `type` is required")
        if not isinstance(function_id, str) or not function_id:
            raise ValueError("trigger `function_id` is required")
        trigger_id = new_id()
        frame: dict[str, Any] = {"type": Frame.REGISTER_TRIGGER, "id": trigger_id,
                                 "trigger_type": trigger_type, "function_id": function_id}
        if spec.get("config") is not None:
            frame["config"] = copy.deepcopy(to_json_value(spec["config"]))
        if spec.get("metadata") is not None:
            frame["metadata"] = copy.deepcopy(spec["metadata"])
        namespace = self._call_namespace(spec.get("namespace"), "trigger namespace")
        if namespace is not None:
            frame["namespace"] = namespace
        if spec.get("trigger_namespace") is not None:
            frame["trigger_namespace"] = spec["trigger_namespace"]
        self._triggers[trigger_id] = frame
        self._call_on_loop(self._send_registration, frame)

        def unregister() -> None:
            if self._triggers.pop(trigger_id, None) is not None:
                self._call_on_loop(self._send_registration, {
                    "type": Frame.UNREGISTER_TRIGGER, "id": trigger_id, "trigger_type": trigger_type})

        return Trigger(unregister, trigger_id)

    # -- channels -----------------------------------------------------------------------

    def create_channel(self, buffer_size: int | None = None) -> Channel:
        self._refuse_on_loop("create_channel", "create_channel_async")
        return asyncio.run_coroutine_threadsafe(self._create_channel_here(buffer_size), self._loop).result()

    async def create_channel_async(self, buffer_size: int | None = None) -> Channel:
        return await self._bridge(self._create_channel_here(buffer_size))

    @property
    def channel_hub(self) -> Any:
        """The engine's channel hub when this client runs in the engine's process (the
        in-process connector provides it), else None. pyiii addition: lets first-party workers
        create, feed and retire channels without a round trip or a socket."""
        return getattr(self._options.connector, "channel_hub", None)

    async def _create_channel_here(self, buffer_size: int | None) -> Channel:
        hub = self.channel_hub
        if hub is not None and (buffer_size is None or (
                isinstance(buffer_size, int) and not isinstance(buffer_size, bool))):
            made = hub.create(buffer_size)
            refs = {"writer": made.ref("write"), "reader": made.ref("read")}
        else:
            refs = await self.trigger_async({"function_id": "engine::channels::create",
                                             "payload": {"buffer_size": buffer_size}})
        writer_ref, reader_ref = StreamChannelRef.of(refs["writer"]), StreamChannelRef.of(refs["reader"])
        return Channel(writer=self.channel_end(writer_ref), reader=self.channel_end(reader_ref),
                       writer_ref=writer_ref, reader_ref=reader_ref)

    def channel_end(self, ref: dict[str, Any]) -> ChannelReader | ChannelWriter:
        """The live reader or writer for a ChannelRef (pyiii addition: the SDK does this itself
        for refs inside incoming payloads; this is for refs a worker kept, e.g. to end a
        channel nobody used)."""
        cls = ChannelReader if ref["direction"] == "read" else ChannelWriter
        # a connector may open channel ends itself (the engine's in-process one does)
        return cls(self._address, ref, self._headers,
                   opener=getattr(self._options.connector, "open_channel", None), loop=self._loop)

    def _resolve_refs(self, data: Any) -> Any:
        return resolve_channel_refs(data, self.channel_end)

