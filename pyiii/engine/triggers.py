"""Trigger types, their providers, and bindings (spec §5).

The rules that make provider restarts invisible to consumers live here: the first live
provider of a ``(namespace, type)`` key keeps it and later ones wait as standbys; bindings
without a provider are parked as *pending* and sent as soon as one appears; bindings that fell
back to the ``default`` provider move home when their own namespace gets one.

No I/O beyond ``Connection.send``; no asyncio except the optional acknowledgement future a
durable registration waits on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from .. import protocol
from ..protocol import DEFAULT_NAMESPACE, Code, Frame
from .connection import Connection, FrameTooLarge

log = logging.getLogger("pyiii.engine.triggers")

TypeKey = tuple[str, str]  # (namespace, type id)
ENGINE_TRIGGER_TYPES = ("engine::workers-available", "engine::functions-available")


@dataclass(eq=False)
class TriggerType:
    key: TypeKey
    provider: Connection | None  # None: the engine itself
    description: str = ""
    configuration_schema: Any = None
    request_schema: Any = None
    response_schema: Any = None
    standbys: list[Connection] = field(default_factory=list)

    @property
    def worker_name(self) -> str:
        if self.provider is None:
            return "engine"
        return self.provider.name or self.key[1].split("::", 1)[0]


@dataclass(eq=False)
class Binding:
    id: str
    trigger_type: str
    function_id: str
    config: Any
    metadata: Any
    owner: Connection | None  # None: durable (engine::register_trigger)
    namespace: str  # of the target function
    trigger_namespace: str | None  # explicit provider namespace, strict
    home: str
    provider_key: TypeKey | None = None  # set while active
    ack: asyncio.Future[dict[str, Any] | None] | None = None  # durable registration waiting

    @property
    def active(self) -> bool:
        return self.provider_key is not None

    def provider_frame(self, frame_type: str) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": frame_type,
            "id": self.id,
            "trigger_type": self.trigger_type,
            "function_id": self.function_id,
            "config": self.config,
        }
        if self.metadata is not None:
            frame["metadata"] = self.metadata
        if self.namespace != DEFAULT_NAMESPACE:
            frame["namespace"] = self.namespace
        if self.provider_key is not None and self.provider_key[0] != DEFAULT_NAMESPACE:
            frame["trigger_namespace"] = self.provider_key[0]
        return frame


class TriggerTable:
    def __init__(self) -> None:
        self.types: dict[TypeKey, TriggerType] = {}
        self.bindings: dict[str, Binding] = {}
        for type_id in ENGINE_TRIGGER_TYPES:
            key = (DEFAULT_NAMESPACE, type_id)
            self.types[key] = TriggerType(key, None, description=_ENGINE_DESCRIPTIONS[type_id])

    # -- queries ----------------------------------------------------------------------------

    def resolve(self, binding: Binding) -> TypeKey | None:
        if binding.trigger_namespace is not None:
            key = (binding.trigger_namespace, binding.trigger_type)
            return key if key in self.types else None
        for ns in (binding.home, DEFAULT_NAMESPACE):
            key = (ns, binding.trigger_type)
            if key in self.types:
                return key
        return None

    def active_on(self, key: TypeKey) -> list[Binding]:
        return [b for b in self.bindings.values() if b.provider_key == key]

    # -- sending to providers ---------------------------------------------------------------

    def _activate(self, binding: Binding, key: TypeKey) -> None:
        """Mark active on ``key`` and ask its provider (if a worker) to serve the binding."""
        binding.provider_key = key
        provider = self.types[key].provider
        if provider is None:
            return
        try:
            provider.send(binding.provider_frame(Frame.REGISTER_TRIGGER))
        except FrameTooLarge as exc:
            self._rejected(binding, protocol.error_body(
                Code.PAYLOAD_TOO_LARGE, exc.describe("the trigger registration")))

    def _deactivate(self, binding: Binding) -> None:
        """Tell the current provider to stop serving the binding; leaves it pending."""
        key = binding.provider_key
        if key is None:
            return
        ttype = self.types.get(key)
        if ttype is not None and ttype.provider is not None and ttype.provider.live:
            try:
                ttype.provider.send(binding.provider_frame(Frame.UNREGISTER_TRIGGER))
            except FrameTooLarge:
                log.warning("unregistertrigger %s too large for its provider", binding.id)
        binding.provider_key = None

    def _rejected(self, binding: Binding, error: dict[str, Any]) -> None:
        binding.provider_key = None
        if binding.ack is not None and not binding.ack.done():
            binding.ack.set_result(error)
            return
        owner = binding.owner
        if owner is not None and owner.live:
            try:
                owner.send(protocol.trigger_result(
                    binding.id, binding.trigger_type, binding.function_id, error))
            except FrameTooLarge:
                pass

    # -- consumers --------------------------------------------------------------------------

    def bind(self, binding: Binding) -> dict[str, Any] | None:
        """Store (or replace) a binding and send it to its provider. Returns an ErrorBody on refusal."""
        existing = self.bindings.get(binding.id)
        if existing is not None:
            mine = existing.owner is not None and (
                existing.owner is binding.owner or not existing.owner.live)
            if not mine:
                return protocol.error_body(
                    Code.TRIGGER_ID_CONFLICT,
                    f"Trigger id '{binding.id}' is already used by another worker's binding; "
                    "register the trigger under a new id.")
            new_key = self.resolve(binding)
            if existing.provider_key is not None and existing.provider_key != new_key:
                self._deactivate(existing)
            # the old provider keeps serving under the same id when the key is unchanged
            # (providers treat a repeated id as a replacement)
        self.bindings[binding.id] = binding
        key = self.resolve(binding)
        if key is not None:
            self._activate(binding, key)
        return None

    def unbind(self, conn: Connection | None, trigger_id: str) -> bool:
        """Remove a binding. ``conn`` None is the administrative path (any binding)."""
        binding = self.bindings.get(trigger_id)
        if binding is None or (conn is not None and binding.owner is not conn):
            return False
        self._deactivate(binding)
        del self.bindings[trigger_id]
        if binding.ack is not None and not binding.ack.done():
            binding.ack.set_result(None)
        return True

    def provider_answer(self, conn: Connection, trigger_id: str, error: Any) -> None:
        binding = self.bindings.get(trigger_id)
        if binding is None or binding.provider_key is None:
            return
        ttype = self.types.get(binding.provider_key)
        if ttype is None or ttype.provider is not conn:
            return
        if error is None:
            if binding.ack is not None and not binding.ack.done():
                binding.ack.set_result(None)
            return
        self._rejected(binding, protocol.normalise_error(error))

    # -- providers --------------------------------------------------------------------------

    def register_type(self, conn: Connection, key: TypeKey, description: str,
                      config_schema: Any, request_schema: Any) -> None:
        ttype = self.types.get(key)
        if ttype is not None and ttype.provider is not conn and ttype.provider is not None \
                and ttype.provider.live:
            if conn not in ttype.standbys:
                ttype.standbys.append(conn)
            log.warning("trigger type %s/%s already provided by %s; %s waits as standby",
                        key[0], key[1], ttype.provider.label(), conn.label())
            return
        if ttype is None:
            ttype = TriggerType(key, conn)
            self.types[key] = ttype
        ttype.provider = conn
        if conn in ttype.standbys:
            ttype.standbys.remove(conn)
        ttype.description = description
        ttype.configuration_schema = config_schema
        ttype.request_schema = request_schema
        self._activation_pass(key)

    def _activation_pass(self, key: TypeKey) -> None:
        for binding in list(self.bindings.values()):
            if binding.owner is not None and not binding.owner.live:
                if binding.provider_key is None:
                    del self.bindings[binding.id]
                continue
            if binding.provider_key == key:
                self._activate(binding, key)
            elif binding.provider_key is None and self.resolve(binding) == key:
                self._activate(binding, key)
        if key[0] != DEFAULT_NAMESPACE:
            fallback = (DEFAULT_NAMESPACE, key[1])
            for binding in list(self.bindings.values()):
                if (binding.provider_key == fallback and binding.home == key[0]
                        and binding.trigger_namespace is None):
                    self._deactivate(binding)
                    self._activate(binding, key)

    def unregister_type(self, conn: Connection, key: TypeKey) -> None:
        ttype = self.types.get(key)
        if ttype is None:
            return
        if ttype.provider is conn:
            self._provider_gone(ttype)
        elif conn in ttype.standbys:
            ttype.standbys.remove(conn)

    def _provider_gone(self, ttype: TriggerType) -> None:
        while ttype.standbys:
            standby = ttype.standbys.pop(0)
            if standby.live:
                ttype.provider = standby
                self._activation_pass(ttype.key)
                return
        del self.types[ttype.key]
        for binding in self.active_on(ttype.key):
            binding.provider_key = None
            key = self.resolve(binding)
            if key is not None:
                self._activate(binding, key)
            elif binding.ack is not None and not binding.ack.done():
                binding.ack.set_result(None)

    # -- departures -------------------------------------------------------------------------

    def drop_connection(self, conn: Connection) -> None:
        """Consumer then provider departure of a connection being cleaned up (§2.6 step 5)."""
        for binding in list(self.bindings.values()):
            if binding.owner is conn:
                self._deactivate(binding)
                del self.bindings[binding.id]
        for ttype in list(self.types.values()):
            if conn in ttype.standbys:
                ttype.standbys.remove(conn)
            if ttype.provider is conn:
                for binding in self.active_on(ttype.key):
                    if binding.ack is not None and not binding.ack.done():
                        binding.ack.set_result(None)  # departure counts as accepted
                self._provider_gone(ttype)


_ENGINE_DESCRIPTIONS = {
    "engine::workers-available": "Fires when a worker connects, registers or disconnects",
    "engine::functions-available": "Fires when the set of registered functions changes",
}
