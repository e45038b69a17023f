"""Telemetry frames (spec §9): ``LOGS`` records go to the engine log; spans and metrics are dropped.

The official SDKs send OTLP-JSON behind a 4-byte prefix on ``/otel`` (and may on ``/``). pyiii
sends no telemetry anywhere; it only surfaces worker log records where operators look: the
engine log, and (through :func:`pyiii.engine.logs.worker_record`) any log store listening.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import orjson

from .logs import LEVELS, TRACE, worker_record

log = logging.getLogger("pyiii.engine.telemetry")


def _level(severity: Any, text: Any) -> int:
    if not isinstance(severity, int) or isinstance(severity, bool) or severity <= 0:
        # no number: a recognisable severityText still says how bad it is
        return LEVELS.get(text.lower(), logging.INFO) if isinstance(text, str) else logging.INFO
    if severity <= 4:
        return TRACE
    if severity <= 8:
        return logging.DEBUG
    if severity <= 12:
        return logging.INFO
    if severity <= 16:
        return logging.WARNING
    return logging.ERROR


def any_value(value: Any) -> Any:
    """An OTLP-JSON ``AnyValue`` as plain JSON (``intValue`` arrives as a string)."""
    if not isinstance(value, dict):
        return value
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "intValue" in value:
        try:
            return int(value["intValue"])
        except (TypeError, ValueError):
            return value["intValue"]
    if "doubleValue" in value:
        return value["doubleValue"]
    if "arrayValue" in value:
        return [any_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return attributes((value["kvlistValue"] or {}).get("values"))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes(items: Any) -> dict[str, Any]:
    """OTLP ``[{key, value}]`` attributes as a mapping."""
    out: dict[str, Any] = {}
    for item in items or []:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            out[item["key"]] = any_value(item.get("value"))
    return out


def _nanos(record: dict[str, Any]) -> int | None:
    for key in ("timeUnixNano", "observedTimeUnixNano"):
        try:
            value = int(record.get(key) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def log_records(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Keyword arguments of :func:`worker_record` for every record of a ``LOGS`` payload."""
    for resource_logs in document.get("resourceLogs") or []:
        resource = attributes((resource_logs.get("resource") or {}).get("attributes"))
        service = resource.get("service.name")
        service = service if isinstance(service, str) else None
        for scope_logs in resource_logs.get("scopeLogs") or []:
            for record in scope_logs.get("logRecords") or []:
                body = any_value(record.get("body") or {})
                text = body if isinstance(body, str) else orjson.dumps(body).decode()
                trace = _text(record.get("traceId"))
                yield {"level": _level(record.get("severityNumber"), record.get("severityText")),
                       "body": text, "component": service or "worker", "service_name": service,
                       "attributes": attributes(record.get("attributes")), "trace_id": trace,
                       "span_id": _text(record.get("spanId")),
                       "timestamp_unix_nano": _nanos(record),
                       "line": f"{text} trace_id={trace}" if trace else text}


def handle_telemetry(message: bytes) -> None:
    """Handle one prefixed binary frame (``OTLP``, ``LOGS`` or ``MTRC``)."""
    if message[:4] != b"LOGS":
        return
    try:
        records = list(log_records(orjson.loads(message[4:])))
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        log.debug("dropped malformed LOGS frame: %s", exc)
        return
    for record in records:
        worker_record(**record)
