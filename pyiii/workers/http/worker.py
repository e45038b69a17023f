"""iii-http: the REST front door. Serves HTTP and turns each request that matches an ``http``
binding into an invocation of the bound function (spec/workers.md §3)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Coroutine

from aiohttp import web

from ...sdk import III, TriggerConfig, TriggerHandler, register_worker
from ..base import WorkerContext, go_live
from . import pipeline
from .config import HttpSettings, parse_settings
from .routing import RouteTable
from .server import Limiter, Listener

log = logging.getLogger("pyiii.workers.http")


class HttpBindings(TriggerHandler[Any]):
    """The ``http`` trigger type: bindings become routes (refusals reach the registrant)."""

    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes

    def register_trigger(self, config: TriggerConfig[Any]) -> None:
        route = self.routes.add(config)
        log.debug("http route %s %s -> %s", route.method, route.display, config.function_id)

    def unregister_trigger(self, config: TriggerConfig[Any]) -> None:
        self.routes.remove(config.id)


class HttpWorker:
    def __init__(self, iii: III, settings: HttpSettings, ctx: WorkerContext) -> None:
        self.iii = iii
        # the loop it serves on (made in ``start``): asyncio.get_running_loop() per request
        # costs a getpid system call
        self.loop = asyncio.get_running_loop()
        self.hub = iii.channel_hub  # the engine's channel hub when in its process, else None
        self.settings = settings
        self.ctx = ctx
        self.routes = RouteTable()
        self.limiter = Limiter(settings.concurrency_request_limit)
        # the listener calls the pipeline directly: no coroutine layer per request
        self.listener = Listener(functools.partial(pipeline.handle, self))
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int | None:
        """The bound port (useful with ``port: 0``)."""
        return self.listener.port

    @property
    def host(self) -> str | None:
        return self.listener.host

    def register(self) -> None:
        self.iii.register_trigger_type(
            {"id": "http", "description": "Serves an HTTP route by invoking the bound function"},
            HttpBindings(self.routes))

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        return await pipeline.handle(self, request)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- lifecycle --------------------------------------------------------------------------

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Live keys apply to the next request; a new host/port is bound first and the old
        listener closes only once that worked (a failed bind raises ``ValueError``, so the
        engine keeps the old configuration)."""
        new = parse_settings(config)
        same_port = new.port in (self.settings.port, self.listener.port)
        if new.host != self.listener.host or not same_port:
            try:
                await self.listener.rebind(new.host, new.port)
            except OSError as exc:
                log.error("iii-http: cannot bind %s:%s (%s); still serving on %s:%s",
                          new.host, new.port, exc, self.listener.host, self.listener.port)
                raise ValueError(f"cannot bind {new.host}:{new.port}: {exc}") from exc
        self.limiter.set_limit(new.concurrency_request_limit)
        self.settings = new

    async def stop(self) -> None:
        await self.listener.close()
        for task in list(self.tasks):
            task.cancel()
        await self.iii.shutdown_async()


async def start(ctx: WorkerContext) -> HttpWorker:
    settings = parse_settings(ctx.config)
    iii = register_worker(ctx.url, ctx.sdk_options())
    worker = HttpWorker(iii, settings, ctx)
    try:
        await worker.listener.start(settings.host, settings.port)
    except OSError as exc:
        await iii.shutdown_async()
        raise ValueError(f"config.port: cannot listen on {settings.host}:{settings.port}: "
                         f"{exc}") from exc
    return await go_live(worker)
