"""Engine log lines on stderr: ``<UTC time> LEVEL <component>: <message>`` or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
_NAMES = {TRACE: "TRACE", logging.DEBUG: "DEBUG", logging.INFO: "INFO",
          logging.WARNING: "WARN", logging.ERROR: "ERROR", logging.CRITICAL: "ERROR"}
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}


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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._pyiii = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # replace only our own earlier handler: others (a host application, test capture) stay
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_pyiii", False)] + [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    # the websockets library logs every handshake at INFO; keep only its problems
    logging.getLogger("pyiii.engine.websockets").setLevel(logging.WARNING)
