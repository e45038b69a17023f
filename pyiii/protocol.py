"""The engine ⇄ worker wire protocol: frame names, error codes, limits, encoding.

Pure: no I/O, no asyncio. Frames are plain ``dict`` objects everywhere in pyiii (the
in-process transport passes them as they are), so this module only names the keys,
validates what arrives and builds what leaves. One place for each fact: every frame
name, error code, close code and size limit used by the engine or the SDK lives here.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import orjson

__all__ = [
    "Frame",
    "Code",
    "Close",
    "InvalidFrame",
    "decode",
    "encode",
    "new_id",
    "is_uuid",
    "error_body",
    "normalise_error",
]

# -- sizes and timings ---------------------------------------------------------------------

KIB = 1024
MIB = 1024 * 1024
MAX_INBOUND_MESSAGE = 64 * MIB
SINGLE_FRAME_MAX = 16 * MIB  # outbound messages above this are fragmented
OUTBOUND_FRAGMENT = 1 * MIB
SMALL_RECIPIENT_LIMIT = 1 * MIB  # clients that did not declare large-messages.v1
LARGE_RECIPIENT_LIMIT = 64 * MIB
OUTBOUND_BACKLOG_LIMIT = 256 * MIB
LARGE_MESSAGES_FEATURE = "large-messages.v1"
LARGE_MESSAGE_RUNTIMES = frozenset({"node", "rust"})

DEFAULT_ENGINE_PORT = 49134
DEFAULT_ENGINE_URL = f"ws://127.0.0.1:{DEFAULT_ENGINE_PORT}"
HANDSHAKE_TIMEOUT_MS = 10_000
NAMESPACE_GRACE_MS = 5_000
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
DEFAULT_NAMESPACE = "default"
TELEMETRY_PREFIXES = (b"OTLP", b"LOGS", b"MTRC")


class Frame:
    """Values of the ``type`` key."""

    WORKER_REGISTERED = "workerregistered"
    REATTACH = "reattach"
    REGISTER_FUNCTION = "registerfunction"
    UNREGISTER_FUNCTION = "unregisterfunction"
    REGISTER_SERVICE = "registerservice"
    INVOKE_FUNCTION = "invokefunction"
    INVOCATION_RESULT = "invocationresult"
    REGISTER_TRIGGER_TYPE = "registertriggertype"
    UNREGISTER_TRIGGER_TYPE = "unregistertriggertype"
    REGISTER_TRIGGER = "registertrigger"
    UNREGISTER_TRIGGER = "unregistertrigger"
    TRIGGER_REGISTRATION_RESULT = "triggerregistrationresult"
    REGISTRATION_REJECTED = "registrationrejected"
    PING = "ping"
    PONG = "pong"
    ERROR = "error"
    # 0.25 observe family: accepted and ignored (never sent by pyiii)
    IGNORED = frozenset(
        {"observe", "unobserve", "observerack", "invocationsobserved", "localinvocationstats"}
    )


class Code:
    """Error codes carried in ErrorBody ``code`` and ``registrationrejected``."""

    FUNCTION_NOT_FOUND = "function_not_found"
    INVOCATION_STOPPED = "invocation_stopped"
    INVOCATION_FAILED = "invocation_failed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_MESSAGE = "invalid_message"
    INVALID_NAMESPACE = "INVALID_NAMESPACE"
    FORBIDDEN = "FORBIDDEN"
    ENQUEUE_ERROR = "enqueue_error"
    DESERIALIZATION_ERROR = "deserialization_error"
    INVALID_ARGUMENTS = "INVALID_ARGUMENTS"
    NOT_FOUND = "NOT_FOUND"
    TRIGGER_REGISTRATION_FAILED = "trigger_registration_failed"
    TRIGGER_ID_CONFLICT = "TRIGGER_ID_CONFLICT"
    URL_VALIDATION_FAILED = "url_validation_failed"
    HTTP_REQUEST_FAILED = "http_request_failed"
    HTTP_RESPONSE_FAILED = "http_response_failed"
    INVALID_RESPONSE = "invalid_response"
    HTTP_ERROR = "http_error"
    FUNCTION_NAMESPACE_CONFLICT = "FUNCTION_NAMESPACE_CONFLICT"
    WORKER_NAMESPACE_CONFLICT = "WORKER_NAMESPACE_CONFLICT"
    AUTH_ERROR = "AUTH_ERROR"
    TIMEOUT = "TIMEOUT"  # SDK-local


class Close:
    """WebSocket close codes the engine uses."""

    NORMAL = 1000  # reattach eviction, channel end
    GOING_AWAY = 1001  # shutdown, listener removed
    POLICY = 1008  # access refused, worker name conflict
    TOO_BIG = 1009  # inbound message too large
    INTERNAL = 1011  # ping timeout, outbound backlog, channel peer lost
    RESTART = 1012  # listener rebound on reload


class TransportClosed(ConnectionError):
    """A worker link (WebSocket or in-process) ended; shared by the engine and the SDK.

    ``code``/``reason`` carry the WebSocket close code and reason when known.
    """

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__(f"transport closed ({code}) {reason}".rstrip())
        self.code = code
        self.reason = reason


class InvalidFrame(Exception):
    """A frame with a known type but a missing or ill-typed required field."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"field '{field}' {detail}")
        self.field = field


# -- encoding ------------------------------------------------------------------------------


