"""Validation of a first-party worker's ``config:`` block and its ``adapter`` (spec/workers.md §1.2-1.3).

Errors are ``ValueError`` whose message names the key and what is accepted; the engine reports
them against the worker and, on reload, keeps the old configuration.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("pyiii.workers")

ADAPTERS = ("memory", "sqlite", "redis")
_REFUSED = ("bridge", "rabbitmq")


@dataclass
class Adapter:
    name: str
    config: dict[str, Any] = field(default_factory=dict)


def check_keys(worker: str, config: dict[str, Any], accepted: tuple[str, ...],
               ignored: tuple[str, ...] = ()) -> None:
    if not isinstance(config, dict):
        raise ValueError(f"{worker}: config must be a mapping")
    for key in config:
        if key in ignored:
            log.warning("%s: config.%s is not used by pyiii and is ignored", worker, key)
            continue
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown key config.{key}{hint}; accepted: {', '.join(accepted)}")


def integer(config: dict[str, Any], key: str, default: int | None, minimum: int = 0) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"config.{key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def boolean(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"config.{key} must be true or false, got {value!r}")
    return value


def adapter(worker: str, config: dict[str, Any], default: str, ephemeral: bool) -> Adapter:
    """Parse ``adapter: <name>`` or ``adapter: {name, config}``; ephemeral runs use memory."""
    raw = config.get("adapter", default)
    if isinstance(raw, str):
        name, options = raw, {}
    elif isinstance(raw, dict):
        name, options = raw.get("name"), raw.get("config") or {}
        if not isinstance(name, str) or not isinstance(options, dict):
            raise ValueError("config.adapter must be a name or {name, config}")
    else:
        raise ValueError("config.adapter must be a name or {name, config}")
    if name in _REFUSED:
        raise ValueError(f"adapter '{name}' is not available in pyiii; use redis to share data "
                         "between engines")
    if name in ("kv", "builtin"):
        method = options.get("store_method")
        name = "sqlite" if method == "file_based" else "memory"
    elif name == "local":
        name = "memory"
    for ignored in ("save_interval_ms", "lock_index"):
        if ignored in options:
            log.warning("%s: adapter option %s is ignored by pyiii", worker, ignored)
    if name not in ADAPTERS:
        raise ValueError(f"config.adapter: unknown adapter '{name}'; accepted: {', '.join(ADAPTERS)}")
    if ephemeral:
        name = "memory"  # --use-default-config writes nothing
    return Adapter(name, options)
