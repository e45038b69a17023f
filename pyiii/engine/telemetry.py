"""Telemetry frames (spec §9): ``LOGS`` records go to the engine log; spans and metrics are dropped.

The official SDKs send OTLP-JSON behind a 4-byte prefix on ``/otel`` (and may on ``/``). pyiii
sends no telemetry anywhere; it only surfaces worker log lines where operators look.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

log = logging.getLogger("pyiii.engine.telemetry")
worker_log = logging.getLogger("pyiii.worker")


def _level(severity: Any) -> int:
    if not isinstance(severity, int) or severity <= 0:
        return logging.INFO
    if severity <= 4:
        return 5  # trace
    if severity <= 8:
        return logging.DEBUG
    if severity <= 12:
        return logging.INFO
    if severity <= 16:
        return logging.WARNING
    return logging.ERROR


def _service_name(resource: Any) -> str | None:
    for attribute in (resource or {}).get("attributes") or []:
        if isinstance(attribute, dict) and attribute.get("key") == "service.name":
            value = attribute.get("value") or {}
            if isinstance(value, dict) and isinstance(value.get("stringValue"), str):
                return value["stringValue"]
    return None


def handle_telemetry(message: bytes) -> None:
    """Handle one prefixed binary frame (``OTLP``, ``LOGS`` or ``MTRC``)."""
    if message[:4] != b"LOGS":
        return
    try:
        document = orjson.loads(message[4:])
        for resource_logs in document.get("resourceLogs") or []:
            service = _service_name(resource_logs.get("resource"))
            for scope_logs in resource_logs.get("scopeLogs") or []:
                for record in scope_logs.get("logRecords") or []:
                    body = record.get("body") or {}
                    text = body.get("stringValue") if isinstance(body, dict) else None
                    if text is None:
                        text = orjson.dumps(body).decode()
                    trace = record.get("traceId")
                    suffix = f" trace_id={trace}" if trace else ""
                    worker_log.log(_level(record.get("severityNumber")), "%s%s", text, suffix,
                                   extra={"component": service or "worker"})
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        log.debug("dropped malformed LOGS frame: %s", exc)
