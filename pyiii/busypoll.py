"""Busy polling: for a short window after a WebSocket message, the event loop asks the kernel
for more without going to sleep.

A call through the hub wakes four sleeping processes in turn (engine, worker, engine, caller).
Waking a process that sleeps in ``epoll_wait`` costs the kernel a scheduler wake-up and, with
the other core idle, an interrupt to that core: on the 2-core VM of docs/benchmarks.md a bare
Python TCP ping-pong takes 54 µs per round trip when both sides sleep and 8 µs when both
poll. Between messages that follow each other closely (a reply on its way, the next call of a
busy caller) it is cheaper to keep asking.

While the window is open the loop never blocks, and between two polls it gives the CPU away
with ``sched_yield``, so a process with real work on this core runs first (without it, three
polling processes on two cores took turns in whole scheduler slices and a 3-process
ping-pong stalled). How the loop polls depends on the loop:

- the standard loop's selector is wrapped, so a ``select`` that would block first polls the
  kernel with a zero timeout until the window closes (or the loop's next timer is due): one
  system call per poll, nothing else;
- uvloop's poll is out of reach, so a callback re-queues itself and each turn of the loop
  polls with a zero timeout.

The window closes ``window`` after the last message read or written; then the loop sleeps
as usual. An idle process costs nothing. A process with messages further apart than the
window pays up to ``window`` of CPU time per message: engine, caller and worker together
went from 22 % to 38 % of a core at 1,000 calls/s, for a hub p50 of 62 µs instead of
145 µs (docs/benchmarks.md).

``PYIII_BUSY_POLL_US`` sets the window in microseconds (at most 10,000); 0 turns busy polling
off.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import weakref
from typing import Any

__all__ = ["ENV", "DEFAULT_WINDOW_US", "MAX_WINDOW_US", "parse_window_us", "window_s",
           "set_window_s", "touch", "polling"]

ENV = "PYIII_BUSY_POLL_US"
# Long enough to cover the wait for a reply through the engine (60-120 µs at concurrency 1),
# short enough that a process seeing 1,000 calls a second spends about 6 % of a core on it.
# Off where the OS cannot give the CPU away between polls (no sched_yield).
DEFAULT_WINDOW_US = 100 if hasattr(os, "sched_yield") else 0

MAX_WINDOW_US = 10_000  # longer windows only burn CPU: no reply takes that long to arrive

log = logging.getLogger("pyiii.busypoll")


def parse_window_us(raw: str | None) -> float:
    """The window in seconds for an ``ENV`` value: unset or empty gives the default, a
    negative number 0 (off); anything else that is not a number is reported and ignored."""
    text = (raw or "").strip()
    if not text:
        return DEFAULT_WINDOW_US / 1e6
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        log.warning("%s=%r is not a number of microseconds; using %d", ENV, raw, DEFAULT_WINDOW_US)
        return DEFAULT_WINDOW_US / 1e6
    if value > MAX_WINDOW_US:
        log.warning("%s=%r is above the %d µs maximum; using %d", ENV, raw, MAX_WINDOW_US,
                    MAX_WINDOW_US)
        value = MAX_WINDOW_US
    return max(0.0, value) / 1e6


_window = parse_window_us(os.environ.get(ENV))
_clock = time.perf_counter
_yield = getattr(os, "sched_yield", lambda: None)  # only reached with a window set explicitly


def window_s() -> float:
    """The busy-poll window in seconds (0.0: off)."""
    return _window


def set_window_s(seconds: float) -> None:
    """Change the window for this process (``ENV`` sets it at start-up, capped at
    ``MAX_WINDOW_US``; tests use longer windows here to observe it)."""
    global _window
    if not math.isfinite(seconds):
        raise ValueError(f"the busy-poll window must be a finite number of seconds, not {seconds}")
    _window = max(0.0, seconds)


class _Spinner:
    """The polling of one loop. Holds the loop weakly: the table below maps loops to spinners
    with weak keys, and a strong reference back would keep every loop alive."""

    __slots__ = ("loop_ref", "until", "armed", "in_selector", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref = weakref.ref(loop)
        self.until = 0.0
        self.armed = False  # the re-queued callback is running (uvloop)
        self.in_selector = False  # the loop's selector polls (standard loop)

    def spin(self) -> None:
        loop = self.loop_ref()
        if loop is not None and _clock() < self.until:
            _yield()
            loop.call_soon(self.spin)
        else:
            self.armed = False


class _PollingSelector:
    """A selector whose blocking ``select`` polls until the spinner's window closes."""

    def __init__(self, inner: Any, spinner: _Spinner) -> None:
        self._inner = inner
        self._spinner = spinner
        # the loop calls these directly; bound once instead of looked up through __getattr__
        self.register, self.unregister, self.modify = inner.register, inner.unregister, inner.modify
        self.get_key, self.get_map, self.close = inner.get_key, inner.get_map, inner.close

    def select(self, timeout: float | None = None) -> Any:
        inner = self._inner
        if timeout is None or timeout > 0:
            start = _clock()
            stop = self._spinner.until
            if timeout is not None and start + timeout < stop:
                stop = start + timeout  # a timer is due first: wake for it on time
            if start < stop:
                while True:
                    events = inner.select(0)
                    if events:
                        return events
                    now = _clock()
                    if now >= stop:
                        break
                    _yield()
                if timeout is not None:
                    timeout = max(0.0, timeout - (now - start))
        return inner.select(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_spinners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Spinner] = weakref.WeakKeyDictionary()
_last: _Spinner | None = None  # a process has one loop in practice: skip the table lookup


def _spinner_of(loop: asyncio.AbstractEventLoop) -> _Spinner | None:
    last = _last
    if last is not None and last.loop_ref() is loop:
        return last
    return _spinners.get(loop)


def _new_spinner(loop: asyncio.AbstractEventLoop) -> _Spinner:
    spinner = _spinners[loop] = _Spinner(loop)
    selector = getattr(loop, "_selector", None)  # asyncio's selector loops (private, stable)
    if selector is not None and callable(getattr(selector, "select", None)):
        loop._selector = _PollingSelector(selector, spinner)  # type: ignore[attr-defined]
        spinner.in_selector = True
    return spinner


def touch(loop: asyncio.AbstractEventLoop) -> None:
    """A message was read or written on ``loop``: keep it polling for the next window."""
    global _last
    if not _window:
        return
    spinner = _spinner_of(loop) or _new_spinner(loop)
    _last = spinner
    spinner.until = _clock() + _window
    if not spinner.armed and not spinner.in_selector and not loop.is_closed():
        spinner.armed = True
        loop.call_soon(spinner.spin)


def polling(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is inside a busy-poll window now."""
    spinner = _spinner_of(loop)
    return spinner is not None and _clock() < spinner.until
