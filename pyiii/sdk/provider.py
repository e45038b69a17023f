"""The trigger-provider side of the client: ``registertrigger`` / ``unregistertrigger`` frames
from the engine run the provider's callbacks and are answered with
``triggerregistrationresult`` (spec/protocol.md §5).

Callbacks for one binding id run strictly in arrival order; the first runs at once (like an
incoming invocation, so the two keep their relative order) and later ones wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pyiii.protocol import Code, Frame

from . import eager
from .triggers import TriggerConfig

log = logging.getLogger("pyiii.sdk")


class TriggerProviderOps:
    """Mixed into ``ConnectionCore``, which provides the loop, the send path and the tables."""

    _loop: asyncio.AbstractEventLoop
    _tasks: set[Any]
    _trigger_ops: dict[str, "asyncio.Task[None]"]
    _trigger_types: dict[str, Any]

    async def _send(self, frame: dict[str, Any], registration: bool = False) -> None:
        raise NotImplementedError

    def _on_trigger_op(self, frame: dict[str, Any]) -> None:
        """Run provider callbacks for one binding id strictly in arrival order."""
        trigger_id = str(frame.get("id", ""))
        previous = self._trigger_ops.get(trigger_id)
        if previous is not None and not previous.done():
            task: asyncio.Task[None] | None = self._loop.create_task(self._trigger_op(frame, previous))
        else:  # run at once, like invocations, so both keep their arrival order
            task = eager.start(self._loop, self._trigger_op(frame, None), self._tasks)
            if task is None:
                self._trigger_ops.pop(trigger_id, None)
                return
        self._trigger_ops[trigger_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._trigger_ops.get(trigger_id) is t:
                del self._trigger_ops[trigger_id]

        task.add_done_callback(done)

    async def _trigger_op(self, frame: dict[str, Any], previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait((previous,))
        trigger_type = frame.get("trigger_type")
        provided = self._trigger_types.get(trigger_type)  # type: ignore[arg-type]
        register = frame.get("type") == Frame.REGISTER_TRIGGER
        answer: dict[str, Any] = {"type": Frame.TRIGGER_REGISTRATION_RESULT, "id": frame.get("id"),
                                  "trigger_type": trigger_type, "function_id": frame.get("function_id")}
        if provided is None:
            if register:  # say so, or the binding would look active and never fire
                answer["error"] = {"code": "trigger_type_not_found",
                                   "message": f"this worker does not provide trigger type {trigger_type}"}
                await self._send(answer)
            return
        config = TriggerConfig(
            id=str(frame.get("id", "")), function_id=str(frame.get("function_id", "")),
            config=frame.get("config"), metadata=frame.get("metadata"), namespace=frame.get("namespace"),
            trigger_type=trigger_type, trigger_namespace=frame.get("trigger_namespace"))
        handler = provided.handler
        try:
            result = handler.register_trigger(config) if register else handler.unregister_trigger(config)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
        except Exception as exc:
            log.warning("trigger handler for %s failed on %s: %s", trigger_type, frame.get("id"), exc)
            if register:
                answer["error"] = {"code": Code.TRIGGER_REGISTRATION_FAILED, "message": str(exc)}
        if register:
            await self._send(answer)
