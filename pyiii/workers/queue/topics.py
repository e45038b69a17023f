"""Durable topics: the `durable:subscriber` trigger type, destinations and publish (§4.3-4.4).

Each distinct ``(namespace, function_id)`` subscribed to a topic is one *destination* with its
own internal queue ``<topic>::<function_id>@<namespace>``; a publish stores one job per known
destination. A destination stays known ``subscription_retention_ms`` after its last binding went
away, so messages published while its worker restarts wait for it; after that its undelivered
jobs move to its DLQ (``subscription expired``) and it is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ...sdk import TriggerConfig, TriggerHandler
from ...storage.kv import StorageUnavailable
from .config import QueueConfig, Subscription, parse_binding
from .storage import Destination, Job

if TYPE_CHECKING:
    from .worker import QueueWorker

log = logging.getLogger("pyiii.workers.queue")

REFRESH_S = 10.0
DEFAULT_TOPIC_QUEUE = QueueConfig(max_retries=3)  # maxRetries 2 → 3 deliveries


def _escape(value: str) -> str:
    return value.replace("%", "%25").replace("@", "%40")


def destination_name(topic: str, function_id: str, namespace: str | None) -> str:
    return f"{topic}::{_escape(function_id)}@{_escape(namespace or 'default')}"


class Topics(TriggerHandler[Any]):
    def __init__(self, worker: "QueueWorker") -> None:
        self.worker = worker
        self.known: dict[str, Destination] = {}
        self.configs: dict[str, QueueConfig] = {}  # last settings seen per destination
        # destination -> binding id -> (binding, subscription); the last entry is the newest
        self.bindings: dict[str, OrderedDict[str, tuple[TriggerConfig[Any], Subscription]]] = {}
        self.dest_of: dict[str, str] = {}
        self.started_at = time.time()
        self.sweeper: asyncio.Task[None] | None = None

    async def load(self) -> None:
        try:
            for dest in await self.worker.store.destinations():
                self.known[dest.name] = dest
        except StorageUnavailable as exc:  # start anyway; publishes read them again later
            log.warning("iii-queue: topic destinations not loaded: %s", exc)
        self.sweeper = asyncio.ensure_future(self._sweep())

    async def moved(self) -> None:
        """After an adapter swap: destinations come from the new store, plus the bound ones."""
        self.known = {d.name: d for d in await self.worker.store.destinations()}
        for name, group in self.bindings.items():
            binding, sub = next(reversed(group.values()))
            dest = Destination(name, sub.topic, binding.function_id, binding.namespace, time.time())
            self.known[name] = dest
            await self.worker.store.save_destination(dest)

    # -- bindings ---------------------------------------------------------------------------

    async def register_trigger(self, config: TriggerConfig[Any]) -> None:
        sub = parse_binding(config.config)
        name = destination_name(sub.topic, config.function_id, config.namespace)
        if self.dest_of.get(config.id) not in (None, name):
            await self.unregister_trigger(config)
        group = self.bindings.setdefault(name, OrderedDict())
        group.pop(config.id, None)
        group[config.id] = (config, sub)
        self.dest_of[config.id] = name
        self.configs[name] = sub.queue
        dest = Destination(name, sub.topic, config.function_id, config.namespace, time.time())
        self.known[name] = dest
        await self.worker.store.save_destination(dest)
        self.worker.run_consumer(name, sub.queue)

    async def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        name = self.dest_of.pop(config.id, None)
        if name is None:
            return
        group = self.bindings.get(name, OrderedDict())
        group.pop(config.id, None)
        if group:
            newest = next(reversed(group.values()))[1]
            self.configs[name] = newest.queue
            self.worker.run_consumer(name, newest.queue)
            return
        self.bindings.pop(name, None)
        self.worker.retire_consumer(name)
        dest = self.known.get(name)
        if dest is not None:
            dest.last_seen = time.time()
            await self.worker.store.save_destination(dest)

    def binding(self, name: str) -> tuple[TriggerConfig[Any], Subscription] | None:
        group = self.bindings.get(name)
        return next(reversed(group.values())) if group else None

    def subscriber_count(self, topic: str) -> int:
        return sum(1 for d in self.known.values() if d.topic == topic)

    def topics(self) -> list[str]:
        return sorted({d.topic for d in self.known.values()})

    def queues_of(self, topic: str) -> list[str]:
        return [d.name for d in self.known.values() if d.topic == topic]

    # -- publish ----------------------------------------------------------------------------

    async def publish(self, topic: str, data: Any, traceparent: str | None = None,
                      baggage: str | None = None) -> int:
        if self.worker.store.shared:  # other engines may hold bindings of this topic
            for dest in await self.worker.store.destinations():
                if dest.topic == topic and dest.name not in self.known:
                    self.known[dest.name] = dest
        dests = [d for d in self.known.values() if d.topic == topic]
        if not dests:
            log.warning("iii-queue: publish to topic '%s' with no subscriber; nothing stored", topic)
            return 0
        for dest in dests:
            cfg = self.configs.get(dest.name, DEFAULT_TOPIC_QUEUE)
            job = Job(id=str(uuid.uuid4()), queue=dest.name, topic=topic,
                      function_id=dest.function_id, data=data, namespace=dest.namespace,
                      max_attempts=cfg.max_attempts, backoff_ms=cfg.backoff_ms,
                      group="" if cfg.fifo else None, traceparent=traceparent, baggage=baggage)
            await self.worker.store.push(job)
            self.worker.notify(dest.name)
        return len(dests)

    # -- retention --------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            retention_s = self.worker.settings.subscription_retention_ms / 1000
            await asyncio.sleep(min(max(retention_s / 4, 0.05), REFRESH_S))
            try:
                await self.sweep_once(retention_s)
            except Exception:
                log.exception("iii-queue: destination sweep failed")

    async def sweep_once(self, retention_s: float) -> None:
        now = time.time()
        grace_over = now - self.started_at >= min(retention_s, REFRESH_S)
        if self.worker.store.shared:  # other engines refresh (or forget) destinations too
            stored = {d.name: d for d in await self.worker.store.destinations()}
            for name in list(self.known):
                if name not in stored and name not in self.bindings:
                    self.known.pop(name)  # forgotten elsewhere
            for name, dest in stored.items():
                mine = self.known.setdefault(name, dest)
                mine.last_seen = max(mine.last_seen, dest.last_seen)
        for name, dest in list(self.known.items()):
            if name in self.bindings:
                if now - dest.last_seen >= REFRESH_S:
                    dest.last_seen = now
                    await self.worker.store.save_destination(dest)
            elif grace_over and now - dest.last_seen >= retention_s:
                moved = await self.worker.store.drain_to_dlq(name, "subscription expired")
                await self.worker.store.forget_destination(name)
                self.known.pop(name, None)
                self.configs.pop(name, None)
                log.info("iii-queue: destination %s expired; %d job(s) moved to its DLQ",
                         name, moved)

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
