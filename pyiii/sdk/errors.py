"""Exceptions raised to user code by the worker client.

Same names and attributes as the official Python SDK so ``except InvocationError``
blocks and ``err.code`` checks port unchanged.
"""

from __future__ import annotations

from typing import Any

from pyiii.protocol import Code

__all__ = ["InvocationError", "RegistrationRejectedError", "error_from_wire"]


class InvocationError(Exception):
    """A call made with ``trigger`` failed: the engine or the callee answered an error,
    or the SDK gave up waiting (code ``TIMEOUT``) or was shut down (code ``SHUTDOWN``).

    ``str(err)`` is ``"<code>: <message>"`` and never includes the remote stacktrace,
    which may expose the callee's file paths.
    """

    def __init__(
        self,
        code: str,
        message: str,
        function_id: str | None = None,
        stacktrace: str | None = None,
        invocation_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.function_id = function_id
        self.stacktrace = stacktrace
        self.invocation_id = invocation_id


class RegistrationRejectedError(Exception):
    """The engine refused this worker for good (``WORKER_NAMESPACE_CONFLICT``): another live
    worker holds the same name in the same namespace. The client stops reconnecting, since
    every retry would be refused the same way while the other worker lives.
    """

    def __init__(self, code: str, namespace: str, worker_name: str, owner_worker_id: str,
                 message: str | None = None) -> None:
        super().__init__(
            f"{code}: worker '{worker_name}' rejected in namespace '{namespace}' "
            f"(owned by '{owner_worker_id}')" + (f": {message}" if message else "")
        )
        self.code = code
        self.namespace = namespace
        self.worker_name = worker_name
        self.owner_worker_id = owner_worker_id
        self.message = message


def error_from_wire(error: Any, function_id: str | None, invocation_id: str | None) -> InvocationError:
    """Turn a wire ErrorBody into an exception; tolerate malformed bodies rather than
    hiding the failure behind a TypeError."""
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        stack = error.get("stacktrace")
        return InvocationError(
            code if isinstance(code, str) else Code.INVOCATION_FAILED,
            message if isinstance(message, str) else str(error),
            function_id,
            stack if isinstance(stack, str) else None,
            invocation_id,
        )
    return InvocationError(Code.INVOCATION_FAILED, str(error), function_id, None, invocation_id)
