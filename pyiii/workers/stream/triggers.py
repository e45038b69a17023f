"""Trigger types ``stream``, ``stream:join`` and ``stream:leave`` (spec/workers.md §7.5)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from ...sdk import III, TriggerConfig, TriggerHandler
from ..conditions import ConditionFailed, passes

log = logging.getLogger("pyiii.workers.stream")


def _check_strings(kind: str, cfg: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if cfg.get(name) is not None and not isinstance(cfg[name], str):
            raise ValueError(f"{kind} trigger config.{name} must be a string")


class Bindings(TriggerHandler[Any]):
    """Bindings of one trigger type, kept in registration order."""

    kind = ""
    fields: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.bindings: dict[str, TriggerConfig[Any]] = {}

    def check(self, cfg: dict[str, Any]) -> None:
        _check_strings(self.kind, cfg, self.fields + ("condition_function_id",))

    def register_trigger(self, config: TriggerConfig[Any]) -> None:
        cfg = config.config if config.config is not None else {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{self.kind} trigger config must be an object")
        self.check(cfg)
        self.bindings.pop(config.id, None)  # a replacement moves to the end, like a new one
        self.bindings[config.id] = config

    def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        self.bindings.pop(config.id, None)

    def active(self, binding: TriggerConfig[Any]) -> bool:
        return binding.id in self.bindings


class StreamBindings(Bindings):
    kind = "stream"
    fields = ("stream_name", "group_id", "item_id")

    def check(self, cfg: dict[str, Any]) -> None:
        if not isinstance(cfg.get("stream_name"), str):
            raise ValueError("stream trigger config.stream_name is required "
                             "({stream_name, group_id?, item_id?, condition_function_id?})")
        super().check(cfg)

    def matching(self, message: dict[str, Any]) -> list[TriggerConfig[Any]]:
        found = []
        for binding in self.bindings.values():
            cfg = binding.config or {}
            if cfg["stream_name"] != message["streamName"]:
                continue
            if cfg.get("group_id") is not None and cfg["group_id"] != message["groupId"]:
                continue
            if cfg.get("item_id") is not None and cfg["item_id"] != message["id"]:
                continue
            found.append(binding)
        return found


class MembershipBindings(Bindings):
    """``stream:join`` / ``stream:leave``: ``stream_name`` is an optional filter."""

    fields = ("stream_name",)

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def matching(self, stream: str) -> list[TriggerConfig[Any]]:
        return [b for b in self.bindings.values()
                if (b.config or {}).get("stream_name") in (None, stream)]


def _request(binding: TriggerConfig[Any], payload: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"function_id": binding.function_id, "payload": payload,
                               "namespace": binding.namespace or "default"}
    if binding.metadata is not None:
        request["metadata"] = binding.metadata
    return request


async def _condition(iii: III, binding: TriggerConfig[Any], payload: Any) -> bool:
    return await passes(iii, (binding.config or {}).get("condition_function_id"), payload,
                        binding.namespace or "default", binding.metadata)


class Triggers:
    """The three trigger types and how their handlers are invoked."""

    def __init__(self, iii: III) -> None:
        self.iii = iii
        self.stream = StreamBindings()
        self.join = MembershipBindings("stream:join")
        self.leave = MembershipBindings("stream:leave")
        self.tasks: set[asyncio.Task[None]] = set()

    def register(self) -> None:
        for ref, handler, description in (
            ("stream", self.stream, "Fires for every change of a stream's items and custom events"),
            ("stream:join", self.join, "Runs when a socket joins a stream; may refuse the join"),
            ("stream:leave", self.leave, "Runs when a socket leaves a stream or disconnects"),
        ):
            self.iii.register_trigger_type({"id": ref, "description": description}, handler)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def fire(self, message: dict[str, Any],
             claim: Callable[[TriggerConfig[Any]], Awaitable[bool]] | None = None) -> None:
        """Dispatch a change in the background; the writer never waits for handlers. With
        ``claim`` (changes shared through redis) a binding runs only if this engine claims it."""
        bindings = self.stream.matching(message)
        if bindings:
            self._spawn(self._dispatch(bindings, message, claim))

    async def _dispatch(self, bindings: list[TriggerConfig[Any]], payload: dict[str, Any],
                        claim: Callable[[TriggerConfig[Any]], Awaitable[bool]] | None) -> None:
        for binding in bindings:
            if not self.stream.active(binding):
                continue  # unregistered meanwhile: no new deliveries
            if claim is not None and not await claim(binding):
                continue  # another engine holding the same binding runs it
            try:
                if await _condition(self.iii, binding, payload):
                    await self.iii.trigger_async(_request(binding, payload))
            except ConditionFailed as exc:
                log.warning("stream trigger %s skipped: %s", binding.id, exc)
            except Exception as exc:
                log.info("stream trigger handler %s failed: %s", binding.function_id, exc)

    async def allow_join(self, payload: dict[str, Any]) -> bool:
        """Run the join bindings in order; False as soon as one refuses or fails."""
        for binding in self.join.matching(payload["stream_name"]):
            if not self.join.active(binding):
                continue
            try:
                if not await _condition(self.iii, binding, payload):
                    continue
                result = await self.iii.trigger_async(_request(binding, payload))
            except Exception as exc:  # a failed condition or handler refuses the join
                log.warning("stream:join binding %s refused the join: %s", binding.id, exc)
                return False
            if isinstance(result, dict) and result.get("unauthorized") is True:
                return False
        return True

    def left(self, payload: dict[str, Any]) -> None:
        bindings = self.leave.matching(payload["stream_name"])
        if bindings:
            self._spawn(self._run_leave(bindings, payload))

    async def _run_leave(self, bindings: list[TriggerConfig[Any]], payload: dict[str, Any]) -> None:
        for binding in bindings:
            if not self.leave.active(binding):
                continue
            try:
                if await _condition(self.iii, binding, payload):
                    await self.iii.trigger_async(_request(binding, payload))
            except Exception as exc:
                log.info("stream:leave binding %s failed: %s", binding.id, exc)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
