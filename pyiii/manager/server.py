"""The `iii` process: the engine for a project, its listeners, resident workers, hot reload and
graceful shutdown.

Run the engine for a project: listeners, resident workers, hot reload, graceful shutdown.

``serve`` is what the ``iii`` command runs (spec/cli.md §1). It owns process-level concerns
(signals, the project's engine lock and ``.iii/engine.json``); everything about frames lives in
:mod:`pyiii.engine.core`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from typing import Any

from .. import __version__
from ..engine.config import ConfigError, ProjectConfig, default_config, load_config
from ..engine.core import Engine, EngineSettings
from ..engine.listener import Listener, ListenerConfig
from ..engine.logs import setup_logging
from ..engine.reload import ConfigWatcher
from .project import EngineLock, ProjectBusy
from .resident import WorkerSet

log = logging.getLogger("pyiii.engine")

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0


def _listener_configs(project: ProjectConfig) -> list[ListenerConfig]:
    return [ListenerConfig(host=item.host, port=item.port,
                           handshake_timeout_ms=item.handshake_timeout_ms, rbac=item.rbac,
                           middleware_function_id=item.middleware_function_id)
            for item in project.listeners()]


def _http_security(project: ProjectConfig) -> dict[str, Any]:
    entry = project.worker("iii-http-functions")
    security = entry.config.get("security") if entry else None
    return security if isinstance(security, dict) else {}


class Server:
    def __init__(self, options: Any) -> None:
        self.options = options
        self.project: ProjectConfig | None = None
        self.engine: Engine | None = None
        self.listeners: list[Listener] = []
        self.workers: WorkerSet | None = None
        self.lock: EngineLock | None = None
        self.watcher: ConfigWatcher | None = None
        self.stop_requested = asyncio.Event()
        self.signals = 0

    def _load(self) -> ProjectConfig:
        if self.options.use_default_config:
            return default_config(os.environ)
        return load_config(self.options.config_path)

    async def run(self) -> int:
        try:
            self.project = self._load()
        except ConfigError as exc:
            sys.stderr.write(f"error: {exc}\n")  # the CLI's error format (cli.md §1.1)
            return 1
        for warning in self.project.warnings:
            log.warning("%s", warning)
        if not self.options.use_default_config:
            self.lock = EngineLock(self.project.project_dir)
            try:
                self.lock.acquire()
            except ProjectBusy as exc:
                log.error("another engine is already running for this project (%s)", exc)
                return 1
        try:
            return await self._serve()
        finally:
            if self.lock is not None:
                self.lock.release()

    async def _serve(self) -> int:
        project = self.project
        assert project is not None
        self._install_signals()  # first: a signal during startup still shuts down cleanly
        grace = os.environ.get("III_NAMESPACE_GRACE_MS")
        settings = EngineSettings(http_security=_http_security(project))
        if grace and grace.isdigit():
            settings.namespace_grace_ms = int(grace)
        engine = self.engine = Engine(settings)
        engine.start()
        configs = _listener_configs(project)
        try:
            for config in configs:
                listener = Listener(engine, config)
                await listener.start()
                self.listeners.append(listener)
        except OSError as exc:
            main = configs[0]
            if exc.errno == errno.EADDRINUSE:
                log.error("cannot listen on %s:%d: address already in use — is another engine "
                          "running? set config.port of iii-worker-manager", main.host, main.port)
            else:
                log.error("cannot listen on %s:%d: %s", main.host, main.port, exc.strerror or exc)
            await self._close_listeners()
            await engine.stop()
            return 1
        port = self.listeners[0].port
        url = f"ws://127.0.0.1:{port}"
        if self.lock is not None:
            self.lock.publish(url, project.config_path)
        where = project.config_path or "default configuration, nothing written"
        log.info("iii %s listening on %s (config: %s)", __version__, url, where)
        self.workers = WorkerSet(engine, project, ephemeral=self.options.use_default_config,
                                 engine_url=url)
        if not self.options.use_default_config and not self.options.no_reload:
            assert project.config_path is not None
            # watching starts before the workers do, so an edit saved meanwhile is applied
            self.watcher = ConfigWatcher(project.config_path, self._reload)
            self.watcher.start()
        await self.workers.apply(project)
        log.info("ready (%d workers)", self.workers.running_count())
        await self.stop_requested.wait()
        return await self._shutdown()

    async def _reload(self) -> None:
        try:
            project = self._load()
        except ConfigError as exc:
            log.error("error: %s — keeping the running configuration", exc)
            if self.workers is not None:
                self.workers.config_error = str(exc)
            return
        assert self.workers is not None
        if self.workers.config_error is not None:
            log.info("config.yaml is valid again")
            self.workers.config_error = None
        self.project = project
        await self.workers.apply(project)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)

    def _on_signal(self) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("shutting down")
            self.stop_requested.set()
        else:
            log.warning("second signal: stopping now")
            os._exit(130)

    async def _shutdown(self) -> int:
        engine = self.engine
        assert engine is not None
        if self.watcher is not None:
            self.watcher.stop()
        for listener in self.listeners:
            listener.stop_accepting()
        timeout = float(os.environ.get("III_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT_S))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while engine.router.legs and loop.time() < deadline:
            await asyncio.sleep(0.02)  # in-flight calls finish; their callers get answers
        await self._close_listeners()
        if self.workers is not None:
            await self.workers.stop_all()
        await engine.stop()
        return 0

    async def _close_listeners(self) -> None:
        await asyncio.gather(*(listener.close() for listener in self.listeners),
                             return_exceptions=True)


async def serve(options: Any) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    level = options.log_level or os.environ.get("III_LOG_LEVEL") or "info"
    setup_logging(level, options.log_format or "text")
    return await Server(options).run()
