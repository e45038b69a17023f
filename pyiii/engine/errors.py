"""The one exception the engine's own functions and call paths raise to fail a call."""

from __future__ import annotations

from typing import Any

from .. import protocol


class CallError(Exception):
    """Fails an invocation with an ErrorBody (``code``, ``message``)."""

    def __init__(self, code: str, message: str, stacktrace: str | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.stacktrace = stacktrace

    @property
    def body(self) -> dict[str, Any]:
        return protocol.error_body(self.code, self.message, self.stacktrace)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "CallError":
        return cls(body["code"], body["message"], body.get("stacktrace"))


def bad_input(function_id: str, detail: str) -> CallError:
    return CallError(protocol.Code.DESERIALIZATION_ERROR,
                     f"Failed to deserialize input for {function_id}: {detail}")
