"""Option and request types of the worker client.

Plain dataclasses (no pydantic: they sit on the invocation path). Names, fields and
defaults follow the official Python SDK so user code ports by changing the import only.
Every input that accepts one of these also accepts the equivalent ``dict`` and, where
the official SDK used pydantic models, any object with ``model_dump()``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Union

from pyiii.protocol import DEFAULT_ENGINE_URL

if TYPE_CHECKING:
    from .transport import Connector

__all__ = [
    "DEFAULT_ENGINE_URL",
    "DEFAULT_INVOCATION_TIMEOUT_MS",
    "MAX_QUEUE_SIZE",
    "IIIConnectionState",
    "ConnectionStateCallback",
    "ReconnectionConfig",
    "TelemetryOptions",
    "InitOptions",
    "FunctionRef",
    "TriggerActionVoid",
    "TriggerActionEnqueue",
    "TriggerAction",
    "TriggerRequest",
    "HttpInvocationConfig",
    "RegisterTriggerInput",
    "RegisterTriggerTypeInput",
    "as_mapping",
    "action_to_wire",
    "format_to_wire",
    "http_invocation_to_wire",
]

DEFAULT_INVOCATION_TIMEOUT_MS = 30_000
#: frames kept while disconnected (invocations, results); registrations are replayed instead
MAX_QUEUE_SIZE = 1000

IIIConnectionState = Literal["disconnected", "connecting", "connected", "reconnecting", "failed"]
ConnectionStateCallback = Callable[[IIIConnectionState], None]


@dataclass
class ReconnectionConfig:
    """Backoff between connection attempts: ``initial * multiplier**attempt`` capped at
    ``max_delay_ms``, then spread by ±``jitter_factor`` so a restarted engine is not hit
    by every worker at once. ``max_retries = -1`` retries forever."""

    initial_delay_ms: int = 1000
    max_delay_ms: int = 30_000
    backoff_multiplier: float = 2.0
    jitter_factor: float = 0.3
    max_retries: int = -1


@dataclass
class TelemetryOptions:
    """Accepted for source compatibility with the official SDK; pyiii sends no telemetry."""

    language: str | None = None
    project_name: str | None = None
    framework: str | None = None


@dataclass
class InitOptions:
    """Options of ``register_worker``.

    ``connector`` (pyiii addition) replaces the WebSocket: a zero-argument coroutine
    function returning a ``Transport``. The engine uses it to run first-party workers in
    its own event loop without serialisation. ``enable_metrics_reporting``, ``otel`` and
    ``telemetry`` are accepted so official-SDK code constructs unchanged; they do nothing.
    """

    worker_name: str | None = None
    worker_description: str | None = None
    namespace: str | None = None
    enable_metrics_reporting: bool = True
    invocation_timeout_ms: int = DEFAULT_INVOCATION_TIMEOUT_MS
    reconnection_config: ReconnectionConfig | None = None
    otel: Any = None
    headers: dict[str, str] | None = None
    telemetry: TelemetryOptions | None = None
    connector: "Connector | None" = None


@dataclass
class FunctionRef:
    """Handle of a registered function; ``unregister()`` removes it from the engine and
    from the set replayed on reconnection."""

    id: str
    unregister: Callable[[], None]


@dataclass(frozen=True)
class TriggerActionVoid:
    """Fire and forget: ``trigger`` returns ``None`` at once and no answer travels."""

    type: Literal["void"] = "void"


@dataclass(frozen=True)
class TriggerActionEnqueue:
    """Route the call through the named queue; ``trigger`` returns ``{"messageReceiptId"}``."""

    queue: str
    type: Literal["enqueue"] = "enqueue"


class TriggerAction:
    """Factories matching the official ``TriggerAction.Void()`` / ``TriggerAction.Enqueue(queue=)``."""

    @staticmethod
    def Void() -> TriggerActionVoid:  # noqa: N802 - official name
        return TriggerActionVoid()

    @staticmethod
    def Enqueue(*, queue: str) -> TriggerActionEnqueue:  # noqa: N802 - official name
        return TriggerActionEnqueue(queue=queue)


@dataclass
class TriggerRequest:
    """One ``trigger`` call. ``namespace`` absent means this worker's namespace (``default``
    for ``engine::*`` ids); ``timeout_ms`` absent means ``InitOptions.invocation_timeout_ms``.
    ``dispatch`` is accepted for compatibility: pyiii always goes through the engine.
    ``traceparent`` / ``baggage`` (pyiii addition) carry W3C trace context with the call."""

    function_id: str
    payload: Any = None
    action: Union[TriggerActionVoid, TriggerActionEnqueue, dict[str, Any], None] = None
    timeout_ms: int | None = None
    metadata: Any = None
    namespace: str | None = None
    dispatch: str | None = None
    traceparent: str | None = None
    baggage: str | None = None


@dataclass
class HttpInvocationConfig:
    """An HTTP-invoked function (spec §8): the engine calls ``url`` itself; ``auth`` values
    name environment variables of the engine, never secrets."""

    url: str
    method: str = "POST"
    timeout_ms: int | None = None
    headers: dict[str, str] | None = None
    auth: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "method": self.method}
        if self.timeout_ms is not None:
            out["timeout_ms"] = self.timeout_ms
        if self.headers is not None:
            out["headers"] = dict(self.headers)
        if self.auth is not None:
            out["auth"] = as_mapping(self.auth)
        return out


@dataclass
class RegisterTriggerInput:
    """A binding: fire ``function_id`` on events of trigger type ``type`` with ``config``."""

    type: str
    function_id: str
    config: Any = None
    metadata: Any = None
    namespace: str | None = None
    trigger_namespace: str | None = None


@dataclass
class RegisterTriggerTypeInput:
    """A trigger type this worker provides; formats may be JSON Schemas or model classes."""

    id: str
    description: str = ""
    trigger_request_format: Any = None
    call_request_format: Any = None
    namespace: str | None = None


# -- conversions -------------------------------------------------------------------------


def as_mapping(value: Any) -> dict[str, Any]:
    """A dict view of a dict, dataclass or pydantic model; drops ``None`` values the way
    the official SDK's ``model_dump(exclude_none=True)`` does for non-dict inputs."""
    if isinstance(value, dict):
        return value
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return {k: v for k, v in dump(mode="json").items() if v is not None}
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return {k: getattr(value, k) for k in fields if getattr(value, k) is not None}
    raise TypeError(f"expected a dict or a model, got {type(value).__name__}")


