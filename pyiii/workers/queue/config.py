"""Configuration of iii-queue (spec/workers.md §4.1) and of `durable:subscriber` bindings (§4.3).

Errors are ``ValueError`` naming the key (and the queue); the engine reports them and, on a hot
reload, keeps the previous configuration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .. import settings

log = logging.getLogger("pyiii.workers.queue")

WORKER = "iii-queue"
ACCEPTED = ("adapter", "queue_configs", "subscription_retention_ms")
QUEUE_KEYS = ("max_retries", "concurrency", "type", "message_group_field", "backoff_ms",
              "poll_interval_ms")
QUEUE_IGNORED = ("max_priority", "priority_field")
ADAPTER_KEYS = ("file_path", "synchronous", "visibility_timeout_ms", "store_method",
                "save_interval_ms", "lock_index", "redis_url", "key_prefix", "connect_timeout_ms")
DEFAULT_QUEUE = "default"
DEFAULT_VISIBILITY_MS = 30_000
DEFAULT_RETENTION_MS = 86_400_000
FN_QUEUE_PREFIX = "__fn_queue::"


@dataclass(frozen=True)
class QueueConfig:
    """Settings of one consumer: a named queue, or a topic destination."""

    max_retries: int = 3
    concurrency: int = 10
    type: str = "standard"
    message_group_field: str | None = None
    backoff_ms: int = 1000
    poll_interval_ms: int = 100

    @property
    def fifo(self) -> bool:
        return self.type == "fifo"

    @property
    def max_attempts(self) -> int:
        return max(1, self.max_retries)

    def restart_key(self) -> tuple[Any, ...]:
        """Settings whose change restarts the queue's consumer (backoff is live)."""
        return (self.max_retries, self.concurrency, self.type, self.message_group_field,
                self.poll_interval_ms)

    def public(self) -> dict[str, Any]:
        return {"max_retries": self.max_retries, "concurrency": self.concurrency,
                "type": self.type, "message_group_field": self.message_group_field,
                "backoff_ms": self.backoff_ms, "poll_interval_ms": self.poll_interval_ms}


@dataclass
class QueueSettings:
    adapter: settings.Adapter
    visibility_timeout_ms: int = DEFAULT_VISIBILITY_MS
    subscription_retention_ms: int = DEFAULT_RETENTION_MS
    queues: dict[str, QueueConfig] = field(default_factory=dict)


def _int(where: str, raw: dict[str, Any], key: str, default: int, minimum: int = 0) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{where}.{key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def parse_queue(name: str, raw: Any) -> QueueConfig:
    where = f"config.queue_configs.{name}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping")
    for key in raw:
        if key in QUEUE_IGNORED:
            log.warning("%s: %s.%s is not used by pyiii and is ignored", WORKER, where, key)
        elif key not in QUEUE_KEYS:
            raise ValueError(f"unknown key {where}.{key}; accepted: {', '.join(QUEUE_KEYS)}")
    kind = raw.get("type", "standard")
    if kind not in ("standard", "fifo"):
        raise ValueError(f"{where}.type must be 'standard' or 'fifo', got {kind!r}")
    group = raw.get("message_group_field")
    if group is not None and (not isinstance(group, str) or not group):
        raise ValueError(f"{where}.message_group_field must be a non-empty string")
    if kind == "fifo" and group is None:
        raise ValueError(f"queue '{name}': type fifo requires message_group_field "
                         f"({where}.message_group_field)")
    return QueueConfig(
        max_retries=_int(where, raw, "max_retries", 3),
        concurrency=_int(where, raw, "concurrency", 10, minimum=1),
        type=kind,
        message_group_field=group,
        backoff_ms=_int(where, raw, "backoff_ms", 1000),
        poll_interval_ms=_int(where, raw, "poll_interval_ms", 100, minimum=1),
    )


