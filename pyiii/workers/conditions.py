"""The condition rule every first-party trigger type follows (spec/protocol.md §5.11).

Only a result of exactly JSON ``false`` skips the handler; an error counts as a failed event,
which each provider reports in its own terms.
"""

from __future__ import annotations

from typing import Any

from ..sdk import III, TriggerAction


class ConditionFailed(Exception):
    """The condition function itself failed (error or not found)."""


async def passes(iii: III, condition_function_id: str | None, payload: Any, namespace: str | None,
                 metadata: Any) -> bool:
    if not condition_function_id:
        return True
    request: dict[str, Any] = {"function_id": condition_function_id, "payload": payload,
                               "namespace": namespace or "default"}
    if metadata is not None:
        request["metadata"] = metadata
    try:
        result = await iii.trigger_async(request)
    except Exception as exc:
        raise ConditionFailed(f"condition {condition_function_id} failed: {exc}") from exc
    return result is not False


async def fire(iii: III, binding: Any, payload: Any, *, void: bool = False) -> bool:
    """Deliver one event to a binding (``TriggerConfig``) unless its condition answers exactly
    ``false``: the handler runs in the binding's namespace with its metadata. Returns whether
    the handler ran; raises ``ConditionFailed`` or the handler's error."""
    namespace = binding.namespace or "default"
    config = binding.config if isinstance(binding.config, dict) else {}
    if not await passes(iii, config.get("condition_function_id"), payload, namespace,
                        binding.metadata):
        return False
    request: dict[str, Any] = {"function_id": binding.function_id, "payload": payload,
                               "namespace": namespace}
    if binding.metadata is not None:
        request["metadata"] = binding.metadata
    if void:
        request["action"] = TriggerAction.Void()
    await iii.trigger_async(request)
    return True
