"""iii-pubsub: fire-and-forget broadcast of a message to every subscriber of a topic.

With the ``redis`` adapter a publish goes to the Redis channel ``<key_prefix>pubsub:<topic>``;
each engine subscribes to the channel of every topic that has bindings on that engine and
delivers what arrives to those bindings (spec/workers.md §6).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import orjson

from ...sdk import III, InvocationError, TriggerConfig, TriggerHandler, register_worker
from ...storage.kv import StorageUnavailable
from ...storage.redis_link import RedisLink, guarded, redis_config
from .. import settings
from ..base import WorkerContext, go_live
from ..conditions import ConditionFailed, fire

log = logging.getLogger("pyiii.workers.pubsub")


class Subscriptions(TriggerHandler[Any]):
    """``subscribe`` bindings by topic; unsubscribing removes only that binding."""

    def __init__(self) -> None:
        self.by_topic: dict[str, dict[str, TriggerConfig[Any]]] = {}
        self.topic_of: dict[str, str] = {}
        # told when a topic gets its first binding / loses its last (redis subscriptions)
        self.on_topic: Callable[[str, bool], None] = lambda topic, active: None

    def register_trigger(self, config: TriggerConfig[Any]) -> None:
        cfg = config.config
        topic = cfg.get("topic") if isinstance(cfg, dict) else None
        if not isinstance(topic, str) or not topic:
            raise ValueError("subscribe trigger needs a non-empty config.topic")
        condition = cfg.get("condition_function_id")
        if condition is not None and not isinstance(condition, str):
            raise ValueError("subscribe trigger config.condition_function_id must be a string")
        self.unregister_trigger(config)
        if topic not in self.by_topic:
            self.by_topic[topic] = {}
            self.on_topic(topic, True)
        self.by_topic[topic][config.id] = config
        self.topic_of[config.id] = topic

    def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        topic = self.topic_of.pop(config.id, None)
        if topic is not None:
            bindings = self.by_topic.get(topic, {})
            bindings.pop(config.id, None)
            if not bindings:
                self.by_topic.pop(topic, None)
                self.on_topic(topic, False)


class PubSubWorker:
    def __init__(self, iii: III, adapter: settings.Adapter) -> None:
        self.iii = iii
        self.adapter = adapter
        self.subscriptions = Subscriptions()
        self.subscriptions.on_topic = self._topic_changed
        self.tasks: set[asyncio.Task[None]] = set()
        self.link = self._link_of(adapter)

    @staticmethod
    def _link_of(adapter: settings.Adapter) -> RedisLink | None:
        return RedisLink(redis_config(adapter.config)) if adapter.name == "redis" else None

    def _channel(self, link: RedisLink, topic: str) -> str:
        return link.key("pubsub:" + topic)

    def _topic_changed(self, topic: str, active: bool) -> None:
        if self.link is None:
            return
        if active:
            self._listen(self.link, topic)
        else:
            self.link.unsubscribe(self._channel(self.link, topic))

    def _listen(self, link: RedisLink, topic: str) -> None:
        def received(body: bytes) -> None:
            self._fan_out(topic, orjson.loads(body).get("data"))
        link.subscribe(self._channel(link, topic), received)

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
        link = self.link
        if link is None:
            self._fan_out(topic, message)
            return None
        body = orjson.dumps({"data": message})
        try:
            await guarded(link.client.publish(self._channel(link, topic), body))
        except StorageUnavailable as exc:
            raise InvocationError("PUBLISH_ERROR", str(exc), "publish") from exc
        return None

    def _fan_out(self, topic: str, message: Any) -> None:
        """One fire-and-forget delivery per binding of the topic on this engine."""
        for binding in list(self.subscriptions.by_topic.get(topic, {}).values()):
            task = asyncio.ensure_future(self._deliver(binding, message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _deliver(self, binding: TriggerConfig[Any], message: Any) -> None:
        try:
            await fire(self.iii, binding, message, void=True)
        except ConditionFailed as exc:
            log.warning("subscriber %s skipped: %s", binding.function_id, exc)
        except Exception as exc:
            log.info("delivery to %s failed: %s", binding.function_id, exc)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        new = parse_settings(config)
        if (new.name == "redis") == (self.adapter.name == "redis") and \
                (new.name != "redis" or new.config == self.adapter.config):
            self.adapter = new
            return
        # swap: subscribe on the new adapter before leaving the old one (§6)
        link = self._link_of(new)
        if link is not None:
            try:
                await link.ping()  # connected first; on failure the old adapter stays
            except StorageUnavailable as exc:
                await link.close()
                raise ValueError(f"config.adapter: {exc}") from None
            for topic in self.subscriptions.by_topic:
                self._listen(link, topic)
        old, self.link, self.adapter = self.link, link, new
        if old is not None:
            await old.close()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.iii.shutdown_async()
        if self.link is not None:
            await self.link.close()


def parse_settings(config: dict[str, Any]) -> settings.Adapter:
    settings.check_keys("iii-pubsub", config, ("adapter",))
    chosen = settings.adapter("iii-pubsub", config, "memory", ephemeral=False)
    if chosen.name == "sqlite":
        log.info("iii-pubsub: pub/sub keeps no data; the sqlite adapter runs as memory")
        return settings.Adapter("memory", {})
    if chosen.name == "redis":
        redis_config(chosen.config)  # refuse a bad redis block before anything starts
    return chosen


async def start(ctx: WorkerContext) -> PubSubWorker:
    adapter = parse_settings(ctx.config)
    iii = register_worker(ctx.url, ctx.sdk_options())
    worker = PubSubWorker(iii, adapter)
    return await go_live(worker)
