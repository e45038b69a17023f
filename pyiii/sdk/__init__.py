"""pyiii.sdk: the worker client. Same public shape as the official ``iii`` package, so
``from iii import ...`` becomes ``from pyiii.sdk import ...`` and nothing else changes.

Modules: ``register`` (entry point), ``client`` (``III``), ``connection`` (link, replay,
dispatch), ``transport`` (WebSocket / pluggable links), ``channels``, ``triggers``,
``types``, ``errors``, ``invoke`` (handler adaptation), ``worker_info`` (env resolution).
``run`` (from ``pyiii.runtime``) runs an async worker program on uvloop, the loop the client
is fastest on.
"""

from pyiii.protocol import DEFAULT_ENGINE_URL
from pyiii.runtime import run

from .channels import Channel, ChannelReader, ChannelWriter, StreamChannelRef, is_channel_ref
from .client import III
from .errors import InvocationError, RegistrationRejectedError
from .register import register_worker
from .transport import Connector, Transport, TransportClosed, WebSocketTransport, websocket_connector
from .triggers import Trigger, TriggerConfig, TriggerHandler, TriggerTypeRef
from .types import (
    ConnectionStateCallback,
    FunctionRef,
    HttpInvocationConfig,
    IIIConnectionState,
    InitOptions,
    ReconnectionConfig,
    RegisterTriggerInput,
    RegisterTriggerTypeInput,
    TelemetryOptions,
    TriggerAction,
    TriggerActionEnqueue,
    TriggerActionVoid,
    TriggerRequest,
)

__all__ = [
    "DEFAULT_ENGINE_URL",
    "III",
    "register_worker",
    "run",
    "InitOptions",
    "ReconnectionConfig",
    "TelemetryOptions",
    "IIIConnectionState",
    "ConnectionStateCallback",
    "FunctionRef",
    "HttpInvocationConfig",
    "RegisterTriggerInput",
    "RegisterTriggerTypeInput",
    "TriggerAction",
    "TriggerActionEnqueue",
    "TriggerActionVoid",
    "TriggerRequest",
    "InvocationError",
    "RegistrationRejectedError",
    "Trigger",
    "TriggerConfig",
    "TriggerHandler",
    "TriggerTypeRef",
    "Channel",
    "ChannelReader",
    "ChannelWriter",
    "StreamChannelRef",
    "is_channel_ref",
    "Transport",
    "TransportClosed",
    "Connector",
    "WebSocketTransport",
    "websocket_connector",
]