_VOID = {"type": "void"}


def action_to_wire(action: Any) -> dict[str, Any] | None:
    """The wire ``action`` object, or ``None`` for a plain request/response call."""
    if action is None:
        return None
    kind = action.get("type") if isinstance(action, dict) else getattr(action, "type", None)
    if kind == "void":
        return _VOID
    if kind == "enqueue":
        queue = action.get("queue") if isinstance(action, dict) else getattr(action, "queue", None)
        if not isinstance(queue, str) or not queue:
            raise ValueError("TriggerAction.Enqueue needs a non-empty queue name")
        return {"type": "enqueue", "queue": queue}
    raise ValueError(f"unknown trigger action {action!r}: use TriggerAction.Void() or .Enqueue(queue=...)")


def format_to_wire(fmt: Any) -> Any:
    """A request/response format: JSON Schema as given, or a model class's schema."""
    if isinstance(fmt, type):
        schema = getattr(fmt, "model_json_schema", None)
        return schema() if schema is not None else None
    if fmt is not None and not isinstance(fmt, (dict, list, str, int, float, bool)):
        return as_mapping(fmt)
    return fmt


def http_invocation_to_wire(value: Any) -> dict[str, Any]:
    """The wire ``invocation`` object of an HTTP-invoked function."""
    to_wire = getattr(value, "to_wire", None)
    if to_wire is not None:
        return to_wire()
    try:
        config = dict(as_mapping(value))
    except TypeError:
        raise TypeError("handler_or_invocation must be callable or an HTTP invocation config "
                        f"with a url, got {type(value).__name__}") from None
    if not isinstance(config.get("url"), str):
        raise TypeError("an HTTP invocation config needs a string `url`")
    if config.get("auth") is not None:
        config["auth"] = as_mapping(config["auth"])
    return copy.deepcopy(config)
