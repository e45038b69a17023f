"""The ``skills::on-change`` and ``prompts::on-change`` trigger types: every binding hears of
each change, fire-and-forget, so a slow or failing listener never delays a write."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ...sdk import III, TriggerConfig, TriggerHandler
from ..conditions import ConditionFailed, fire

log = logging.getLogger("pyiii.workers.skills")


class ChangeBindings(TriggerHandler[Any]):
    def __init__(self, iii: III, type_id: str) -> None:
        self.iii = iii
        self.type_id = type_id
        self.bindings: dict[str, TriggerConfig[Any]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def register_trigger(self, config: TriggerConfig[Any]) -> None:
        cfg = config.config if config.config is not None else {}
        if not isinstance(cfg, dict):
            raise ValueError(f"{self.type_id} trigger config must be an object "
                             "{condition_function_id?}")
        condition = cfg.get("condition_function_id")
        if condition is not None and not isinstance(condition, str):
            raise ValueError(f"{self.type_id} trigger config.condition_function_id must be a "
                             "string")
        self.bindings[config.id] = config

    def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        self.bindings.pop(config.id, None)

    def dispatch(self, payload: dict[str, Any]) -> None:
        for binding in list(self.bindings.values()):
            task = asyncio.ensure_future(self._deliver(binding, payload))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _deliver(self, binding: TriggerConfig[Any], payload: dict[str, Any]) -> None:
        try:
            await fire(self.iii, binding, payload, void=True)
        except ConditionFailed as exc:
            log.warning("%s binding %s skipped: %s", self.type_id, binding.function_id, exc)
        except Exception as exc:
            log.info("%s delivery to %s failed: %s", self.type_id, binding.function_id, exc)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
