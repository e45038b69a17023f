"""One consumer per internal queue: claim, deliver, renew leases, ack or fail.

No polling floor: the consumer sleeps on an in-process event that enqueues, redrives and
finished deliveries set, so a job on an idle queue is claimed at once. It also wakes at the
next delayed job's due time, and — only for stores other processes write to — every
``poll_interval_ms`` (jobs from another engine, expired leases of a dead engine).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Awaitable, Callable

from ...sdk import RegistrationRejectedError
from .config import QueueConfig
from .storage import Job, QueueStore

log = logging.getLogger("pyiii.workers.queue")

# deliver(job) -> None on success; raises on failure (the message becomes the DLQ error)
Deliver = Callable[[Job], Awaitable[None]]
STOP_GRACE_S = 10.0


def not_an_attempt(exc: BaseException) -> bool:
    """Our own client is gone (shut down, or refused by the engine): the delivery never reached
    the function, so the job goes back to waiting without counting an attempt."""
    return isinstance(exc, RegistrationRejectedError) or getattr(exc, "code", None) == "SHUTDOWN"


def describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None)
    if code is not None and message is not None:
        return f"{code}: {message}"
    return f"invocation_failed: {exc}" if str(exc) else f"invocation_failed: {type(exc).__name__}"


class Consumer:
    def __init__(self, store: QueueStore, queue: str, config: QueueConfig, deliver: Deliver,
                 visibility_ms: int) -> None:
        self.store = store
        self.queue = queue
        self.config = config
        self.deliver = deliver
        self.visibility_ms = visibility_ms
        self.token = uuid.uuid4().hex
        self.wake = asyncio.Event()
        self.in_flight: dict[asyncio.Task[None], Job] = {}
        self.closing = False
        self.hold_until = 0.0
        self.task: asyncio.Task[None] | None = None
        self.renewer: asyncio.Task[None] | None = None

    def start(self) -> "Consumer":
        self.task = asyncio.ensure_future(self._run())
        self.renewer = asyncio.ensure_future(self._renew())
        return self

    def notify(self) -> None:
        self.wake.set()

    async def _run(self) -> None:
        poll_s = self.config.poll_interval_ms / 1000 if self.store.shared else None
        while not self.closing:
            self.wake.clear()
            timeout = poll_s
            free = self.config.concurrency - len(self.in_flight)
            held = self.hold_until - time.time()
            if held > 0:
                free, timeout = 0, held if timeout is None else min(timeout, held)
            if free > 0:
                try:
                    claim = await self.store.claim(self.queue, free, self.config.fifo,
                                                   self.visibility_ms, self.token)
                except Exception:
                    log.exception("queue %s: claim failed", self.queue)
                    claim = None
                    timeout = 1.0 if timeout is None else max(timeout, 1.0)
                if claim is not None:
                    for job in claim.jobs:
                        task = asyncio.ensure_future(self._one(job))
                        self.in_flight[task] = job
                    if claim.next_due is not None:
                        wait = max(0.0, claim.next_due - time.time()) + 0.001
                        timeout = wait if timeout is None else min(timeout, wait)
            if self.closing:
                break
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def _one(self, job: Job) -> None:
        try:
            await self.deliver(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not_an_attempt(exc):
                self.hold_until = time.time() + 1.0  # do not spin on a dead client
                await self._release(job)
                return
            try:
                outcome = await self.store.fail(job, describe(exc), self.config.backoff_ms)
                if outcome == "dlq":
                    log.warning("queue %s: job %s moved to the DLQ: %s", self.queue, job.id,
                                describe(exc))
            except Exception:
                log.exception("queue %s: recording the failure of %s failed", self.queue, job.id)
        else:
            try:
                if not await self.store.ack(job):
                    log.warning("queue %s: job %s finished after its lease was lost; it may be "
                                "delivered again", self.queue, job.id)
            except Exception:
                log.exception("queue %s: ack of %s failed", self.queue, job.id)
        finally:
            self.in_flight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self.wake.set()

    async def _renew(self) -> None:
        period = max(self.visibility_ms / 3000, 0.01)
        while True:
            await asyncio.sleep(period)
            tokens = [job.lease_token for job in self.in_flight.values() if job.lease_token]
            if tokens:
                try:
                    await self.store.renew(self.queue, tokens, self.visibility_ms)
                except Exception:
                    log.exception("queue %s: lease renewal failed", self.queue)
            elif self.closing and (self.task is None or self.task.done()):
                return

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop taking jobs; wait up to ``grace_s`` for in-flight ones, then give the rest back
        to waiting without counting an attempt."""
        self.closing = True
        self.wake.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        pending = list(self.in_flight)
        if pending and grace_s > 0:
            await asyncio.wait(pending, timeout=grace_s)
        for task, job in list(self.in_flight.items()):
            task.cancel()
            await self._release(job)
        if self.in_flight:
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        if self.renewer is not None:
            self.renewer.cancel()
            await asyncio.gather(self.renewer, return_exceptions=True)

    async def _release(self, job: Job) -> None:
        try:
            await self.store.release(job)
        except Exception:
            log.exception("queue %s: releasing %s failed", self.queue, job.id)

    def abandon(self) -> None:
        """Drop everything without touching the store (what a crash leaves behind)."""
        self.closing = True
        for task in [self.task, self.renewer, *self.in_flight]:
            if task is not None:
                task.cancel()
