"""The condition rule every first-party trigger type follows (spec/protocol.md §5.11).

Only a result of exactly JSON ``false`` skips the handler; an error counts as a failed event,
which each provider reports in its own terms.
"""

from __future__ import annotations

from typing import Any

from ..sdk import III


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