def parse_settings(config: dict[str, Any], ephemeral: bool) -> QueueSettings:
    config = config or {}
    settings.check_keys(WORKER, config, ACCEPTED)
    adapter = settings.adapter(WORKER, config, "sqlite", ephemeral)
    for key in adapter.config:
        if key not in ADAPTER_KEYS:
            raise ValueError(f"unknown key config.adapter.config.{key}; accepted: "
                             "file_path, synchronous, visibility_timeout_ms (sqlite); "
                             "redis_url, key_prefix, connect_timeout_ms, "
                             "visibility_timeout_ms (redis)")
    if adapter.name == "redis":
        from ...storage.redis_link import redis_config

        redis_config(adapter.config)  # ValueError names the bad key
    synchronous = adapter.config.get("synchronous", "normal")
    if synchronous not in ("normal", "full"):
        raise ValueError(f"config.adapter.config.synchronous must be 'normal' or 'full', "
                         f"got {synchronous!r}")
    path = adapter.config.get("file_path")
    if path is not None and (not isinstance(path, str) or not path):
        raise ValueError("config.adapter.config.file_path must be a non-empty string")
    visibility = _int("config.adapter.config", adapter.config, "visibility_timeout_ms",
                      DEFAULT_VISIBILITY_MS, minimum=1)
    retention = _int("config", config, "subscription_retention_ms", DEFAULT_RETENTION_MS)
    raw_queues = config.get("queue_configs") or {}
    if not isinstance(raw_queues, dict):
        raise ValueError("config.queue_configs must be a mapping of queue name to settings")
    queues: dict[str, QueueConfig] = {}
    for name, raw in raw_queues.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"config.queue_configs: queue names must be non-empty strings, "
                             f"got {name!r}")
        queues[name] = parse_queue(name, raw)
    queues.setdefault(DEFAULT_QUEUE, QueueConfig())
    return QueueSettings(adapter, visibility, retention, queues)


# -- durable:subscriber bindings ------------------------------------------------------------

BINDING_QUEUE_KEYS = ("type", "maxRetries", "concurrency", "backoffDelayMs")
BINDING_QUEUE_IGNORED = ("maxPriority", "visibilityTimeout", "delaySeconds", "backoffType")


@dataclass(frozen=True)
class Subscription:
    topic: str
    condition_function_id: str | None
    queue: QueueConfig


def parse_binding(cfg: Any) -> Subscription:
    """Validate a `durable:subscriber` config; ``ValueError`` refuses the binding."""
    if not isinstance(cfg, dict):
        raise ValueError("durable:subscriber config must be an object {topic, "
                         "condition_function_id?, queue_config?}")
    topic = cfg.get("topic", cfg.get("queue"))
    if not isinstance(topic, str) or not topic:
        raise ValueError("durable:subscriber trigger needs a non-empty config.topic")
    condition = cfg.get("condition_function_id")
    if condition is not None and not isinstance(condition, str):
        raise ValueError("durable:subscriber config.condition_function_id must be a string")
    raw = cfg.get("queue_config") or {}
    if not isinstance(raw, dict):
        raise ValueError("durable:subscriber config.queue_config must be an object")
    for key in raw:
        if key not in BINDING_QUEUE_KEYS and key not in BINDING_QUEUE_IGNORED:
            log.warning("%s: durable:subscriber queue_config.%s is unknown and ignored", WORKER, key)
    kind = raw.get("type", "standard")
    if kind not in ("fifo", "concurrent", "standard"):
        raise ValueError(f"queue_config.type must be fifo, concurrent or standard, got {kind!r}")
    where = "queue_config"
    retries = _int(where, raw, "maxRetries", 2)
    queue = QueueConfig(
        max_retries=retries + 1,  # deliveries: maxRetries counts retries after the first
        concurrency=_int(where, raw, "concurrency", 10),
        type="fifo" if kind == "fifo" else "standard",
        message_group_field=None,
        backoff_ms=_int(where, raw, "backoffDelayMs", 1000),
    )
    return Subscription(topic, condition, queue)
