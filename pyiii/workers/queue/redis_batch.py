"""Script calls of one event-loop turn sent to Redis as one pipeline.

The Redis counterpart of ``batch.GroupCommit``: the enqueues that arrived together, the acks
of jobs that finished together and the claim refilling their slots go out as one round trip
(``EVALSHA`` each, not a transaction: every script is atomic on its own), and each caller
resumes with its own script's answer or error. Scripts are loaded once; after a Redis restart
(``NOSCRIPT``) they are loaded again and the calls that failed are sent once more.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from ...storage.redis_link import guarded

Call = tuple[str, list[str], list[Any], "asyncio.Future[Any]"]


class ScriptPipeline:
    def __init__(self, client: aioredis.Redis, scripts: dict[str, str]) -> None:
        self.client = client
        self.sources = scripts
        self.shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in scripts.items()}
        self.pending: list[Call] = []
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def call(self, name: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((name, keys, args, future))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self.scheduled = False
        calls, self.pending = self.pending, []
        if calls:
            task = asyncio.ensure_future(self._send(calls))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, calls: list[Call], reloaded: bool = False) -> None:
        try:
            results = await guarded(self._execute(calls))
        except Exception as exc:  # the whole round trip failed (e.g. redis unavailable)
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        again = []
        for call, result in zip(calls, results):
            future = call[3]
            if future.done():
                continue
            if isinstance(result, NoScriptError) and not reloaded:
                again.append(call)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if again:
            try:
                for src in self.sources.values():
                    await guarded(self.client.script_load(src))
            except Exception as exc:
                for *_, future in again:
                    if not future.done():
                        future.set_exception(exc)
                return
            await self._send(again, reloaded=True)

    async def _execute(self, calls: list[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for name, keys, args, _ in calls:
            pipe.evalsha(self.shas[name], len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def close(self) -> None:
        self._flush()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
