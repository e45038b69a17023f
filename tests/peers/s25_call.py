#!/usr/bin/env python3
"""One-shot caller using the official Python SDK (iii-sdk 0.25).

Usage: s25_call.py '<json>'  (or env PEER_SPEC); engine URL from III_URL or "url".
JSON: {"function_id", "payload"?, "namespace"? (target), "timeout_ms"?, "metadata"?,
       "action"? ({"type":"void"} | {"type":"enqueue","queue":...}),
       "worker_name"?, "worker_namespace"?, "otel"?}
Prints one JSON line: {"result": ...} or {"error": {"code","message","stacktrace"}}; exit 0.
Exit 2 (with a message on stderr) if the engine cannot be reached.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
import warnings

SPEC = json.loads((sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PEER_SPEC")) or "{}")
os.environ["OTEL_ENABLED"] = "true" if SPEC.get("otel") else "false"
warnings.simplefilter("ignore", DeprecationWarning)

import logging  # noqa: E402

logging.basicConfig(level=os.environ.get("PEER_LOG_LEVEL", "WARNING"), stream=sys.stderr)

from iii import InitOptions, InvocationError, register_worker  # noqa: E402


def main() -> int:
    url = SPEC.get("url") or os.environ.get("III_URL") or "ws://127.0.0.1:49134"
    opts = InitOptions(
        worker_name=SPEC.get("worker_name") or f"s25-call-{os.getpid()}",
        namespace=SPEC.get("worker_namespace"),
    )
    worker = register_worker(url, opts)
    if worker.get_connection_state() != "connected":
        sys.stderr.write(f"s25_call: could not connect to {url}\n")
        os._exit(2)
    req = {"function_id": SPEC["function_id"], "payload": SPEC.get("payload")}
    for key in ("namespace", "timeout_ms", "metadata", "action"):
        if SPEC.get(key) is not None:
            req[key] = SPEC[key]
    try:
        out = {"result": worker.trigger(req)}
    except Exception as exc:  # noqa: BLE001
        out = {
            "error": {
                "code": getattr(exc, "code", None) or type(exc).__name__,
                "message": getattr(exc, "message", None) or str(exc),
                "stacktrace": (exc.stacktrace if isinstance(exc, InvocationError) else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))),
            }
        }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    t = threading.Thread(target=worker.shutdown, daemon=True)
    t.start()
    t.join(3)
    os._exit(0)


if __name__ == "__main__":
    main()
