"""iii-cron: the ``cron`` trigger type — run a function on a seconds-first schedule in UTC.

One scheduler task serves every binding: it sleeps until the earliest next tick (recomputed when
a binding arrives or leaves), then handles every job that is due. Ticks are computed from the
schedule, never from the previous wake-up, so the timing does not drift; ticks that passed while
the worker was stopped, suspended or busy are not replayed (only the latest due tick of a job is
considered, and only if it is at most ``lock_ttl_ms`` late). Each tick is claimed with a lock on
(job key, tick) in the configured store before it runs, so engines sharing that store run it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from ...sdk import III, TriggerConfig, TriggerHandler, register_worker
from .. import settings
from ..base import WorkerContext, go_live
from ..conditions import ConditionFailed, passes
from .expression import CronExpression, parse
from ...storage.kv import StorageUnavailable
from ...storage.redis_link import REDIS_KEYS, redis_config
from .locks import LockStore, RedisLocks, open_locks

log = logging.getLogger("pyiii.workers.cron")

ACCEPTED = ("adapter",)
ADAPTER_KEYS = ("file_path", "synchronous", "lock_ttl_ms", *REDIS_KEYS,
                # reference options handled (or ignored with a warning) by settings.adapter
                "store_method", "save_interval_ms", "lock_index")
SHOWN_KEYS = ADAPTER_KEYS[:3 + len(REDIS_KEYS)]  # what the refusal lists
DEFAULT_LOCK_TTL_MS = 30_000


@dataclass
class CronSettings:
    adapter: settings.Adapter
    lock_ttl_ms: int


def parse_settings(config: dict[str, Any], ephemeral: bool) -> CronSettings:
    settings.check_keys("iii-cron", config, ACCEPTED)
    chosen = settings.adapter("iii-cron", config, "sqlite", ephemeral)
    options = chosen.config
    for key in options:
        if key not in ADAPTER_KEYS:
            raise ValueError(f"unknown key config.adapter.config.{key}; accepted: "
                             f"{', '.join(SHOWN_KEYS)}")
    if "file_path" in options and not isinstance(options["file_path"], str):
        raise ValueError(f"config.adapter.config.file_path must be a string, "
                         f"got {options['file_path']!r}")
    if options.get("synchronous", "normal") not in ("normal", "full"):
        raise ValueError(f"config.adapter.config.synchronous must be normal or full, "
                         f"got {options['synchronous']!r}")
    try:
        ttl = settings.integer(options, "lock_ttl_ms", DEFAULT_LOCK_TTL_MS, minimum=1)
    except ValueError as exc:
        raise ValueError(f"config.adapter.{exc}") from None
    assert ttl is not None
    if chosen.name == "redis":
        redis_config(options)  # refuse a bad redis block before anything starts
    return CronSettings(chosen, ttl)


def job_key(namespace: str, function_id: str, expression: str, condition: str | None) -> str:
    """Digest of (namespace, function_id, expression, condition_function_id): the same binding
    made on several engines (whatever its id) shares one lock per tick."""
    raw = orjson.dumps([namespace, function_id, expression, condition])
    return hashlib.sha256(raw).hexdigest()


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


@dataclass(eq=False)
class Job:
    binding: TriggerConfig[Any]
    expression: CronExpression
    key: str
    next_tick: datetime | None
    running: bool = False


class CronJobs(TriggerHandler[Any]):
    """Provider callbacks of the ``cron`` trigger type."""

    def __init__(self, worker: "CronWorker") -> None:
        self.worker = worker

    def register_trigger(self, config: TriggerConfig[Any]) -> None:
        self.worker.bind(config)

    def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        self.worker.unbind(config.id)


class CronWorker:
    def __init__(self, iii: III, locks: LockStore, config: CronSettings, ctx: WorkerContext) -> None:
        self.iii = iii
        self.locks = locks
        self.settings = config
        self.ctx = ctx
        self.owner = uuid.uuid4().hex  # who holds a lock; one per worker instance
        self.jobs: dict[str, Job] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None

    def register(self) -> None:
        self.iii.register_trigger_type(
            {"id": "cron", "description": "Runs a function on a cron schedule (seconds first, UTC)"},
            CronJobs(self))
        self._scheduler = asyncio.ensure_future(self._schedule())

    # -- bindings ---------------------------------------------------------------------------

    def bind(self, binding: TriggerConfig[Any]) -> None:
        cfg = binding.config if binding.config is not None else {}
        if not isinstance(cfg, dict):
            raise ValueError("cron trigger config must be an object "
                             "{expression, condition_function_id?}")
        expression = parse(cfg.get("expression"))
        condition = cfg.get("condition_function_id")
        if condition is not None and not isinstance(condition, str):
            raise ValueError("cron trigger config.condition_function_id must be a string")
        key = job_key(binding.namespace or "default", binding.function_id,
                      expression.text.strip(), condition or None)
        current = self.jobs.get(binding.id)
        if current is not None and current.key == key:
            current.binding = binding  # the same job again (replay, metadata change): keep its ticks
            return
        next_tick = expression.next_after(_utc(time.time()))
        if next_tick is None:
            log.warning("cron job %s (%s): expression '%s' has no tick before %d; it will not run",
                        binding.id, binding.function_id, expression.text, 2100)
        self.jobs[binding.id] = Job(binding, expression, key, next_tick)
        self._wake.set()

    def unbind(self, binding_id: str) -> None:
        if self.jobs.pop(binding_id, None) is not None:
            self._wake.set()

    # -- scheduling -------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            self._wake.clear()
            due = min((job.next_tick for job in self.jobs.values() if job.next_tick is not None),
                      default=None)
            if due is None:
                await self._wake.wait()
                continue
            delay = due.timestamp() - time.time()
            if delay > 0:
                # A timer that sets the wake event, rather than asyncio.wait_for: on Python 3.11
                # wait_for can swallow a cancellation that coincides with its timeout.
                timer = asyncio.get_running_loop().call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
                continue  # re-check: woken by a binding change, or the loop timer fired early
            try:
                self._fire_due(time.time())
            except Exception:  # never let one bad job stop the scheduler
                log.exception("cron scheduler error")

    def _fire_due(self, now_ts: float) -> None:
        now = _utc(now_ts)
        ttl_ms = self.settings.lock_ttl_ms
        for job in list(self.jobs.values()):
            if job.next_tick is None or job.next_tick > now:
                continue
            tick, missed = self._latest_due(job, now_ts)
            if tick is None:
                log.warning("cron job %s: ticks more than lock_ttl_ms late were skipped "
                            "(no catch-up)", job.binding.id)
                continue
            job.next_tick = job.expression.next_after(tick)
            if missed:
                log.warning("cron job %s: %d earlier tick(s) passed while the worker was busy; "
                            "skipped (no catch-up)", job.binding.id, missed)
            late_ms = (now_ts - tick.timestamp()) * 1000
            if late_ms > ttl_ms:
                log.warning("cron job %s: tick %s reached %.0f ms late (lock_ttl_ms %d); skipped",
                            job.binding.id, tick.isoformat(), late_ms, ttl_ms)
                continue
            if job.running:
                log.info("cron job %s: previous run still in progress; tick %s left to other "
                         "engines", job.binding.id, tick.isoformat())
                continue
            job.running = True
            task = asyncio.ensure_future(self._run(job, tick))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _latest_due(self, job: Job, now_ts: float) -> tuple[datetime | None, int]:
        """The latest tick at or before now that is not older than ``lock_ttl_ms``, and how many
        due ticks are passed over. With no such tick, ``job.next_tick`` moves past now."""
        assert job.next_tick is not None
        expression, tick, missed = job.expression, job.next_tick, 0
        now = _utc(now_ts)
        horizon = math.ceil(now_ts - self.settings.lock_ttl_ms / 1000)
        if tick.timestamp() < horizon:  # far behind: jump instead of walking every tick
            probe = expression.next_after(_utc(horizon - 1))
            if probe is None or probe > now:
                job.next_tick = probe
                return None, 1
            tick, missed = probe, 1
        while True:
            following = expression.next_after(tick)
            if following is None or following > now:
                return tick, missed
            tick, missed = following, missed + 1

    async def _run(self, job: Job, tick: datetime) -> None:
        binding = job.binding
        try:
            scheduled = int(tick.timestamp())
            claimed = await self.locks.claim(job.key, scheduled, self.owner,
                                             scheduled * 1000 + self.settings.lock_ttl_ms)
            if not claimed or self.jobs.get(binding.id) is not job:
                return  # another engine runs this tick, or the binding left meanwhile
            namespace = binding.namespace or "default"
            payload = {"trigger": "cron", "job_id": binding.id,
                       "scheduled_time": tick.isoformat(),
                       "actual_time": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
            condition = (binding.config or {}).get("condition_function_id")
            if not await passes(self.iii, condition, payload, namespace, binding.metadata):
                return
            request: dict[str, Any] = {"function_id": binding.function_id, "payload": payload,
                                       "namespace": namespace}
            if binding.metadata is not None:
                request["metadata"] = binding.metadata
            await self.iii.trigger_async(request)
        except ConditionFailed as exc:
            log.warning("cron job %s skipped tick %s: %s", binding.id, tick.isoformat(), exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cron job %s (%s) failed at tick %s: %s", binding.id, binding.function_id,
                        tick.isoformat(), exc)
        finally:
            job.running = False

    # -- lifecycle --------------------------------------------------------------------------

    async def reconfigure(self, config: dict[str, Any]) -> None:
        new = parse_settings(config, self.ctx.ephemeral)
        if _store_of(new) != _store_of(self.settings):
            locks = open_locks(new.adapter.name, new.adapter.config, self.ctx.project_dir)
            if isinstance(locks, RedisLocks):
                try:
                    await locks.link.ping()  # connected first; on failure the old one stays
                except StorageUnavailable as exc:
                    await locks.close()
                    raise ValueError(f"config.adapter: {exc}") from None
            old, self.locks = self.locks, locks
            await old.close()
        self.settings = new

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
        for task in list(self.tasks):
            task.cancel()
        pending = [t for t in (self._scheduler, *self.tasks) if t is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self.iii.shutdown_async()
        await self.locks.close()


def _store_of(config: CronSettings) -> tuple[str, dict[str, Any]]:
    """What identifies the lock store (``lock_ttl_ms`` changes apply live, without a swap)."""
    options = {k: v for k, v in config.adapter.config.items() if k != "lock_ttl_ms"}
    return config.adapter.name, options


async def start(ctx: WorkerContext) -> CronWorker:
    config = parse_settings(ctx.config, ctx.ephemeral)
    locks = open_locks(config.adapter.name, config.adapter.config, ctx.project_dir)
    iii = register_worker(ctx.url, ctx.sdk_options())
    worker = CronWorker(iii, locks, config, ctx)
    return await go_live(worker)
