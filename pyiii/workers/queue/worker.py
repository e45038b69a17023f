"""iii-queue: durable background jobs — named queues fed by `TriggerAction.Enqueue`, durable
topics with `durable:subscriber` bindings, retries with backoff, FIFO groups and a DLQ."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson

from ...sdk import III, InvocationError, register_worker
from ..base import WorkerContext
from ..errors import bad_input, stored
from ..conditions import passes
from .config import FN_QUEUE_PREFIX, QueueConfig, QueueSettings, parse_settings
from .consumer import STOP_GRACE_S, Consumer
from .dlq import Admin
from .storage import Job, QueueStore, open_store
from .topics import Topics

log = logging.getLogger("pyiii.workers.queue")

ENQUEUE = "engine::queue::enqueue"
PUBLISH = "iii::durable::publish"
DELIVERY_TIMEOUT_MS = 600_000


def _opt_str(data: dict[str, Any], key: str, function_id: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_input(function_id, f"field `{key}` must be a string or null")
    return value


def group_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class QueueWorker:
    def __init__(self, iii: III, store: QueueStore, settings: QueueSettings,
                 ctx: WorkerContext) -> None:
        self.iii = iii
        self.store = store
        self.settings = settings
        self.ctx = ctx
        self.consumers: dict[str, Consumer] = {}
        self.retiring: dict[asyncio.Task[None], Consumer] = {}
        self.topics = Topics(self)
        self.admin = Admin(self)

    def register(self) -> None:
        self.iii.register_function(ENQUEUE, self.enqueue,
                                   description="Store a job on a named queue (TriggerAction.Enqueue)")
        self.iii.register_function(PUBLISH, self.publish,
                                   description="Publish data to every durable subscriber of a topic")
        self.admin.register()
        self.iii.register_trigger_type(
            {"id": "durable:subscriber",
             "description": "Durable topic subscription: each message delivered at least once"},
            self.topics)

    # -- consumers --------------------------------------------------------------------------

    def run_consumer(self, queue: str, config: QueueConfig) -> None:
        """Start the consumer of ``queue``, restarting it when its settings changed."""
        running = self.consumers.get(queue)
        if running is not None:
            if running.config.restart_key() == config.restart_key():
                running.config = config  # live settings (backoff)
                return
            self.retire_consumer(queue)
        if config.concurrency < 1:
            return  # paused: jobs wait
        self.consumers[queue] = Consumer(self.store, queue, config, self._deliver,
                                         self.settings.visibility_timeout_ms).start()

    def retire_consumer(self, queue: str, grace_s: float = DELIVERY_TIMEOUT_MS / 1000) -> None:
        """Stop taking jobs at once; in-flight deliveries finish in the background."""
        consumer = self.consumers.pop(queue, None)
        if consumer is None:
            return
        task = asyncio.ensure_future(consumer.stop(grace_s))
        self.retiring[task] = consumer
        task.add_done_callback(lambda done: self.retiring.pop(done, None))

    def notify(self, queue: str) -> None:
        consumer = self.consumers.get(queue)
        if consumer is not None:
            consumer.notify()

    async def _deliver(self, job: Job) -> None:
        namespace = job.namespace or "default"
        request: dict[str, Any] = {"function_id": job.function_id, "payload": job.data,
                                   "namespace": namespace, "timeout_ms": DELIVERY_TIMEOUT_MS}
        # the trace context stored at enqueue becomes the parent of the delivery (§4.4)
        if job.traceparent is not None:
            request["traceparent"] = job.traceparent
        if job.baggage is not None:
            request["baggage"] = job.baggage
        if not job.queue.startswith(FN_QUEUE_PREFIX):
            bound = self.topics.binding(job.queue)
            if bound is not None:
                binding, sub = bound
                if binding.metadata is not None:
                    request["metadata"] = binding.metadata
                if not await passes(self.iii, sub.condition_function_id, job.data, namespace,
                                    binding.metadata):
                    return  # condition false: acknowledged without running the handler
        await self.iii.trigger_async(request)

    # -- functions --------------------------------------------------------------------------

    async def enqueue(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise bad_input(ENQUEUE, "expected an object with `queue`, `function_id` and `data`")
        queue, function_id = data.get("queue"), data.get("function_id")
        if not isinstance(queue, str):
            raise bad_input(ENQUEUE, "missing or non-string field `queue`")
        if not isinstance(function_id, str) or not function_id:
            raise bad_input(ENQUEUE, "missing or non-string field `function_id`")
        receipt = _opt_str(data, "messageReceiptId", ENQUEUE)
        if receipt is None:
            receipt = str(uuid.uuid4())
        config = self.settings.queues.get(queue)
        if config is None:
            raise InvocationError("queue_not_found", f"Queue '{queue}' not found", ENQUEUE)
        payload = data.get("data")
        group = None
        if config.fifo:
            field = config.message_group_field
            if not isinstance(payload, dict) or payload.get(field) is None:
                raise InvocationError("message_group_missing",
                                      f"Queue '{queue}' requires field '{field}' in the payload",
                                      ENQUEUE)
            group = group_of(payload[field])
        internal = FN_QUEUE_PREFIX + queue
        job = Job(id=receipt, queue=internal, topic=queue, function_id=function_id, data=payload,
                  namespace=_opt_str(data, "namespace", ENQUEUE),
                  max_attempts=config.max_attempts, backoff_ms=config.backoff_ms, group=group,
                  traceparent=_opt_str(data, "traceparent", ENQUEUE),
                  baggage=_opt_str(data, "baggage", ENQUEUE))
        if not await stored("enqueue_failed", self.store.push(job)):
            log.info("iii-queue: job %s already stored; duplicate enqueue ignored", receipt)
        self.notify(internal)
        return {"messageReceiptId": receipt}

    async def publish(self, data: Any) -> Any:
        topic = data.get("topic") if isinstance(data, dict) else None
        if not isinstance(topic, str) or not topic:
            raise InvocationError("topic_not_set", "Topic is not set", PUBLISH)
        await stored("publish_failed", self.topics.publish(topic, data.get("data")))
        return None

    # -- lifecycle --------------------------------------------------------------------------

    def start_queues(self) -> None:
        for name, config in self.settings.queues.items():
            self.run_consumer(FN_QUEUE_PREFIX + name, config)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        new = parse_settings(config, self.ctx.ephemeral)  # ValueError keeps the old settings
        old = self.settings
        if new.adapter != old.adapter:
            store = open_store(new.adapter.name, new.adapter.config, self.ctx.project_dir)
            await self._stop_consumers()
            previous, self.store = self.store, store
            await previous.close()
        elif new.visibility_timeout_ms != old.visibility_timeout_ms:
            await self._stop_consumers()
        self.settings = new
        for name in set(old.queues) - set(new.queues):
            self.retire_consumer(FN_QUEUE_PREFIX + name, STOP_GRACE_S)
        if new.adapter != old.adapter:
            await self.topics.moved()
        self.start_queues()
        for name in list(self.topics.bindings):
            bound = self.topics.binding(name)
            if bound is not None:
                self.run_consumer(name, bound[1].queue)

    async def _stop_consumers(self, grace_s: float = STOP_GRACE_S) -> None:
        consumers = list(self.consumers.values()) + list(self.retiring.values())
        self.consumers.clear()
        await asyncio.gather(*(c.stop(grace_s) for c in consumers), return_exceptions=True)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        self.topics.stop()
        await self._stop_consumers(grace_s)
        for task in list(self.retiring):
            task.cancel()
        await self.iii.shutdown_async()
        await self.store.close()

    async def crash(self) -> None:
        """Test hook: vanish like a killed engine — no release, no acknowledgement."""
        self.topics.stop()
        for consumer in self.consumers.values():
            consumer.abandon()
        self.consumers.clear()
        await self.iii.shutdown_async()
        await self.store.close()


async def start(ctx: WorkerContext) -> QueueWorker:
    settings = parse_settings(ctx.config, ctx.ephemeral)
    store = open_store(settings.adapter.name, settings.adapter.config, ctx.project_dir)
    iii = register_worker(ctx.url, ctx.sdk_options())
    worker = QueueWorker(iii, store, settings, ctx)
    try:
        await worker.topics.load()
        worker.register()
        await iii.wait_connected(10)
    except BaseException:
        worker.topics.stop()
        await worker._stop_consumers(0)
        await iii.shutdown_async()
        await store.close()
        raise
    worker.start_queues()  # consume only once deliveries can reach the engine
    return worker