def encode(frame: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. Bytes, sent as a *text* message by the transports."""
    try:
        return orjson.dumps(frame)
    except TypeError:
        # integers beyond 64 bits and other rarities orjson refuses
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode()


def decode(message: str | bytes) -> dict[str, Any] | None:
    """Parse one control message.

    Returns the frame, or ``None`` for an empty/whitespace message (ignored by rule).
    Raises ``ValueError`` with a reason for anything that is not a JSON object with a string
    ``type``: such frames are dropped by the caller, never answered.
    """
    if not message or (len(message) < 64 and not message.strip()):
        return None
    try:
        frame = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ValueError(f"not a JSON object but {type(frame).__name__}")
    if not isinstance(frame.get("type"), str):
        raise ValueError("no string 'type'")
    return frame


def new_id() -> str:
    return str(uuid.uuid4())


class IdSequence:
    """Fast unique ids in UUIDv4 form for one process's calls: a random 80-bit prefix (version
    and variant bits set) plus a counter. ``uuid4()`` costs a system call per id; invocation ids
    only need to be unique, and the engine reuses UUID-shaped ids as leg ids (§4.3)."""

    def __init__(self) -> None:
        head = uuid.uuid4().hex
        self._prefix = f"{head[:8]}-{head[8:12]}-4{head[13:16]}-{'89ab'[int(head[16], 16) % 4]}{head[17:20]}-"
        self._tail = int(head[20:32], 16)

    def __call__(self) -> str:
        self._tail = (self._tail + 1) & 0xFFFFFFFFFFFF
        return f"{self._prefix}{self._tail:012x}"


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_uuid(value: str) -> bool:
    """A canonical lower-case 8-4-4-4-12 UUID string."""
    return len(value) == 36 and _UUID.fullmatch(value) is not None


# -- field access --------------------------------------------------------------------------


def opt(frame: dict[str, Any], key: str) -> Any:
    """Optional value: absent and ``null`` are the same (input rule)."""
    return frame.get(key)


def req_str(frame: dict[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidFrame(key, "is missing" if value is None else "must be a non-empty string")
    return value


def opt_str(frame: dict[str, Any], key: str) -> str | None:
    value = frame.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidFrame(key, "must be a string")
    return value


def is_blank(value: str | None) -> bool:
    return value is not None and not value.strip()


# -- builders ------------------------------------------------------------------------------


def error_body(code: str, message: str, stacktrace: str | None = None) -> dict[str, Any]:
    body = {"code": code, "message": message}
    if stacktrace is not None:
        body["stacktrace"] = stacktrace
    return body


def normalise_error(error: Any) -> dict[str, Any]:
    """Make any non-null ``error`` value a valid ErrorBody instead of dropping the answer."""
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and isinstance(message, str):
            if len(error) == 2 or (len(error) == 3 and isinstance(error.get("stacktrace"), str)):
                return error
            return error_body(code, message, error.get("stacktrace") if isinstance(
                error.get("stacktrace"), str) else None)
    else:
        code = message = None
    return error_body(
        code if isinstance(code, str) else Code.INVOCATION_FAILED,
        message if isinstance(message, str) else encode(error).decode(),
    )


def worker_registered(worker_id: str, reattach_token: str) -> dict[str, Any]:
    # never a "features" key: official 0.25 clients would switch on observe / local dispatch
    return {"type": Frame.WORKER_REGISTERED, "worker_id": worker_id, "reattach_token": reattach_token}


def result_frame(
    invocation_id: str,
    function_id: str | None,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    traceparent: str | None = None,
    baggage: str | None = None,
) -> dict[str, Any]:
    """An E→W ``invocationresult``: ``result`` only when non-null, ``error`` on failure."""
    frame: dict[str, Any] = {"type": Frame.INVOCATION_RESULT, "invocation_id": invocation_id}
    if function_id is not None:
        frame["function_id"] = function_id
    if error is not None:
        frame["error"] = error
    elif result is not None:
        frame["result"] = result
    if traceparent is not None:
        frame["traceparent"] = traceparent
    if baggage is not None:
        frame["baggage"] = baggage
    return frame


def function_conflict(namespace: str, function_id: str, owner: str, message: str) -> dict[str, Any]:
    return {
        "type": Frame.REGISTRATION_REJECTED,
        "code": Code.FUNCTION_NAMESPACE_CONFLICT,
        "namespace": namespace,
        "function_id": function_id,
        "owner_worker_id": owner,
        "message": message,
    }


def worker_name_conflict(namespace: str, name: str, owner: str, message: str) -> dict[str, Any]:
    return {
        "type": Frame.REGISTRATION_REJECTED,
        "code": Code.WORKER_NAMESPACE_CONFLICT,
        "namespace": namespace,
        "worker_name": name,
        "owner_worker_id": owner,
        "message": message,
    }


def trigger_result(trigger_id: str, trigger_type: str, function_id: str,
                   error: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": Frame.TRIGGER_REGISTRATION_RESULT,
        "id": trigger_id,
        "trigger_type": trigger_type,
        "function_id": function_id,
        "error": error,
    }


def function_not_found(function_id: str, namespace: str, elsewhere: list[str]) -> dict[str, Any]:
    message = f"Function {function_id} not found in namespace {namespace}."
    if elsewhere:
        message += f" It is registered in namespace(s): {', '.join(sorted(elsewhere))}."
    return error_body(Code.FUNCTION_NOT_FOUND, message)


INVOCATION_STOPPED = {"code": Code.INVOCATION_STOPPED, "message": "Invocation stopped"}


def invocation_stopped() -> dict[str, Any]:
    return dict(INVOCATION_STOPPED)
