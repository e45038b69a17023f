"""The `redis` queue adapter: durable jobs shared by several engines (spec/workers.md §4.5).

Per internal queue ``Q`` the keys under ``<key_prefix>queue:<Q>:`` are: ``stream`` (ready
entries, read through the consumer group ``iii``, one consumer name per engine consumer),
``jobs`` (id → job record JSON), ``attempts`` (id → failed deliveries), ``delayed`` (sorted set
of retries by due time), ``dlq`` + ``dlq:data`` (the DLQ), and for FIFO queues ``active`` plus
one list ``g:<group>`` per group. ``<key_prefix>queue:queues`` maps internal queues to their
public name; topic destinations live in ``<key_prefix>queue:topic:<topic>:subs``.

A delivered entry stays pending in the group until it is acknowledged (``XACK`` + ``XDEL``);
renewal resets its idle time (``XCLAIM … JUSTID``), and entries idle longer than the
visibility timeout — their engine died — are taken with ``XAUTOCLAIM`` and counted as a failed
attempt. The multi-key steps are the Lua scripts of ``redis_lua``, and the script calls of
one event-loop turn share one pipeline (``redis_batch``). A job's lease token is
``<consumer>|<stream entry id>``. Consumers read without blocking and poll every
``poll_interval_ms`` for entries other engines added.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ...storage.redis_link import RedisConfig, RedisLink, guarded
from . import redis_lua
from .redis_batch import ScriptPipeline
from .storage import Claim, Destination, DlqEntry, Job

STALE_SCAN_S = 0.25  # how often a consumer looks for entries of dead engines


def _now_ms(now: float | None = None) -> str:
    """Milliseconds with microsecond decimals: DLQ order (newest first) needs no ties."""
    return f"{(time.time() if now is None else now) * 1000:.3f}"


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class RedisQueueStore:
    shared = True

    def __init__(self, config: RedisConfig) -> None:
        self.link = RedisLink(config)
        self.pipe = ScriptPipeline(self.link.client, {
            name: getattr(redis_lua, name)
            for name in ("PUSH", "CLAIM", "ACK", "FAIL", "RELEASE", "RENEW", "COUNTS", "DRAIN")})
        self.registry = self.link.key("queue:queues")
        self.topic_index = self.link.key("queue:topics")
        self.stale_scan: dict[str, float] = {}

    # -- keys ---------------------------------------------------------------------------------

    def _base(self, queue: str) -> str:
        return self.link.key(f"queue:{queue}:")

    def _keys(self, queue: str) -> list[str]:
        base = self._base(queue)
        return [base + "stream", base + "jobs", base + "attempts", base + "delayed",
                base + "dlq", base + "dlq:data", base + "active", self.registry]

    def _subs(self, topic: str) -> str:
        return self.link.key(f"queue:topic:{topic}:subs")

    async def _run(self, script: str, queue: str, *args: Any) -> Any:
        return await self.pipe.call(script, self._keys(queue), [self._base(queue), *args])

    @staticmethod
    def _lease(job: Job) -> tuple[str, str]:
        consumer, _, entry = (job.lease_token or "|").partition("|")
        return consumer, entry

    @staticmethod
    def _fifo(job: Job) -> tuple[str, str]:
        return ("1", job.group) if job.group is not None else ("0", "")

    # -- jobs ---------------------------------------------------------------------------------

    async def push(self, job: Job) -> bool:
        return bool(await self._run("PUSH", job.queue, job.id, orjson.dumps(job.record()),
                                    *self._fifo(job), job.topic, job.queue, "0"))

    async def claim(self, queue: str, limit: int, fifo: bool, lease_ms: int,
                    token: str) -> Claim:
        now = time.time()
        scan = "0"
        if now >= self.stale_scan.get(queue, 0.0):
            self.stale_scan[queue] = now + min(STALE_SCAN_S, lease_ms / 10_000)
            scan = "1"
        out = await self._run("CLAIM", queue, token, limit, _now_ms(now), scan, lease_ms)
        jobs = []
        for i in range(1, len(out), 3):
            job = Job.from_record(orjson.loads(out[i + 1]))
            job.attempts_made = int(out[i + 2])
            job.lease_token = f"{token}|{_s(out[i])}"
            jobs.append(job)
        due = _s(out[0])
        return Claim(jobs, float(due) / 1000 if due else None)

    async def renew(self, queue: str, tokens: list[str], lease_ms: int) -> None:
        by_consumer: dict[str, list[str]] = {}
        for token in set(tokens):
            consumer, _, entry = token.partition("|")
            by_consumer.setdefault(consumer, []).append(entry)
        for consumer, entries in by_consumer.items():
            await self._run("RENEW", queue, consumer, *entries)

    async def ack(self, job: Job) -> bool:
        consumer, entry = self._lease(job)
        return bool(await self._run("ACK", job.queue, consumer, entry, job.id, *self._fifo(job)))

    async def fail(self, job: Job, error: str, backoff_ms: int) -> str:
        consumer, entry = self._lease(job)
        outcome = await self._run("FAIL", job.queue, consumer, entry, job.id, *self._fifo(job),
                                  error, _now_ms(), backoff_ms)
        return _s(outcome)

    async def release(self, job: Job) -> None:
        consumer, entry = self._lease(job)
        await self._run("RELEASE", job.queue, consumer, entry, job.id, *self._fifo(job))

    async def counts(self, queue: str) -> tuple[int, int]:
        total, leased = await self._run("COUNTS", queue)
        return int(total) - int(leased), int(leased)

    async def drain_to_dlq(self, queue: str, error: str) -> int:
        return int(await self._run("DRAIN", queue, error, _now_ms()))

    # -- DLQ ----------------------------------------------------------------------------------

    async def _queues_of(self, topic: str) -> list[str]:
        registry = await guarded(self.link.client.hgetall(self.registry))
        return sorted(_s(q) for q, t in registry.items() if _s(t) == topic)

    @staticmethod
    def _entry(raw: bytes) -> DlqEntry:
        data = orjson.loads(raw)
        job = Job.from_record(data["record"])
        job.attempts_made = int(data["attempts"])
        return DlqEntry(job, data["error"], float(data["failed_at"]) / 1000)

    async def dlq_list(self, topic: str, offset: int, limit: int) -> list[DlqEntry]:
        client = self.link.client
        scored: list[tuple[float, str, str]] = []
        for queue in await self._queues_of(topic):
            keys = self._keys(queue)
            for member, score in await guarded(client.zrevrange(keys[4], 0, offset + limit - 1,
                                                                withscores=True)):
                scored.append((score, _s(member), keys[5]))
        scored.sort(key=lambda item: item[0], reverse=True)
        out = []
        for _, job_id, data_key in scored[offset:offset + limit]:
            raw = await guarded(client.hget(data_key, job_id))
            if raw is not None:
                out.append(self._entry(raw))
        return out

    async def dlq_count(self, topic: str) -> int:
        total = 0
        for queue in await self._queues_of(topic):
            total += await guarded(self.link.client.zcard(self._keys(queue)[4]))
        return total

    async def dlq_topics(self) -> dict[str, int]:
        registry = await guarded(self.link.client.hgetall(self.registry))
        out: dict[str, int] = {}
        for queue, topic in registry.items():
            n = await guarded(self.link.client.zcard(self._keys(_s(queue))[4]))
            if n:
                out[_s(topic)] = out.get(_s(topic), 0) + n
        return out

    async def redrive(self, topic: str, job_id: str | None) -> list[str]:
        client = self.link.client
        moved = []
        for queue in await self._queues_of(topic):
            keys = self._keys(queue)
            if job_id is None:
                ids = [_s(m) for m in await guarded(client.zrange(keys[4], 0, -1))]
            else:
                ids = [job_id] if await guarded(client.zscore(keys[4], job_id)) is not None else []
            for one in ids:
                raw = await guarded(client.hget(keys[5], one))
                if raw is None:
                    continue
                job = Job.from_record(orjson.loads(raw)["record"])
                job.attempts_made, job.process_at = 0, 0.0
                if await self._run("PUSH", queue, job.id, orjson.dumps(job.record()),
                                   *self._fifo(job), job.topic, queue, "1"):
                    moved.append(queue)
        return moved

    async def discard(self, topic: str, job_id: str) -> bool:
        client = self.link.client
        for queue in await self._queues_of(topic):
            keys = self._keys(queue)
            if await guarded(client.zrem(keys[4], job_id)):
                await guarded(client.hdel(keys[5], job_id))
                return True
        return False

    # -- topic destinations -------------------------------------------------------------------

    async def save_destination(self, dest: Destination) -> None:
        value = orjson.dumps({"function_id": dest.function_id, "namespace": dest.namespace,
                              "last_seen": dest.last_seen})
        pipe = self.link.client.pipeline(transaction=True)
        pipe.hset(self._subs(dest.topic), dest.name, value)
        pipe.sadd(self.topic_index, dest.topic)
        await guarded(pipe.execute())

    async def forget_destination(self, name: str) -> None:
        for topic in await guarded(self.link.client.smembers(self.topic_index)):
            await guarded(self.link.client.hdel(self._subs(_s(topic)), name))

    async def destinations(self) -> list[Destination]:
        out = []
        for raw_topic in await guarded(self.link.client.smembers(self.topic_index)):
            topic = _s(raw_topic)
            for name, raw in (await guarded(self.link.client.hgetall(self._subs(topic)))).items():
                value = orjson.loads(raw)
                out.append(Destination(_s(name), topic, value["function_id"], value["namespace"],
                                       float(value["last_seen"])))
        return out

    async def close(self) -> None:
        await self.pipe.close()
        await self.link.close()
