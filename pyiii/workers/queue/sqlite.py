"""The `sqlite` queue adapter: jobs, delays, leases, DLQ and destinations in one WAL file.

Every state change runs in a ``BEGIN IMMEDIATE`` transaction committed before the step
returns, so an acknowledged enqueue survives a crash, and claiming a job and recording its
lease are atomic even when several engines share the file. Steps asked for in the same
event-loop iteration share one transaction (``batch.GroupCommit``). Statements run on the
event loop thread (tens of microseconds each), like the state worker's store.

Claims stay O(jobs claimed) however long the queue is: a partial index holds only unleased
jobs, ordered by the time they became ready (``process_at``: the enqueue time of a new job,
the retry time after a failure), so the head of a queue and its next due time are index seeks.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from ...storage.sqlite_db import open_db
from .batch import GroupCommit
from .storage import LEASE_LOST, Claim, Destination, DlqEntry, Job, backoff_delay_ms

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    topic TEXT NOT NULL,
    grp TEXT,
    process_at REAL NOT NULL DEFAULT 0,
    attempts_made INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_until REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_fifo ON jobs (queue, grp, seq) WHERE grp IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (queue, process_at, seq) WHERE lease_token IS NULL;
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (queue, lease_until) WHERE lease_token IS NOT NULL;
DROP INDEX IF EXISTS jobs_by_queue;
DROP INDEX IF EXISTS jobs_by_group;
DROP INDEX IF EXISTS jobs_by_lease;
CREATE TABLE IF NOT EXISTS dlq (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    queue TEXT NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dlq_by_topic ON dlq (topic, seq);
CREATE TABLE IF NOT EXISTS destinations (
    name TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    function_id TEXT NOT NULL,
    namespace TEXT,
    last_seen REAL NOT NULL
);
"""

_COLUMNS = "id, process_at, attempts_made, lease_token, record"
EXPIRY_SCAN_S = 0.25


def _job(row: Any) -> Job:
    job = Job.from_record(orjson.loads(row[4]))
    job.process_at, job.attempts_made, job.lease_token = row[1], row[2], row[3]
    return job


def _dumps(job: Job) -> str:
    return orjson.dumps(job.record()).decode()


