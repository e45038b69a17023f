"""Trigger types and triggers: the provider-side handler ABC and the handles users get.

A worker that *provides* a trigger type (cron, http, a webhook…) implements
``TriggerHandler``; the engine forwards each binding of that type to it. A worker that
*binds* a function gets a ``Trigger`` handle. Same names and shapes as the official SDK.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, TypeVar

if TYPE_CHECKING:
    from .client import III
    from .types import FunctionRef

__all__ = ["TriggerConfig", "TriggerHandler", "Trigger", "TriggerTypeRef"]

TConfig = TypeVar("TConfig")
C = TypeVar("C")
R = TypeVar("R")


@dataclass
class TriggerConfig(Generic[TConfig]):
    """One binding as the provider sees it. ``namespace`` is where ``function_id`` lives:
    a provider that fires the binding later must pass it to ``trigger`` so the call
    resolves in the right namespace (``None`` means ``default``)."""

    id: str
    function_id: str
    config: Any = None
    metadata: Any = None
    namespace: str | None = None
    trigger_type: str | None = None
    trigger_namespace: str | None = None


class TriggerHandler(ABC, Generic[TConfig]):
    """Provider callbacks. May be ``async def`` or plain ``def``; plain ones run on the
    client's event loop (so they may schedule loop work) and must return quickly.

    A handler may receive the same binding id again (replay after a reconnect, config
    update): treat it as a replacement. Raising from ``register_trigger`` rejects the
    binding; the engine reports it to the binding's owner.
    """

    @abstractmethod
    async def register_trigger(self, config: TriggerConfig[TConfig]) -> None:
        """Start serving a binding."""

    @abstractmethod
    async def unregister_trigger(self, config: TriggerConfig[TConfig]) -> None:
        """Stop serving a binding."""


class Trigger:
    """A binding this worker registered; kept and replayed (same id) until ``unregister``."""

    def __init__(self, unregister_fn: Callable[[], None], trigger_id: str | None = None) -> None:
        self._unregister_fn = unregister_fn
        self.id = trigger_id

    def unregister(self) -> None:
        self._unregister_fn()


class TriggerTypeRef(Generic[C, R]):
    """Handle returned by ``register_trigger_type``: binds functions to this type with the
    binding namespace defaulting to this worker's, so the pair resolves together."""

    def __init__(self, iii: "III", trigger_type_id: str) -> None:
        self._iii = iii
        self.id = trigger_type_id

    def register_trigger(self, function_id: str, config: C, metadata: dict[str, Any] | None = None) -> Trigger:
        dump = getattr(config, "model_dump", None)
        return self._iii.register_trigger({
            "type": self.id,
            "function_id": function_id,
            "config": dump() if dump is not None else config,
            "metadata": metadata,
        })

    def register_function(
        self,
        function_id: str,
        handler: Callable[[R], Any] | Callable[[R], Awaitable[Any]],
        *,
        description: str | None = None,
    ) -> "FunctionRef":
        return self._iii.register_function(function_id, handler, description=description)

    def unregister(self) -> None:
        self._iii.unregister_trigger_type({"id": self.id})
