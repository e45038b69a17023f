"""iii-http configuration (spec/workers.md §3.1): validation of the ``config:`` block.

Errors are ``ValueError`` naming the key; the engine refuses the block (at startup the worker
does not start, on reload the old configuration stays).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .. import settings

log = logging.getLogger("pyiii.workers.http")

WORKER = "iii-http"
ACCEPTED = ("port", "host", "default_timeout", "concurrency_request_limit", "cors", "middleware",
            "body_limit")
IGNORED = ("trust_proxy", "request_id_header", "ignore_trailing_slash", "not_found_function")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")

DEFAULT_PORT = 3111
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT_MS = 30000
DEFAULT_CONCURRENCY = 1024
DEFAULT_BODY_LIMIT = 10 * 1024 * 1024


@dataclass(frozen=True)
class Cors:
    """``None`` in a field means "any" (no block, an empty list or a list holding ``*``)."""

    origins: frozenset[str] | None = None
    methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Middleware:
    function_id: str
    phase: str = "preHandler"
    priority: int = 0


@dataclass(frozen=True)
class HttpSettings:
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    default_timeout: int = DEFAULT_TIMEOUT_MS
    concurrency_request_limit: int = DEFAULT_CONCURRENCY
    cors: Cors | None = None
    middleware: tuple[Middleware, ...] = field(default_factory=tuple)
    body_limit: int = DEFAULT_BODY_LIMIT

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def _string_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"config.cors.{key} must be a list of strings, got {value!r}")
    return value


def parse_cors(value: Any) -> Cors | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("config.cors must be a mapping {allowed_origins, allowed_methods}")
    for key in value:
        if key not in ("allowed_origins", "allowed_methods"):
            raise ValueError(f"unknown key config.cors.{key}; accepted: allowed_origins, "
                             "allowed_methods")
    origins = _string_list(value.get("allowed_origins"), "allowed_origins")
    methods = _string_list(value.get("allowed_methods"), "allowed_methods")
    return Cors(
        origins=None if not origins or "*" in origins else frozenset(origins),
        methods=None if not methods or "*" in methods else tuple(m.upper() for m in methods),
    )


def parse_middleware(value: Any) -> tuple[Middleware, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("config.middleware must be a list of {function_id, phase, priority}")
    found: list[Middleware] = []
    for index, item in enumerate(value):
        where = f"config.middleware[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a mapping {{function_id, phase, priority}}")
        for key in item:
            if key not in ("function_id", "phase", "priority"):
                raise ValueError(f"unknown key {where}.{key}; accepted: function_id, phase, "
                                 "priority")
        function_id = item.get("function_id")
        if not isinstance(function_id, str) or not function_id:
            raise ValueError(f"{where}.function_id must be a non-empty string")
        phase = item.get("phase", "preHandler")
        if phase != "preHandler":
            raise ValueError(f"{where}.phase must be 'preHandler', got {phase!r}")
        priority = item.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"{where}.priority must be an integer, got {priority!r}")
        found.append(Middleware(function_id, phase, priority))
    # ascending priority; sorted() is stable, so ties keep config order
    return tuple(sorted(found, key=lambda m: m.priority))


def parse_settings(config: dict[str, Any] | None) -> HttpSettings:
    config = {} if config is None else config
    settings.check_keys(WORKER, config, ACCEPTED, IGNORED)
    port = settings.integer(config, "port", DEFAULT_PORT, minimum=0)
    assert port is not None
    if port > 65535:
        raise ValueError(f"config.port must be an integer between 0 and 65535, got {port}")
    host = config.get("host", DEFAULT_HOST)
    if not isinstance(host, str) or not host:
        raise ValueError(f"config.host must be a non-empty string, got {host!r}")
    timeout = settings.integer(config, "default_timeout", DEFAULT_TIMEOUT_MS, minimum=1)
    limit = settings.integer(config, "concurrency_request_limit", DEFAULT_CONCURRENCY, minimum=0)
    if limit == 0:
        log.warning("%s: config.concurrency_request_limit 0 is raised to 1", WORKER)
        limit = 1
    body_limit = settings.integer(config, "body_limit", DEFAULT_BODY_LIMIT, minimum=0)
    assert timeout is not None and limit is not None and body_limit is not None
    return HttpSettings(port=port, host=host, default_timeout=timeout,
                        concurrency_request_limit=limit, cors=parse_cors(config.get("cors")),
                        middleware=parse_middleware(config.get("middleware")),
                        body_limit=body_limit)