class SqliteQueueStore:
    shared = True  # another engine may use the same file: consumers also poll

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        self.path = path
        self.db = open_db(path, synchronous)
        self.db.executescript(_SCHEMA)
        self.batch = GroupCommit(self.db)
        self.leases = itertools.count(1)
        self.expiry_scan: dict[str, float] = {}  # queue -> time of its next expired-lease scan

    async def _atomic(self, body: Callable[[], Any]) -> Any:
        return await self.batch.run(body)

    def _insert(self, job: Job) -> bool:
        # an id already waiting or in the DLQ is not stored again; a new job is ready from now
        # on, so it queues behind jobs that became ready earlier
        cur = self.db.execute(
            "INSERT OR IGNORE INTO jobs (id, queue, topic, grp, process_at, attempts_made, record)"
            " SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM dlq WHERE id=?)",
            (job.id, job.queue, job.topic, job.group, job.process_at or time.time(),
             job.attempts_made, _dumps(job), job.id))
        return cur.rowcount == 1

    async def push(self, job: Job) -> bool:
        return await self._atomic(lambda: self._insert(job))

    def _fail(self, job_id: str, token: str | None, error: str, backoff_ms: int | None,
              now: float) -> str:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=? AND lease_token=?",
                              (job_id, token)).fetchone()
        if row is None:
            return "lost"
        job = _job(row)
        job.attempts_made += 1
        if job.attempts_made >= job.max_attempts:
            self._to_dlq(job, error, now)
            return "dlq"
        delay = backoff_delay_ms(job.backoff_ms if backoff_ms is None else backoff_ms,
                                 job.attempts_made)
        self.db.execute("UPDATE jobs SET attempts_made=?, process_at=?, lease_token=NULL, "
                        "lease_until=NULL WHERE id=?",
                        (job.attempts_made, now + delay / 1000, job_id))
        return "retry"

    def _to_dlq(self, job: Job, error: str, now: float) -> None:
        job.lease_token = None
        self.db.execute("DELETE FROM jobs WHERE id=?", (job.id,))
        self.db.execute("INSERT OR REPLACE INTO dlq (id, topic, queue, error, failed_at, record) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (job.id, job.topic, job.queue, error, now, _dumps(job)))

    async def claim(self, queue: str, limit: int, fifo: bool, lease_ms: int,
                    token: str) -> Claim:
        def body() -> Claim:
            now = time.time()
            # leases expire on a scale of seconds: look for them a few times a second, not on
            # every claim of a busy queue
            if now >= self.expiry_scan.get(queue, 0.0):
                self.expiry_scan[queue] = now + min(EXPIRY_SCAN_S, lease_ms / 10_000)
                expired = self.db.execute(
                    "SELECT id, lease_token FROM jobs WHERE queue=? AND lease_token IS NOT NULL "
                    "AND lease_until < ?", (queue, now)).fetchall()
                for job_id, lease in expired:
                    self._fail(job_id, lease, LEASE_LOST, None, now)
            if fifo:
                rows = self.db.execute(
                    f"SELECT j.{_COLUMNS.replace(', ', ', j.')} FROM jobs j JOIN "
                    "(SELECT MIN(seq) AS s FROM jobs WHERE queue=? AND grp IS NOT NULL "
                    "GROUP BY grp) h ON j.seq=h.s "
                    "WHERE j.lease_token IS NULL AND j.process_at <= ? ORDER BY j.seq LIMIT ?",
                    (queue, now, limit)).fetchall()
            else:
                rows = self.db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE queue=? AND lease_token IS NULL "
                    "AND process_at <= ? ORDER BY process_at, seq LIMIT ?",
                    (queue, now, limit)).fetchall()
            # one lease token for the jobs of one claim: acks and failures also name the job id
            lease = f"{token}:{next(self.leases)}"
            jobs = [_job(row) for row in rows]
            for job in jobs:
                job.lease_token = lease
            if jobs:
                self.db.execute(
                    "UPDATE jobs SET lease_token=?, lease_until=? WHERE id IN "
                    f"({','.join('?' * len(jobs))})",
                    (lease, now + lease_ms / 1000, *(job.id for job in jobs)))
            if len(jobs) == limit:
                return Claim(jobs, None)  # more may be ready: the consumer claims again
            due = self.db.execute("SELECT MIN(process_at) FROM jobs WHERE queue=? AND "
                                  "lease_token IS NULL AND process_at > ?", (queue, now)).fetchone()
            return Claim(jobs, due[0] if due else None)
        return await self._atomic(body)

    async def renew(self, queue: str, tokens: list[str], lease_ms: int) -> None:
        until = time.time() + lease_ms / 1000

        def body() -> None:
            self.db.executemany("UPDATE jobs SET lease_until=? WHERE queue=? AND lease_token=?",
                                [(until, queue, t) for t in set(tokens)])
        await self._atomic(body)

    async def ack(self, job: Job) -> bool:
        return await self._atomic(lambda: self.db.execute(
            "DELETE FROM jobs WHERE id=? AND lease_token=?", (job.id, job.lease_token)
        ).rowcount == 1)

    async def fail(self, job: Job, error: str, backoff_ms: int) -> str:
        return await self._atomic(lambda: self._fail(job.id, job.lease_token, error, backoff_ms,
                                               time.time()))

    async def release(self, job: Job) -> None:
        await self._atomic(lambda: self.db.execute(
            "UPDATE jobs SET lease_token=NULL, lease_until=NULL WHERE id=? AND lease_token=?",
            (job.id, job.lease_token)))

    async def counts(self, queue: str) -> tuple[int, int]:
        self.batch.flush()  # reads see every write asked for before them
        # two index-only counts over the partial indexes (there is no plain queue index)
        waiting = self.db.execute("SELECT COUNT(*) FROM jobs WHERE queue=? AND "
                                  "lease_token IS NULL", (queue,)).fetchone()[0]
        leased = self.db.execute("SELECT COUNT(*) FROM jobs WHERE queue=? AND "
                                 "lease_token IS NOT NULL", (queue,)).fetchone()[0]
        return waiting, leased

    async def drain_to_dlq(self, queue: str, error: str) -> int:
        def body() -> int:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE queue=? ORDER BY seq",
                                   (queue,)).fetchall()
            now = time.time()
            for row in rows:
                self._to_dlq(_job(row), error, now)
            return len(rows)
        return await self._atomic(body)

    async def dlq_list(self, topic: str, offset: int, limit: int) -> list[DlqEntry]:
        self.batch.flush()  # reads see every write asked for before them
        rows = self.db.execute("SELECT record, error, failed_at FROM dlq WHERE topic=? "
                               "ORDER BY seq DESC LIMIT ? OFFSET ?",
                               (topic, limit, offset)).fetchall()
        return [DlqEntry(Job.from_record(orjson.loads(r[0])), r[1], r[2]) for r in rows]

    async def dlq_count(self, topic: str) -> int:
        self.batch.flush()  # reads see every write asked for before them
        return self.db.execute("SELECT COUNT(*) FROM dlq WHERE topic=?", (topic,)).fetchone()[0]

    async def dlq_topics(self) -> dict[str, int]:
        self.batch.flush()  # reads see every write asked for before them
        return dict(self.db.execute("SELECT topic, COUNT(*) FROM dlq GROUP BY topic").fetchall())

    async def redrive(self, topic: str, job_id: str | None) -> list[str]:
        def body() -> list[str]:
            if job_id is None:
                rows = self.db.execute("SELECT id, record FROM dlq WHERE topic=? ORDER BY seq",
                                       (topic,)).fetchall()
            else:
                rows = self.db.execute("SELECT id, record FROM dlq WHERE topic=? AND id=?",
                                       (topic, job_id)).fetchall()
            queues = []
            for one, record in rows:
                self.db.execute("DELETE FROM dlq WHERE id=?", (one,))
                job = Job.from_record(orjson.loads(record))
                job.attempts_made, job.process_at = 0, 0.0
                self.db.execute("DELETE FROM jobs WHERE id=?", (one,))
                self._insert(job)
                queues.append(job.queue)
            return queues
        return await self._atomic(body)

    async def discard(self, topic: str, job_id: str) -> bool:
        return await self._atomic(lambda: self.db.execute(
            "DELETE FROM dlq WHERE topic=? AND id=?", (topic, job_id)).rowcount == 1)

    async def save_destination(self, dest: Destination) -> None:
        await self._atomic(lambda: self.db.execute(
            "INSERT OR REPLACE INTO destinations (name, topic, function_id, namespace, last_seen)"
            " VALUES (?, ?, ?, ?, ?)",
            (dest.name, dest.topic, dest.function_id, dest.namespace, dest.last_seen)))

    async def forget_destination(self, name: str) -> None:
        await self._atomic(lambda: self.db.execute("DELETE FROM destinations WHERE name=?",
                                                    (name,)))

    async def destinations(self) -> list[Destination]:
        self.batch.flush()  # reads see every write asked for before them
        rows = self.db.execute("SELECT name, topic, function_id, namespace, last_seen "
                               "FROM destinations").fetchall()
        return [Destination(*row) for row in rows]

    async def close(self) -> None:
        self.batch.flush()  # steps still waiting for their group commit
        self.db.close()
