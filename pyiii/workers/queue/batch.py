"""Group commit for a SQLite connection used from one event loop.

Every write step asked for during one event-loop turn (enqueues arriving together, the acks
of jobs that finished together, the claim that refills the freed slots) runs in ONE
``BEGIN IMMEDIATE`` … ``COMMIT``; each caller resumes only after that commit, so a step that
has returned is durable exactly as with one transaction per step. One commit per turn instead
of one per step is what lets a queue on SQLite move thousands of jobs a second.

If a step raises, the shared transaction is rolled back and every step of the group runs
again alone, each in its own transaction, so one bad step never undoes the others. Steps are
plain functions of the database state, so running one again after a rollback is safe.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, Callable

Step = Callable[[], Any]


class GroupCommit:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.pending: list[tuple[Step, asyncio.Future[Any]]] = []
        self.scheduled = False
        self.commits = 0  # groups committed, and steps in them: the mean group size
        self.steps = 0

    def run(self, body: Step) -> asyncio.Future[Any]:
        """Schedule ``body`` (synchronous, uses ``self.db``) in the next group transaction."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((body, future))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        self.scheduled = False
        steps, self.pending = self.pending, []
        if not steps:
            return
        try:
            values = self._transaction([body for body, _ in steps])
        except Exception as exc:
            if len(steps) == 1:
                _settle(steps[0][1], exc)
                return
            for body, future in steps:  # find the bad step: each alone
                try:
                    value = self._transaction([body])[0]
                except Exception as alone:
                    _settle(future, alone)
                else:
                    _settle(future, None, value)
            return
        self.commits += 1
        self.steps += len(steps)
        for (_, future), value in zip(steps, values):
            _settle(future, None, value)

    def _transaction(self, bodies: list[Step]) -> list[Any]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            values = [body() for body in bodies]
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return values


def _settle(future: asyncio.Future[Any], exc: BaseException | None, value: Any = None) -> None:
    if future.done():  # the caller was cancelled; a committed step stays committed
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


