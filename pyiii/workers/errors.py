"""How first-party workers fail a call: ``InvocationError`` with the spec's code and message.

The SDK sends an ``InvocationError`` raised by a handler as ``{code, message}``; these helpers
give every worker the same wording for the two failures they all share.
"""

from __future__ import annotations

from typing import Any, Awaitable

from ..sdk import InvocationError
from ..storage.kv import StorageUnavailable


def bad_input(function_id: str, detail: str) -> InvocationError:
    """A request of the wrong shape (spec/workers.md §1.4)."""
    return InvocationError("deserialization_error",
                           f"Failed to deserialize input for {function_id}: {detail}", function_id)


async def stored(code: str, operation: Awaitable[Any]) -> Any:
    """Await a storage operation; a storage failure becomes the function's own error code."""
    try:
        return await operation
    except InvocationError:
        raise
    except StorageUnavailable as exc:  # e.g. "redis unavailable: ...", shown as it is
        raise InvocationError(code, str(exc)) from exc
    except Exception as exc:
        raise InvocationError(code, f"storage failed: {exc}") from exc
