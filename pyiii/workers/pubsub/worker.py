"""iii-pubsub: fire-and-forget broadcast of a message to every subscriber of a topic."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ...sdk import III, InvocationError, TriggerConfig, TriggerHandler, register_worker
from .. import settings
from ..base import WorkerContext, go_live
from ..conditions import ConditionFailed, fire

log = logging.getLogger("pyiii.workers.pubsub")


class Subscriptions(TriggerHandler[Any]):
    """``subscribe`` bindings by topic; unsubscribing removes only that binding."""

    def __init__(self) -> None:
        self.by_topic: dict[str, dict[str, TriggerConfig[Any]]] = {}
        self.topic_of: dict[str, str] = {}

    def register_trigger(self, config: TriggerConfig[Any]) -> None:
        cfg = config.config
        topic = cfg.get("topic") if isinstance(cfg, dict) else None
        if not isinstance(topic, str) or not topic:
            raise ValueError("subscribe trigger needs a non-empty config.topic")
        condition = cfg.get("condition_function_id")
        if condition is not None and not isinstance(condition, str):
            raise ValueError("subscribe trigger config.condition_function_id must be a string")
        self.unregister_trigger(config)
        self.by_topic.setdefault(topic, {})[config.id] = config
        self.topic_of[config.id] = topic

    def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        topic = self.topic_of.pop(config.id, None)
        if topic is not None:
            bindings = self.by_topic.get(topic, {})
            bindings.pop(config.id, None)
            if not bindings:
                self.by_topic.pop(topic, None)


class PubSubWorker:
    def __init__(self, iii: III) -> None:
        self.iii = iii
        self.subscriptions = Subscriptions()
        self.tasks: set[asyncio.Task[None]] = set()

    def register(self) -> None:
        self.iii.register_function("publish", self.publish,
                                   description="Broadcast data to every subscriber of a topic")
        self.iii.register_trigger_type(
            {"id": "subscribe", "description": "Fires for every message published to a topic"},
            self.subscriptions)

    async def publish(self, data: Any) -> None:
        topic = data.get("topic") if isinstance(data, dict) else None
        if not isinstance(topic, str) or not topic:
            raise InvocationError("topic_not_set", "Topic is not set", "publish")
        message = data.get("data")
        for binding in list(self.subscriptions.by_topic.get(topic, {}).values()):
            task = asyncio.ensure_future(self._deliver(binding, message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return None

    async def _deliver(self, binding: TriggerConfig[Any], message: Any) -> None:
        try:
            await fire(self.iii, binding, message, void=True)
        except ConditionFailed as exc:
            log.warning("subscriber %s skipped: %s", binding.function_id, exc)
        except Exception as exc:
            log.info("delivery to %s failed: %s", binding.function_id, exc)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        parse_settings(config)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.iii.shutdown_async()


def parse_settings(config: dict[str, Any]) -> settings.Adapter:
    settings.check_keys("iii-pubsub", config, ("adapter",))
    chosen = settings.adapter("iii-pubsub", config, "memory", ephemeral=False)
    if chosen.name == "sqlite":
        log.info("iii-pubsub: pub/sub keeps no data; the sqlite adapter runs as memory")
    return chosen


async def start(ctx: WorkerContext) -> PubSubWorker:
    parse_settings(ctx.config)
    iii = register_worker(ctx.url, ctx.sdk_options())
    worker = PubSubWorker(iii)
    return await go_live(worker)
