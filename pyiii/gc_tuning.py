"""Garbage-collector settings for long-running pyiii processes (the engine, first-party workers).

CPython's cyclic collector walks every tracked object of the generation it collects. A process
that has imported aiohttp, websockets and redis holds a few hundred thousand such objects, so
each full collection stops the event loop for milliseconds: with the defaults, HTTP requests
routed to a handler in a worker process had a p99 of 13 ms at 32 connections, against 4.5 ms
with this tuning (`benchmarks/http_trigger.py`, docs/benchmarks.md). Two changes, made once the
process has started:

- ``gc.freeze()`` moves everything alive at that point (modules, classes, configuration) to
  the permanent generation, which later collections skip;
- the young generation is collected after ``YOUNG_THRESHOLD`` allocations instead of 700, so
  the short-lived frames and payloads of calls are mostly freed by reference counting before
  a collection ever looks at them.

Cyclic garbage is still collected, only less often; a process that wants the interpreter's
defaults sets ``PYIII_GC_DEFAULTS=1``.
"""

from __future__ import annotations

import gc
import os

__all__ = ["tune_for_serving", "YOUNG_THRESHOLD"]

YOUNG_THRESHOLD = 50_000
MIDDLE_THRESHOLD = 20  # young collections per middle-generation collection
OLD_THRESHOLD = 100  # middle collections per full collection (CPython adds its 25 % rule)


def tune_for_serving() -> bool:
    """Apply the settings above (once start-up is done); False when ``PYIII_GC_DEFAULTS``
    asks for the interpreter's defaults."""
    if os.environ.get("PYIII_GC_DEFAULTS") == "1":
        return False
    gc.collect()  # start-up garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    return True
