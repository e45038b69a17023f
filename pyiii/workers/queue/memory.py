"""The `memory` queue adapter: in-process structures, lost when the process ends.

Per internal queue: ready ids (standard jobs), a heap of delayed standard jobs, one lane per FIFO
group (the head is the group's current job, even while it waits for a retry), and the leases.
Leases behave as in the durable adapters so the worker treats every adapter alike.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .storage import LEASE_LOST, Claim, Destination, DlqEntry, Job, backoff_delay_ms


@dataclass
class _Queue:
    jobs: dict[str, Job] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    ready: deque[str] = field(default_factory=deque)
    delayed: list[tuple[float, int, str]] = field(default_factory=list)
    lanes: dict[str, deque[str]] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (token, until)


class MemoryQueueStore:
    shared = False

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.dlq: dict[str, OrderedDict[str, DlqEntry]] = {}
        self.dests: dict[str, Destination] = {}
        self.counter = itertools.count(1)

    def _q(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue()
        return q

    def _place(self, q: _Queue, job: Job) -> None:
        q.jobs[job.id] = job
        seq = q.seq[job.id] = next(self.counter)
        if job.group is not None:
            q.lanes.setdefault(job.group, deque()).append(job.id)
        elif job.process_at > time.time():
            heapq.heappush(q.delayed, (job.process_at, seq, job.id))
        else:
            q.ready.append(job.id)

    def _remove(self, q: _Queue, job: Job) -> None:
        q.jobs.pop(job.id, None)
        q.seq.pop(job.id, None)
        q.leases.pop(job.id, None)
        if job.group is not None:
            lane = q.lanes.get(job.group)
            if lane is not None:
                try:
                    lane.remove(job.id)
                except ValueError:
                    pass
                if not lane:
                    del q.lanes[job.group]

    async def push(self, job: Job) -> bool:
        if job.id in self._q(job.queue).jobs or job.id in self.dlq.get(job.topic, {}):
            return False
        job = copy.deepcopy(job)
        job.lease_token = None
        self._place(self._q(job.queue), job)
        return True

    def _expire(self, q: _Queue, now: float) -> None:
        for job_id, (token, until) in list(q.leases.items()):
            if until < now:
                job = q.jobs[job_id]
                self._fail(q, job, token, LEASE_LOST, job.backoff_ms, now)

    async def claim(self, queue: str, limit: int, fifo: bool, lease_ms: int,
                    token: str) -> Claim:
        q = self._q(queue)
        now = time.time()
        self._expire(q, now)
        while q.delayed and q.delayed[0][0] <= now:
            _, _, job_id = heapq.heappop(q.delayed)
            if job_id in q.jobs:
                q.ready.append(job_id)
        picked: list[Job] = []
        next_due: float | None = None
        heads = []
        for lane in q.lanes.values():
            job = q.jobs[lane[0]]
            if job.id in q.leases:
                continue
            if job.process_at > now:
                next_due = job.process_at if next_due is None else min(next_due, job.process_at)
                continue
            heads.append((q.seq[job.id], job))
        heads.sort(key=lambda pair: pair[0])
        picked.extend(job for _, job in heads[:limit])
        while len(picked) < limit and q.ready:
            job_id = q.ready.popleft()
            if job_id in q.jobs and job_id not in q.leases:
                picked.append(q.jobs[job_id])
        if q.delayed:
            due = q.delayed[0][0]
            next_due = due if next_due is None else min(next_due, due)
        out = []
        for job in picked:
            lease = f"{token}:{job.id}:{next(self.counter)}"
            q.leases[job.id] = (lease, now + lease_ms / 1000)
            given = copy.deepcopy(job)
            given.lease_token = lease
            out.append(given)
        return Claim(out, next_due)

    async def renew(self, queue: str, tokens: list[str], lease_ms: int) -> None:
        q = self._q(queue)
        until = time.time() + lease_ms / 1000
        wanted = set(tokens)
        for job_id, (token, _) in list(q.leases.items()):
            if token in wanted:
                q.leases[job_id] = (token, until)

    def _holds(self, q: _Queue, job: Job) -> bool:
        lease = q.leases.get(job.id)
        return lease is not None and lease[0] == job.lease_token

    async def ack(self, job: Job) -> bool:
        q = self._q(job.queue)
        if not self._holds(q, job):
            return False
        self._remove(q, q.jobs[job.id])
        return True

    def _fail(self, q: _Queue, job: Job, token: str | None, error: str, backoff_ms: int,
              now: float) -> str:
        lease = q.leases.get(job.id)
        if lease is None or lease[0] != token:
            return "lost"
        stored = q.jobs[job.id]
        del q.leases[job.id]
        stored.attempts_made += 1
        if stored.attempts_made >= stored.max_attempts:
            self._remove(q, stored)
            self.dlq.setdefault(stored.topic, OrderedDict())[stored.id] = DlqEntry(stored, error, now)
            return "dlq"
        stored.process_at = now + backoff_delay_ms(backoff_ms, stored.attempts_made) / 1000
        if stored.group is None:
            heapq.heappush(q.delayed, (stored.process_at, q.seq[stored.id], stored.id))
        return "retry"

    async def fail(self, job: Job, error: str, backoff_ms: int) -> str:
        q = self._q(job.queue)
        return self._fail(q, job, job.lease_token, error, backoff_ms, time.time())

    async def release(self, job: Job) -> None:
        q = self._q(job.queue)
        if self._holds(q, job):
            del q.leases[job.id]
            if job.group is None:
                q.ready.appendleft(job.id)

    async def counts(self, queue: str) -> tuple[int, int]:
        q = self.queues.get(queue)
        if q is None:
            return 0, 0
        return len(q.jobs) - len(q.leases), len(q.leases)

    async def drain_to_dlq(self, queue: str, error: str) -> int:
        q = self.queues.pop(queue, None)
        if q is None:
            return 0
        now = time.time()
        for job in q.jobs.values():
            self.dlq.setdefault(job.topic, OrderedDict())[job.id] = DlqEntry(job, error, now)
        return len(q.jobs)

    async def dlq_list(self, topic: str, offset: int, limit: int) -> list[DlqEntry]:
        entries = list(reversed(self.dlq.get(topic, {}).values()))
        return copy.deepcopy(entries[offset:offset + limit])

    async def dlq_count(self, topic: str) -> int:
        return len(self.dlq.get(topic, {}))

    async def dlq_topics(self) -> dict[str, int]:
        return {topic: len(entries) for topic, entries in self.dlq.items() if entries}

    async def redrive(self, topic: str, job_id: str | None) -> list[str]:
        entries = self.dlq.get(topic)
        if not entries:
            return []
        ids = list(entries) if job_id is None else ([job_id] if job_id in entries else [])
        queues = []
        for one in ids:
            job = entries.pop(one).job
            job.attempts_made, job.process_at = 0, 0.0
            self._place(self._q(job.queue), job)
            queues.append(job.queue)
        return queues

    async def discard(self, topic: str, job_id: str) -> bool:
        return self.dlq.get(topic, {}).pop(job_id, None) is not None

    async def save_destination(self, dest: Destination) -> None:
        self.dests[dest.name] = copy.copy(dest)

    async def forget_destination(self, name: str) -> None:
        self.dests.pop(name, None)

    async def destinations(self) -> list[Destination]:
        return [copy.copy(d) for d in self.dests.values()]

    async def close(self) -> None:
        pass
