"""Start a coroutine at once and give it a task only if it has to wait (eager tasks, by hand).

Most handlers answer without waiting on anything (an echo, a lookup, a computation). Giving
each invocation its own task costs a task object, a scheduled callback and a turn of the event
loop before the handler even starts. ``start`` runs the coroutine's first step right away, in a
copy of the current context, with a stand-in registered as the current task (so
``asyncio.timeout``, ``TaskGroup`` and ``current_task()`` work as inside a task); only when the
coroutine waits does it get a real task, which then drives it on and takes over the stand-in's
cancellation calls. Python 3.12's eager task factory does the same natively; this package
supports 3.11.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from asyncio.tasks import (  # type: ignore[attr-defined]
    _current_tasks,
    _enter_task,
    _leave_task,
)
from typing import Any, Callable, Coroutine, Generator

__all__ = ["start"]

log = logging.getLogger("pyiii.sdk")

MAX_DEPTH = 8  # eager steps nested in eager steps (in-process call chains) before tasks


class _Standin:
    """The current task during the eager step; forwards to the real task once there is one."""

    __slots__ = ("task", "depth", "_loop", "_coro", "_cancels", "_cancel_msg")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Any, depth: int) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.depth = depth  # eager steps this one runs inside (in-process call chains)
        self._loop = loop
        self._coro = coro
        self._cancels = 0
        self._cancel_msg: Any = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_coro(self) -> Any:
        return self._coro

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else "pyiii-eager"

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def cancelled(self) -> bool:
        return self.task.cancelled() if self.task is not None else False

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        self._cancels += 1  # delivered as soon as the coroutine waits (or lost if it ends)
        self._cancel_msg = msg
        return True

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else self._cancels

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        if self._cancels > 0:
            self._cancels -= 1
        return self._cancels

    def add_done_callback(self, fn: Callable[..., Any], *, context: Any = None) -> None:
        if self.task is None:
            raise RuntimeError("the eager step of a pyiii handler has no task yet")
        self.task.add_done_callback(fn, context=context)


class _Yield:
    """Hands what the coroutine yielded (a future, or None) to the driving task."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, None]:
        value = self.value
        if value is not None and hasattr(value, "_asyncio_future_blocking"):
            value._asyncio_future_blocking = True
        yield value


async def _drive(coro: Any, yielded: Any, standin: _Standin) -> Any:
    """Continue ``coro``, which yielded ``yielded`` on its first step, as a task would."""
    error: BaseException | None = None
    if standin._cancels:  # cancelled during the eager step: it sees that at its first wait
        error = asyncio.CancelledError(standin._cancel_msg) if standin._cancel_msg is not None \
            else asyncio.CancelledError()
        standin._cancels = 0
    while True:
        if error is None:
            try:
                await _Yield(yielded)
            except BaseException as exc:  # cancellation of this task goes to the coroutine
                error = exc
        try:
            yielded = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        error = None


def start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
          tasks: set[Any]) -> "asyncio.Task[Any] | None":
    """Run ``coro`` (whose result is not needed) now; a task continues it if it waits.
    Returns that task (None: the coroutine already ended); tasks are kept in ``tasks`` until
    they end."""
    outer = _current_tasks.get(loop)
    # an eager step runs inside another one exactly when the current task is a stand-in
    depth = outer.depth + 1 if outer.__class__ is _Standin else 0
    if depth >= MAX_DEPTH:
        return _spawn(loop, loop.create_task(coro), tasks)
    ctx = contextvars.copy_context()
    standin = _Standin(loop, coro, depth)
    if outer is not None:
        _leave_task(loop, outer)
    _enter_task(loop, standin)
    try:
        yielded = ctx.run(coro.send, None)
    except StopIteration:
        return None
    except BaseException:  # what a task would have kept as its exception
        log.exception("pyiii handler task failed")
        return None
    finally:
        _leave_task(loop, standin)
        if outer is not None:
            _enter_task(loop, outer)
    task = loop.create_task(_drive(coro, yielded, standin), context=ctx)
    standin.task = task
    return _spawn(loop, task, tasks)


def _spawn(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any],
           tasks: set[Any]) -> "asyncio.Task[Any]":
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
