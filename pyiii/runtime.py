"""How long-running pyiii processes run (the engine, first-party workers in their own process):
the event loop they use and their garbage-collector settings.

**Event loop.** uvloop (libuv) when it is installed, which it is with pyiii on Linux and macOS:
every message costs a system call or two and a turn of the loop, and libuv's loop does that
part several times cheaper than the standard one (hub round trip at concurrency 1: 3.2k ->
4.4k calls/s with only the engine on uvloop, docs/benchmarks.md). ``PYIII_LOOP=asyncio``
chooses the standard loop. pyiii.sdk never replaces the loop of the program it runs in: a
client built inside a running loop uses that loop; a client built in a plain script runs its
own loop in a background thread, and that one is chosen here too. ``pyiii.sdk.run`` is ``run``
for worker programs that want the same loop.

**Garbage collector.** CPython's cyclic collector walks every tracked object of the generation it collects. A process
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

import asyncio
import gc
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "new_event_loop", "loop_name", "running_loop_name", "tune_for_serving",
           "YOUNG_THRESHOLD"]

T = TypeVar("T")

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


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop ``run`` uses in this environment."""
    if os.environ.get("PYIII_LOOP", "").lower() == "asyncio":
        return "asyncio"
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the kind ``loop_name`` names."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``loop_name`` names."""
    if loop_name() == "uvloop":
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)  # exactly the standard behaviour (it also sets the current loop)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop this code runs on (for the start-up log)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") \
        else "asyncio"
