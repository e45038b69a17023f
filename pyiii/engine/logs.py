"""Engine log lines on stderr: ``<UTC time> LEVEL <component>: <message>`` or JSON lines.

Worker log records (``engine::log::*`` calls and ``LOGS`` telemetry frames) also go through
:func:`worker_record`, which hands a structured copy to whoever subscribed to :data:`FEED`.
That feed is the only thing the engine offers a log store: it knows nothing about the
worker (``iii-observability``) that keeps the records.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
_NAMES = {TRACE: "TRACE", logging.DEBUG: "DEBUG", logging.INFO: "INFO",
          logging.WARNING: "WARN", logging.ERROR: "ERROR", logging.CRITICAL: "ERROR"}
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}
# OpenTelemetry severity of each engine level: (severity_number, severity_text)
SEVERITIES = {TRACE: (1, "TRACE"), logging.DEBUG: (5, "DEBUG"), logging.INFO: (9, "INFO"),
              logging.WARNING: (13, "WARN"), logging.ERROR: (17, "ERROR")}

worker_log = logging.getLogger("pyiii.worker")
log = logging.getLogger("pyiii.engine.logs")


def _component(record: logging.LogRecord) -> str:
    component = getattr(record, "component", None)
    if component:
        return str(component)
    name = record.name
    return name[len("pyiii."):] if name.startswith("pyiii.") else name


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = _NAMES.get(record.levelno, record.levelname)
        line = f"{_timestamp(record)} {level:<5} {_component(record)}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {"time": _timestamp(record), "level": _NAMES.get(record.levelno, "INFO"),
                    "component": _component(record), "message": record.getMessage()}
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)


# which of level / format the command line (or III_LOG_LEVEL) fixed; the rest may come from
# the iii-observability entry (spec/cli.md §1.7)
_chosen = {"level": False, "format": False}


def _our_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if getattr(h, "_pyiii", False)), None)


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Install the engine's stderr handler. ``None`` for ``level`` or ``fmt`` means "not chosen
    by the user": the default applies until the ``iii-observability`` entry sets one."""
    _chosen["level"], _chosen["format"] = level is not None, fmt is not None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._pyiii = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # replace only our own earlier handler: others (a host application, test capture) stay
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_pyiii", False)] + [handler]
    root.setLevel(LEVELS.get((level or "info").lower(), logging.INFO))
    # the websockets library logs every handshake at INFO; keep only its problems
    logging.getLogger("pyiii.engine.websockets").setLevel(logging.WARNING)


def apply_entry_settings(level: str | None, fmt: str | None) -> None:
    """Apply the ``iii-observability`` entry's ``level`` / ``format`` (``default`` = text) to the
    engine log, except what the command line fixed. Does nothing when the engine's handler is
    not installed (the engine embedded in another program keeps that program's logging)."""
    handler = _our_handler()
    if handler is None:
        return
    if fmt is not None and not _chosen["format"]:
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if level is not None and not _chosen["level"]:
        logging.getLogger().setLevel(LEVELS.get(level.lower(), logging.INFO))


# -- worker log records -------------------------------------------------------------------

RecordListener = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class Subscription:
    """One listener of the record feed. ``echo = False`` asks that worker records are no longer
    printed on the engine log (they still reach every listener)."""

    listener: RecordListener
    echo: bool = True
    feed: "RecordFeed | None" = field(default=None, repr=False)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.unsubscribe(self)
            self.feed = None


class RecordFeed:
    """Structured copies of worker log records, handed synchronously to each subscriber."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: RecordListener, echo: bool = True) -> Subscription:
        subscription = Subscription(listener, echo, self)
        with self._lock:
            self._subscriptions = [*self._subscriptions, subscription]
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    @property
    def echo(self) -> bool:
        return all(s.echo for s in self._subscriptions)

    def publish(self, record: dict[str, Any]) -> None:
        for subscription in self._subscriptions:
            try:
                subscription.listener(record)
            except Exception:  # a broken listener must not stop logging
                log.exception("log record listener failed")


FEED = RecordFeed()


def severity_of(level: int) -> tuple[int, str]:
    """The OpenTelemetry severity of an engine level (the nearest lower bucket)."""
    for bucket in (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG):
        if level >= bucket:
            return SEVERITIES[bucket]
    return SEVERITIES[TRACE]


def worker_record(level: int, body: str, *, component: str, service_name: str | None = None,
                  attributes: Any = None, trace_id: str | None = None,
                  span_id: str | None = None, timestamp_unix_nano: int | None = None,
                  line: str | None = None) -> dict[str, Any]:
    """Write one worker record to the engine log (``line``, default ``body``, under
    ``component``) and publish its structured form to :data:`FEED`; returns that form."""
    number, text = severity_of(level)
    if attributes is None:
        attributes = {}
    elif not isinstance(attributes, dict):
        attributes = {"data": attributes}
    record = {"timestamp_unix_nano": timestamp_unix_nano or time.time_ns(),
              "severity_number": number, "severity_text": text, "body": body,
              "attributes": attributes, "trace_id": trace_id, "span_id": span_id,
              "service_name": service_name}
    if FEED.echo:
        worker_log.log(level, "%s", body if line is None else line,
                       extra={"component": component})
    FEED.publish(record)
    return record
