"""The storage interface of iii-queue (spec/workers.md §4.4-4.6) and how to pick an adapter.

Every adapter stores *jobs* in internal queues (``__fn_queue::<name>`` for named queues,
``<topic>::<function_id>@<namespace>`` for topic destinations) and offers the same atomic steps:
push, claim-with-lease, renew, ack, fail (retry with backoff or DLQ), release. The worker and its
consumers only use these steps; ``memory.py``, ``sqlite.py`` and ``redis_store.py`` (Redis
Streams with the consumer group ``iii``, a delayed sorted set, Lua scripts for fail and FIFO
tokens) implement them.

Times are Unix seconds (floats). A job whose lease expires is taken back by the next claim on
its queue and counted as a failed attempt (``VISIBILITY_TIMEOUT``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

LEASE_LOST = "VISIBILITY_TIMEOUT: delivery lost: lease expired"


@dataclass
class Job:
    id: str
    queue: str  # internal queue name
    topic: str  # public name: the named queue, or the topic of a destination
    function_id: str
    data: Any
    namespace: str | None = None
    attempts_made: int = 0
    max_attempts: int = 3
    backoff_ms: int = 1000
    group: str | None = None
    created_at: float = field(default_factory=time.time)
    process_at: float = 0.0
    traceparent: str | None = None
    baggage: str | None = None
    lease_token: str | None = None  # set on the copy a claim returns

    def record(self) -> dict[str, Any]:
        # field by field, not dataclasses.asdict: that deep-copies ``data`` on every write
        return {"id": self.id, "queue": self.queue, "topic": self.topic,
                "function_id": self.function_id, "data": self.data, "namespace": self.namespace,
                "attempts_made": self.attempts_made, "max_attempts": self.max_attempts,
                "backoff_ms": self.backoff_ms, "group": self.group, "created_at": self.created_at,
                "process_at": self.process_at, "traceparent": self.traceparent,
                "baggage": self.baggage}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Job":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in record.items() if k in names})


@dataclass
class DlqEntry:
    job: Job
    error: str
    failed_at: float

    def public(self) -> dict[str, Any]:
        return {"id": self.job.id, "function_id": self.job.function_id, "payload": self.job.data,
                "error": self.error, "failed_at": int(self.failed_at),
                "retries": self.job.attempts_made,
                "size_bytes": len(orjson.dumps(self.job.data))}


@dataclass
class Claim:
    jobs: list[Job]
    next_due: float | None  # earliest time a delayed job of the queue becomes ready


@dataclass
class Destination:
    """A topic destination known to the store (kept `subscription_retention_ms` after its last
    binding went away)."""

    name: str
    topic: str
    function_id: str
    namespace: str | None
    last_seen: float


def backoff_delay_ms(backoff_ms: int, attempts_made: int) -> int:
    return backoff_ms * 2 ** max(0, attempts_made - 1)


class QueueStore(Protocol):
    shared: bool  # other processes may write: consumers also wait for their jobs (poll or block)

    async def push(self, job: Job) -> bool:
        """Store a waiting job (idempotent on ``job.id``); False if the id already exists."""

    async def claim(self, queue: str, limit: int, fifo: bool, lease_ms: int,
                    token: str) -> Claim:
        """Take expired leases back (as failed attempts), then lease up to ``limit`` ready jobs:
        oldest first; for ``fifo`` only the head job of each group whose head is ready."""

    async def renew(self, queue: str, tokens: list[str], lease_ms: int) -> None: ...

    async def ack(self, job: Job) -> bool:
        """Delete a delivered job; False if its lease was lost meanwhile."""

    async def fail(self, job: Job, error: str, backoff_ms: int) -> str:
        """Count a failed attempt: ``"retry"`` (delayed), ``"dlq"`` or ``"lost"`` (lease lost)."""

    async def release(self, job: Job) -> None:
        """Give a leased job back to waiting without counting an attempt."""

    async def counts(self, queue: str) -> tuple[int, int]:
        """(waiting + delayed, leased)."""

    async def drain_to_dlq(self, queue: str, error: str) -> int:
        """Move every job of ``queue`` to its DLQ (a forgotten destination)."""

    async def dlq_list(self, topic: str, offset: int, limit: int) -> list[DlqEntry]: ...

    async def dlq_count(self, topic: str) -> int: ...

    async def dlq_topics(self) -> dict[str, int]: ...

    async def redrive(self, topic: str, job_id: str | None) -> list[str]:
        """Move DLQ entries (all of ``topic``, or one id) back to waiting, behind pending work,
        with attempts reset; returns the internal queues that received jobs (one per job)."""

    async def discard(self, topic: str, job_id: str) -> bool: ...

    async def save_destination(self, dest: Destination) -> None: ...

    async def forget_destination(self, name: str) -> None: ...

    async def destinations(self) -> list[Destination]: ...

    async def close(self) -> None: ...


def open_store(adapter: str, config: dict[str, Any], project_dir: Path) -> QueueStore:
    if adapter == "memory":
        from .memory import MemoryQueueStore

        return MemoryQueueStore()
    if adapter == "sqlite":
        from .sqlite import SqliteQueueStore

        from ...storage.sqlite_db import db_path

        return SqliteQueueStore(db_path(config, project_dir, "data/queue.db"),
                                synchronous=config.get("synchronous", "normal"))
    if adapter == "redis":
        from ...storage.redis_link import redis_config
        from .redis_store import RedisQueueStore

        return RedisQueueStore(redis_config(config))
    raise ValueError(f"adapter '{adapter}' is not available")
