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
``<consumer>|<stream entry id>``.

Waiting is done by Redis, not by polling. A consumer with free slots and nothing ready blocks in
``XREADGROUP GROUP iii <consumer> COUNT <free> BLOCK <ms> STREAMS <stream> >`` on a connection
of its own (``StreamWaiter``), so an entry any engine adds reaches it within a round trip; what
the read delivered is then leased by the ``ADOPT`` script, which applies CLAIM's logic (job
record, FIFO token, attempts) to entries already pending for that consumer. Lua cannot block,
hence the read outside the scripts; a separate connection, because a blocked command would hold
up the shared pipeline. The block lasts at most ``poll_interval_ms`` and never past the next
stale-entry scan (every ``STALE_SCAN_S``) or the next delayed job's due time, both of which are
CLAIM's work; so an idle consumer costs one blocking read plus one CLAIM per
``min(poll_interval_ms, STALE_SCAN_S)``. A read
is ended early (stop, or a due time: Redis checks the timeouts of idle blocked clients only
every 100 ms at its default ``hz``) with ``CLIENT UNBLOCK <id>`` in timeout mode: the read
returns nothing, so no delivered entry is lost in flight. That is why each consumer owns its
connection (one per queue and engine) and knows its client id, read once per connection, not
per read. Entries whose ADOPT failed (say, the shared connection broke) are kept and adopted
before the next read. Only a read cut off by a dropped connection (a crash, a dead server) can
leave entries delivered to nobody; like a dead engine's, they come back through ``XAUTOCLAIM``
after the visibility timeout, as a lost delivery.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
from redis.exceptions import ResponseError

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
            for name in ("PUSH", "CLAIM", "ADOPT", "ACK", "FAIL", "RELEASE", "RENEW", "COUNTS",
                         "DRAIN")})
        self.registry = self.link.key("queue:queues")
        self.topic_index = self.link.key("queue:topics")
        self.stale_scan: dict[str, float] = {}
        self.waiters: set[StreamWaiter] = set()

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
        due = _s(out[0])
        return Claim(self._leased(out, token), float(due) / 1000 if due else None)

    @staticmethod
    def _leased(out: list[Any], token: str) -> list[Job]:
        """The jobs of a CLAIM or ADOPT answer (``out[0]`` is CLAIM's next due time)."""
        jobs = []
        for i in range(1, len(out), 3):
            job = Job.from_record(orjson.loads(out[i + 1]))
            job.attempts_made = int(out[i + 2])
            job.lease_token = f"{token}|{_s(out[i])}"
            jobs.append(job)
        return jobs

    def waiter(self, queue: str, token: str) -> "StreamWaiter":
        """The blocking reader of one consumer (closed by the consumer, or with the store)."""
        waiter = StreamWaiter(self, queue, token)
        self.waiters.add(waiter)
        return waiter

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
        for waiter in list(self.waiters):
            await waiter.close()
        await self.pipe.close()
        await self.link.close()


class StreamWaiter:
    """One consumer's ``XREADGROUP … BLOCK`` on its own connection (see the module docstring).

    Used by one consumer task at a time: ``wait`` is never called while a previous one runs.
    """

    def __init__(self, store: RedisQueueStore, queue: str, token: str) -> None:
        self.store = store
        self.queue = queue
        self.token = token
        self.stream = store._keys(queue)[0]
        pool = store.link.client.connection_pool
        self.conn = pool.connection_class(**pool.connection_kwargs)
        self.client_id: int | None = None  # of the live connection; None until connected
        self.blocked = False
        # (entry id, field, value) triples a read delivered but ADOPT did not lease (it failed):
        # adopted first by the next ``wait``, or they would sit pending until XAUTOCLAIM
        self.unadopted: list[Any] = []
        # a read whose reply is this late means the connection is dead, not idle
        self.margin_s = max(1.0, store.link.config.connect_timeout_ms / 1000)

    async def wait(self, limit: int, timeout_s: float) -> list[Job]:
        """Block up to ``timeout_s`` (never past the queue's next stale scan) for entries, and
        lease at most ``limit`` of them; [] when nothing came or the read was interrupted."""
        if limit < 1:
            return []
        if self.unadopted:
            args, self.unadopted = self.unadopted[:3 * limit], self.unadopted[3 * limit:]
            return await self._adopt(args)
        remaining = min(timeout_s, self.store.stale_scan.get(self.queue, 0.0) - time.time())
        if remaining <= 0:
            return []  # the scan (or the due job) is CLAIM's work: let the consumer claim
        block_ms = max(1, math.ceil(remaining * 1000))
        try:
            reply = await guarded(self._read(limit, block_ms))
        except ResponseError as exc:
            # NOGROUP / UNBLOCKED: the stream was deleted (a drained destination); the next
            # CLAIM recreates the group
            if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                return []
            raise
        if isinstance(reply, dict):  # RESP3 (``?protocol=3`` in the URL): {stream: entries}
            reply = list(reply.items())
        args: list[Any] = []
        for entry, fields in (reply[0][1] if reply else []):
            if fields:
                args += [entry, fields[0], fields[1]]
        if not args:
            return []
        return await self._adopt(args)

    async def _adopt(self, args: list[Any]) -> list[Job]:
        try:
            out = await self.store._run("ADOPT", self.queue, self.token, *args)
        except BaseException:
            self.unadopted[:0] = args  # in read order, ahead of any kept before
            raise
        return self.store._leased(out, self.token)

    async def _read(self, limit: int, block_ms: int) -> Any:
        conn = self.conn
        if not conn.is_connected:
            self.client_id = None
            await conn.connect()
            await conn.send_command("CLIENT", "ID")
            self.client_id = int(await conn.read_response())
        await conn.send_command("XREADGROUP", "GROUP", redis_lua.GROUP, self.token,
                                "COUNT", limit, "BLOCK", block_ms, "STREAMS", self.stream, ">")
        self.blocked = True
        try:
            # cancelling the read (a timeout here) makes redis-py drop the connection, so no
            # late reply can be mistaken for the next command's
            async with asyncio.timeout(block_ms / 1000 + self.margin_s):
                return await conn.read_response()
        finally:
            self.blocked = False

    async def interrupt(self) -> bool:
        """End a read under way as if it timed out; False when none was blocked at the server
        (not sent yet, or already answered)."""
        if not self.blocked or self.client_id is None:
            return False
        return bool(await guarded(self.store.link.client.client_unblock(self.client_id)))

    async def close(self) -> None:
        self.store.waiters.discard(self)
        try:
            await self.conn.disconnect()
        except Exception:  # closing a dead connection: nothing left to release
            pass
