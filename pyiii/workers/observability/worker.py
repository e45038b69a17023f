"""iii-observability: a queryable store of recent worker log records (spec/workers.md §10).

The engine publishes every record of ``engine::log::*`` calls and ``LOGS`` telemetry frames on
:data:`pyiii.engine.logs.FEED`; this worker, running in the engine's process (it is always
on), subscribes to that feed and answers ``engine::logs::list``, ``engine::logs::clear`` and
``engine::health::check``. Run out of process it only sees its own process's records.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ... import __version__
from ...engine.logs import FEED, LEVELS, apply_entry_settings
from ...sdk import III, register_worker
from .. import settings
from ..base import WorkerContext, go_live
from ..errors import bad_input
from .store import LogQuery, LogStore

log = logging.getLogger("pyiii.workers.observability")

NAME = "iii-observability"
ACCEPTED = ("enabled", "level", "format", "logs_max_count", "logs_retention_seconds",
            "logs_console_output")
# keys of the reference system's block that pyiii has no use for (traces, metrics, export)
IGNORED = ("service_name", "service_version", "service_namespace", "exporter", "endpoint",
           "sampling_ratio", "sampling", "memory_max_spans", "trace_storage", "live_spans",
           "metrics_enabled", "metrics_exporter", "metrics_retention_seconds",
           "metrics_max_count", "logs_enabled", "logs_exporter", "logs_batch_size",
           "logs_flush_interval_ms", "logs_sampling_ratio", "alerts", "collapse_spans")
FORMATS = ("default", "text", "json")


@dataclass(frozen=True)
class ObservabilitySettings:
    enabled: bool = True
    level: str = "info"
    format: str = "default"
    logs_max_count: int = 1000
    logs_retention_seconds: int = 3600
    logs_console_output: bool = True


def parse_settings(config: dict[str, Any]) -> ObservabilitySettings:
    """Validate the ``config:`` block; ``ValueError`` names the offending key."""
    if not isinstance(config, dict):
        raise ValueError(f"{NAME}: config must be a mapping")
    ignored = [key for key in config if key in IGNORED]
    if ignored:
        log.warning("%s: config keys %s are not used by pyiii and are ignored", NAME,
                    ", ".join(ignored))
    settings.check_keys(NAME, {k: v for k, v in config.items() if k not in IGNORED}, ACCEPTED)
    level = config.get("level", "info")
    if not isinstance(level, str) or level.lower() not in LEVELS:
        raise ValueError(f"config.level must be one of trace, debug, info, warn, error; "
                         f"got {level!r}")
    fmt = config.get("format", "default")
    if fmt not in FORMATS:
        raise ValueError(f"config.format must be default or json, got {fmt!r}")
    return ObservabilitySettings(
        enabled=settings.boolean(config, "enabled", True),
        level=level.lower(),
        format="default" if fmt == "text" else fmt,
        logs_max_count=settings.integer(config, "logs_max_count", 1000, minimum=1) or 1000,
        logs_retention_seconds=settings.integer(config, "logs_retention_seconds", 3600,
                                                minimum=1) or 3600,
        logs_console_output=settings.boolean(config, "logs_console_output", True),
    )


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], minimum: int | None,
           function_id: str = "engine::logs::list") -> Any:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = "a string" if kind is str else "a number"
        raise bad_input(function_id, f"`{key}` must be {expected}")
    if minimum is not None and value < minimum:
        raise bad_input(function_id, f"`{key}` must be ≥ {minimum}")
    return value


def parse_query(data: Any) -> LogQuery:
    """The request of ``engine::logs::list`` (null = no filters)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise bad_input("engine::logs::list", "expected an object")
    offset = _field(data, "offset", int, 0)
    limit = _field(data, "limit", int, 0)
    return LogQuery(
        start_time=_field(data, "start_time", (int, float), None),
        end_time=_field(data, "end_time", (int, float), None),
        trace_id=_field(data, "trace_id", str, None),
        span_id=_field(data, "span_id", str, None),
        severity_min=_field(data, "severity_min", int, None),
        severity_text=_field(data, "severity_text", str, None),
        offset=0 if offset is None else offset,
        limit=100 if limit is None else limit,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class ObservabilityWorker:
    def __init__(self, iii: III, config: ObservabilitySettings) -> None:
        self.iii = iii
        self.settings = config
        self.store = LogStore(config.logs_max_count, config.logs_retention_seconds)
        self.subscription = FEED.subscribe(self._keep, echo=config.logs_console_output)
        apply_entry_settings(config.level, "json" if config.format == "json" else "text")

    def _keep(self, record: dict[str, Any]) -> None:
        if self.settings.enabled:
            self.store.add(record)

    def register(self) -> None:
        for name, handler, description in (
            ("engine::logs::list", self.list, "List recent worker log records, newest first"),
            ("engine::logs::clear", self.clear, "Remove every stored log record"),
            ("engine::health::check", self.health, "Health of the engine's log store"),
        ):
            self.iii.register_function(name, handler, description=description)

    def list(self, data: Any) -> dict[str, Any]:
        query = parse_query(data)
        total, records = self.store.query(query)
        return {"logs": records, "total": total, "query": query.as_dict(),
                "timestamp": _now_ms()}

    def clear(self, data: Any) -> dict[str, Any]:
        self.store.clear()
        return {"success": True}

    def health(self, data: Any) -> dict[str, Any]:
        logs = {"status": "healthy" if self.settings.enabled else "disabled",
                "count": self.store.count()}
        return {"status": "healthy", "components": {"logs": logs}, "timestamp": _now_ms(),
                "version": __version__}

    async def reconfigure(self, config: dict[str, Any]) -> None:
        new = parse_settings(config)  # ValueError keeps the running settings
        self.settings = new
        self.store.configure(new.logs_max_count, new.logs_retention_seconds)
        if not new.enabled:
            self.store.clear()
        self.subscription.echo = new.logs_console_output
        apply_entry_settings(new.level, "json" if new.format == "json" else "text")

    async def stop(self) -> None:
        self.subscription.close()
        await self.iii.shutdown_async()


async def start(ctx: WorkerContext) -> ObservabilityWorker:
    config = parse_settings(ctx.config)
    iii = register_worker(ctx.url, ctx.sdk_options())
    return await go_live(ObservabilityWorker(iii, config))
