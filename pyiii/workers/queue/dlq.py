"""DLQ and inspection functions of iii-queue (spec/workers.md §4.2, §4.6).

Names given here are public: a named queue, or a topic (the union of its destinations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...sdk import InvocationError
from ..errors import bad_input, stored
from .config import FN_QUEUE_PREFIX

if TYPE_CHECKING:
    from .worker import QueueWorker


def _name(data: Any, keys: tuple[str, ...], code: str, message: str, function_id: str) -> str:
    if isinstance(data, dict):
        for key in keys:
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    raise InvocationError(code, message, function_id)


def _message_id(data: Any, function_id: str) -> str:
    value = data.get("message_id") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise InvocationError("message_id_not_set", "Message id is not set", function_id)
    return value


def _count(data: Any, key: str, default: int, function_id: str) -> int:
    value = data.get(key, default) if isinstance(data, dict) else default
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_input(function_id, f"field `{key}` must be a non-negative integer")
    return value


class Admin:
    def __init__(self, worker: "QueueWorker") -> None:
        self.worker = worker

    def register(self) -> None:
        iii = self.worker.iii
        for function_id, handler, description in (
            ("iii::queue::redrive", self.redrive, "Move every DLQ entry of a queue back to waiting"),
            ("iii::queue::redrive_message", self.redrive_message, "Redrive one DLQ entry by id"),
            ("iii::queue::discard_message", self.discard_message, "Delete one DLQ entry by id"),
            ("engine::queue::list_topics", self.list_topics, "Named queues and durable topics"),
            ("engine::queue::topic_stats", self.topic_stats, "Depth, in-flight, DLQ depth, config"),
            ("engine::queue::dlq_topics", self.dlq_topics, "Queues and topics with their DLQ size"),
            ("engine::queue::dlq_messages", self.dlq_messages, "DLQ entries, newest first"),
        ):
            iii.register_function(function_id, handler,
                                  description=description)

    def _internal(self, name: str) -> list[str]:
        found = [FN_QUEUE_PREFIX + name] if name in self.worker.settings.queues else []
        return found + self.worker.topics.queues_of(name)

    async def _redrive(self, name: str, job_id: str | None) -> int:
        queues = await self.worker.store.redrive(name, job_id)
        for queue in set(queues):
            self.worker.notify(queue)
        return len(queues)

    async def redrive(self, data: Any) -> Any:
        name = _name(data, ("queue", "topic"), "queue_not_set", "Queue is not set",
                     "iii::queue::redrive")
        return {"queue": name, "redriven": await stored("redrive_failed",
                                                             self._redrive(name, None))}

    async def redrive_message(self, data: Any) -> Any:
        fid = "iii::queue::redrive_message"
        name = _name(data, ("queue", "topic"), "queue_not_set", "Queue is not set", fid)
        message_id = _message_id(data, fid)
        n = await stored("redrive_message_failed", self._redrive(name, message_id))
        return {"queue": name, "message_id": message_id, "redriven": n}

    async def discard_message(self, data: Any) -> Any:
        fid = "iii::queue::discard_message"
        name = _name(data, ("queue", "topic"), "queue_not_set", "Queue is not set", fid)
        message_id = _message_id(data, fid)
        done = await stored("discard_message_failed",
                                 self.worker.store.discard(name, message_id))
        return {"queue": name, "message_id": message_id, "redriven": 1 if done else 0}

    async def list_topics(self, data: Any) -> Any:
        out = [{"name": name, "broker_type": "function_queue",
                "subscriber_count": cfg.concurrency}
               for name, cfg in sorted(self.worker.settings.queues.items())]
        out += [{"name": topic, "broker_type": "builtin",
                 "subscriber_count": self.worker.topics.subscriber_count(topic)}
                for topic in self.worker.topics.topics()]
        return out

    async def topic_stats(self, data: Any) -> Any:
        name = _name(data, ("topic", "queue"), "topic_required", "Topic is required",
                     "engine::queue::topic_stats")
        return await stored("topic_stats_failed", self._stats(name))

    async def _stats(self, name: str) -> dict[str, Any]:
        depth = in_flight = consumers = 0
        for queue in self._internal(name):
            waiting, leased = await self.worker.store.counts(queue)
            depth, in_flight = depth + waiting, in_flight + leased
            consumers += 1 if queue in self.worker.consumers else 0
        cfg = self.worker.settings.queues.get(name)
        return {"depth": depth, "in_flight": in_flight, "consumer_count": consumers,
                "dlq_depth": await self.worker.store.dlq_count(name),
                "config": cfg.public() if cfg is not None else None}

    async def dlq_topics(self, data: Any) -> Any:
        counts = await stored("dlq_topics_failed", self.worker.store.dlq_topics())
        out = []
        for name in sorted(self.worker.settings.queues):
            out.append({"topic": name, "broker_type": "function_queue",
                        "message_count": counts.pop(name, 0)})
        for name in sorted(set(self.worker.topics.topics()) | set(counts)):
            out.append({"topic": name, "broker_type": "builtin",
                        "message_count": counts.get(name, 0)})
        return out

    async def dlq_messages(self, data: Any) -> Any:
        fid = "engine::queue::dlq_messages"
        name = _name(data, ("topic", "queue"), "topic_required", "Topic is required", fid)
        offset, limit = _count(data, "offset", 0, fid), _count(data, "limit", 50, fid)
        entries = await stored("dlq_messages_failed",
                                    self.worker.store.dlq_list(name, offset, limit))
        return [entry.public() for entry in entries]



