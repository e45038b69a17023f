"""One consumer per internal queue: claim, deliver, renew leases, ack or fail.

No polling floor: an enqueue, a redrive or a finished delivery starts a claim at once (the
*filler*), so a job on an idle queue starts within a few event-loop turns. A finished job's
ack and the claim that refills its slot are asked for in the same loop turn and so share one
group commit in the SQLite adapter. A timer task wakes the filler at the next delayed job's due
time, after a hold, and — only for stores other processes write to — every
``poll_interval_ms`` (jobs from another engine, expired leases of a dead engine).

A store that can wait for jobs itself (``Waiting``: Redis blocks in ``XREADGROUP``) replaces that
poll: while the consumer has free slots and no claim is under way, the timer task blocks in the
store's waiter for up to ``poll_interval_ms``, cut short by the next due time or a hold, and
starts what the waiter leased. The slots a claim or a blocking read may fill are *reserved*
while it runs, so the two together never exceed ``concurrency``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Awaitable, Callable, Protocol, runtime_checkable

from ...sdk import RegistrationRejectedError
from ...storage.kv import StorageUnavailable
from .config import QueueConfig
from .storage import Job, QueueStore

log = logging.getLogger("pyiii.workers.queue")

# deliver(job) -> None on success; raises on failure (the message becomes the DLQ error)
Deliver = Callable[[Job], Awaitable[None]]
STOP_GRACE_S = 10.0
CLAIM_BACKOFF_FIRST_S = 0.1
CLAIM_BACKOFF_MAX_S = 5.0
INTERRUPT_RETRY_S = 0.02  # an interrupt can reach the store before the read it should end
INTERRUPT_TIMEOUT_S = 0.5  # longest wait for the store to take an interrupt
MIN_BLOCK_S = 0.005  # closer to a due time, the plain timer waits (a read would be interrupted)


class Waiter(Protocol):
    async def wait(self, limit: int, timeout_s: float) -> list[Job]:
        """Wait up to ``timeout_s`` for jobs and lease at most ``limit``; [] if none came."""

    async def interrupt(self) -> bool:
        """End a ``wait`` under way early; False if it was not blocked yet (or any more)."""

    async def close(self) -> None: ...


@runtime_checkable
class Waiting(Protocol):
    """A store that can block until another process adds a job (instead of being polled)."""

    def waiter(self, queue: str, token: str) -> Waiter: ...


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
        # the store's blocking reader, when it has one (see the module docstring)
        self.waiter: Waiter | None = (store.waiter(queue, self.token)
                                      if isinstance(store, Waiting) else None)
        self.reserved = 0  # slots a claim or a blocking read under way may fill
        self.in_flight: dict[asyncio.Task[None], Job] = {}  # jobs whose handler runs
        self.running: set[asyncio.Task[None]] = set()  # also those still being acked
        self.closing = False
        self.hold_until = 0.0
        self.next_due: float | None = None
        self.refill = False
        self.backoff_s = CLAIM_BACKOFF_FIRST_S
        self.task: asyncio.Task[None] | None = None
        self.filler: asyncio.Task[None] | None = None
        self.renewer: asyncio.Task[None] | None = None

    def start(self) -> "Consumer":
        self.task = asyncio.ensure_future(self._run())
        self.renewer = asyncio.ensure_future(self._renew())
        self.kick()
        return self

    def notify(self) -> None:
        self.kick()

    def kick(self) -> None:
        """Claim for the free slots now, or right after the claim already under way."""
        if self.closing:
            return
        if self.filler is not None and not self.filler.done():
            self.refill = True
            return
        self.filler = asyncio.ensure_future(self._fill())

    def _free(self) -> int:
        return self.config.concurrency - len(self.in_flight) - self.reserved

    async def _fill(self) -> None:
        try:
            while not self.closing:
                self.refill = False
                free = self._free()
                if free <= 0 or self.hold_until > time.time():
                    return
                self.reserved += free
                try:
                    claim = await self.store.claim(self.queue, free, self.config.fifo,
                                                   self.visibility_ms, self.token)
                except Exception as exc:
                    self._failed("claim", exc)
                    return
                finally:
                    self.reserved -= free
                self.backoff_s = CLAIM_BACKOFF_FIRST_S
                await self._start(claim.jobs)
                if claim.next_due != self.next_due:
                    self.next_due = claim.next_due
                    self.wake.set()  # the timer recomputes its deadline
                if len(claim.jobs) < free and not self.refill:
                    return  # nothing more is ready
        finally:
            if self.waiter is not None and self._free() > 0:
                self.wake.set()  # slots left free: the timer blocks in the waiter now

    def _failed(self, what: str, exc: Exception) -> None:
        if isinstance(exc, StorageUnavailable):  # e.g. Redis down: back off 0.1 s doubling to 5 s
            log.warning("queue %s: %s; retrying in %.1f s", self.queue, exc, self.backoff_s)
            self._hold(self.backoff_s)
            self.backoff_s = min(self.backoff_s * 2, CLAIM_BACKOFF_MAX_S)
        else:
            log.error("queue %s: %s failed", self.queue, what, exc_info=exc)
            self._hold(1.0)

    async def _start(self, jobs: list[Job]) -> None:
        for job in jobs:
            if self.closing:  # stopped while claiming: give it back untouched
                await self._release(job)
                continue
            task = asyncio.ensure_future(self._one(job))
            self.in_flight[task] = job
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    def _hold(self, seconds: float) -> None:
        self.hold_until = time.time() + seconds
        self.wake.set()

    def _deadline(self) -> float | None:
        """When the timer must act next (a hold ending, a delayed job due), if ever."""
        times = [at for at in (self.hold_until, self.next_due) if at is not None and at > 0]
        return min(times) if times else None

    def _expire(self) -> None:
        now = time.time()
        if self.hold_until <= now:
            self.hold_until = 0.0
        if self.next_due is not None and self.next_due <= now:
            self.next_due = None

    async def _run(self) -> None:
        """The timer: kicks the filler at the next due time, after a hold, or on the poll —
        or, for a ``Waiting`` store, blocks in its waiter while slots are free."""
        poll_s = self.config.poll_interval_ms / 1000 if self.store.shared else None
        while not self.closing:
            self.wake.clear()
            now = time.time()
            timeout = poll_s
            deadline = self._deadline()
            if deadline is not None:
                wait = max(0.0, deadline - now) + 0.001
                timeout = wait if timeout is None else min(timeout, wait)
            filling = self.filler is not None and not self.filler.done()
            if (self.waiter is not None and not filling and self._free() > 0
                    and self.hold_until <= now and timeout is not None
                    and timeout > MIN_BLOCK_S):
                got = await self._block(self.waiter, timeout)
                due = self.next_due is not None and self.next_due <= time.time()
                self._expire()
                if got == 0 or due:  # time-driven work (scan, due jobs) is the claim's
                    self.kick()
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                self._expire()
                self.kick()

    async def _block(self, waiter: Waiter, timeout: float) -> int | None:
        """One blocking read for the free slots; the number of jobs started, None on error.

        A stop, or reaching the deadline (a due job, perhaps learnt during the read), interrupts
        the read: the store's own block timeout may be late (Redis checks timeouts of idle
        blocked clients only every 100 ms at its default ``hz``), a due job must not be."""
        free = self._free()
        self.reserved += free
        read = asyncio.ensure_future(waiter.wait(free, timeout))
        read.add_done_callback(lambda _: self.wake.set())
        try:
            while not read.done():
                self.wake.clear()
                deadline = self._deadline()
                if self.closing or (deadline is not None and deadline <= time.time()):
                    await self._interrupt(waiter, read)
                    await asyncio.wait({read})
                    break
                try:  # until the read ends, a wake (stop, new due time) or the deadline
                    async with asyncio.timeout(None if deadline is None
                                               else deadline - time.time() + 0.001):
                        await self.wake.wait()
                except TimeoutError:
                    pass
            jobs = read.result()
        except asyncio.CancelledError:  # abandoned: what the read delivers is left to go stale
            read.cancel()
            raise
        except Exception as exc:
            self._failed("blocking read", exc)
            return None
        finally:
            self.reserved -= free
        self.backoff_s = CLAIM_BACKOFF_FIRST_S
        await self._start(jobs)
        return len(jobs)

    async def _interrupt(self, waiter: Waiter, read: asyncio.Future[list[Job]]) -> None:
        """Interrupt ``read``, retrying while it is not blocked at the store yet (its block
        time bounds this anyway)."""
        while not read.done():
            try:
                # bounded: a store that stopped answering must not hold up a stop; the read
                # itself ends by its own block time
                async with asyncio.timeout(INTERRUPT_TIMEOUT_S):
                    if await waiter.interrupt():
                        return
            except Exception as exc:  # Redis gone or silent: the read fails on its own
                log.debug("queue %s: interrupting the blocking read failed: %s", self.queue, exc)
                return
            await asyncio.wait({read}, timeout=INTERRUPT_RETRY_S)

    async def _one(self, job: Job) -> None:
        try:
            await self.deliver(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.in_flight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if not_an_attempt(exc):
                self._hold(1.0)  # do not spin on a dead client
                await self._release(job)
                return
            self.kick()
            try:
                outcome = await self.store.fail(job, describe(exc), self.config.backoff_ms)
                if outcome == "dlq":
                    log.warning("queue %s: job %s moved to the DLQ: %s", self.queue, job.id,
                                describe(exc))
            except Exception:
                log.exception("queue %s: recording the failure of %s failed", self.queue, job.id)
        else:
            # the slot is free once the handler returned: the refill claim shares the ack's
            # group commit
            self.in_flight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self.kick()
            try:
                if not await self.store.ack(job):
                    log.warning("queue %s: job %s finished after its lease was lost; it may be "
                                "delivered again", self.queue, job.id)
            except Exception:
                log.exception("queue %s: ack of %s failed", self.queue, job.id)
        finally:
            if self.in_flight.pop(asyncio.current_task(), None) is not None:  # type: ignore[arg-type]
                self.kick()

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
        for task in (self.task, self.filler):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        pending = list(self.running)
        if pending and grace_s > 0:
            await asyncio.wait(pending, timeout=grace_s)
        for task, job in list(self.in_flight.items()):
            task.cancel()
            await self._release(job)
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        if self.renewer is not None:
            self.renewer.cancel()
            await asyncio.gather(self.renewer, return_exceptions=True)
        if self.waiter is not None:
            await self.waiter.close()

    async def _release(self, job: Job) -> None:
        try:
            await self.store.release(job)
        except Exception:
            log.exception("queue %s: releasing %s failed", self.queue, job.id)

    def abandon(self) -> None:
        """Drop everything without touching the store (what a crash leaves behind)."""
        self.closing = True
        for task in [self.task, self.filler, self.renewer, *self.running]:
            if task is not None:
                task.cancel()
