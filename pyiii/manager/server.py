"""The `iii` process: the engine for a project, its listeners, the supervisor of its declared
workers, hot reload and graceful shutdown.

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
from contextlib import nullcontext
from typing import Any

from .. import __version__
from ..engine.config import ConfigError, ProjectConfig, WorkerEntry, default_config, load_config
from ..engine.core import Engine, EngineSettings
from ..engine.listener import Listener, ListenerConfig, apply_listener_configs
from ..engine.logs import setup_logging
from ..runtime import running_loop_name, tune_for_serving
from ..engine.reload import ConfigWatcher
from .child import StartError
from .project import EngineLock, ProjectBusy
from .resident import start_in_process
from .functions import register_worker_functions
from .lockfile import read_lock
from .registry.errors import ManagerError
from .transaction import TransactionError, commit_lock, recover
from .sandbox import probe
from .supervisor import Supervisor, stop_leftovers

log = logging.getLogger("pyiii.engine")

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
# config.yaml (W131), iii.lock (W132), or a commit holding .iii/commit.lock for too long
LOAD_ERRORS = (ConfigError, ManagerError, TransactionError)


def _listener_configs(project: ProjectConfig) -> list[ListenerConfig]:
    return [ListenerConfig(host=item.host, port=item.port,
                           handshake_timeout_ms=item.handshake_timeout_ms, rbac=item.rbac,
                           middleware_function_id=item.middleware_function_id, token=item.token)
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
        self.workers: Supervisor | None = None
        self.observability: Any = None  # the always-on log store (spec/workers.md §10)
        self.observability_config: dict[str, Any] = {}
        self.lock: EngineLock | None = None
        self.watcher: ConfigWatcher | None = None
        self.stop_requested = asyncio.Event()
        self.signals = 0
        self.loaded_lock: Any = None

    def _load(self) -> ProjectConfig:
        """config.yaml, and iii.lock into ``loaded_lock``; raises one of LOAD_ERRORS.

        Both are read under a shared `.iii/commit.lock` (when `.iii/` exists), so a reload never
        sees half of an `iii worker` commit (cli.md §1.5)."""
        if self.options.use_default_config:
            self.loaded_lock = None
            return default_config(os.environ)
        state_dir = self.options.config_path.parent / ".iii"
        guard = commit_lock(state_dir, shared=True) if state_dir.is_dir() else nullcontext()
        with guard:
            project = load_config(self.options.config_path)
            self.loaded_lock = read_lock(project.project_dir)
        return project

    async def run(self) -> int:
        # Startup order of cli.md §1.4: the engine lock, then recovery of an interrupted commit,
        # then the files, so a journal left behind by a killed command is undone before the
        # (possibly half-written) pair is read.
        if not self.options.use_default_config:
            project_dir = self.options.config_path.parent
            self.lock = EngineLock(project_dir)
            try:
                self.lock.acquire()
            except ProjectBusy as exc:
                log.error("another engine is already running for this project (%s)", exc)
                return 1
            try:
                restored = recover(project_dir / ".iii")
            except TransactionError as exc:
                sys.stderr.write(f"error: {exc}\n")
                self.lock.release()
                return 1
            if restored is not None:
                log.warning("warning: restored config.yaml and iii.lock from an interrupted iii "
                            "worker command (pid %d)", restored)
        try:
            self.project = self._load()
        except LOAD_ERRORS as exc:
            sys.stderr.write(f"error: {exc}\n")  # the CLI's error format (cli.md §1.1)
            if self.lock is not None:
                self.lock.release()
            return 1
        for warning in self.project.warnings:
            log.warning("%s", warning)
        if not self.options.use_default_config:
            stop_leftovers(self.project.project_dir)
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
        found = probe()
        if found.available:
            log.info("isolation: namespace available (bubblewrap %s)", found.version or "unknown")
        else:
            log.info("isolation: namespace unavailable (%s); managed workers run as plain "
                     "processes", found.reason)
        self.workers = Supervisor(engine, project, ephemeral=self.options.use_default_config,
                                  engine_url=url, isolation_probe=found,
                                  worker_output=not getattr(self.options, "no_worker_output", False))
        register_worker_functions(engine, self.workers)
        await self._start_observability(project, url)
        if not self.options.use_default_config and not self.options.no_reload:
            assert project.config_path is not None
            # watching starts before the workers do, so an edit saved meanwhile is applied
            self.watcher = ConfigWatcher(project.config_path, self._reload)
            self.watcher.start()
        await self.workers.apply(project, self.loaded_lock)
        tune_for_serving()  # after start-up: what is alive now stays alive
        log.info("event loop: %s", running_loop_name())
        log.info("ready (%d workers)", self.workers.running_count())
        await self.stop_requested.wait()
        return await self._shutdown()

    async def _start_observability(self, project: ProjectConfig, url: str) -> None:
        entry = project.worker("iii-observability") or WorkerEntry("iii-observability", "builtin")
        try:
            self.observability = await start_in_process(
                self.engine, entry, project.project_dir, self.options.use_default_config, url)
        except StartError as exc:
            log.error("iii-observability failed: %s", exc)
            return
        self.observability_config = dict(entry.config)

    async def _reconfigure_observability(self, project: ProjectConfig) -> None:
        entry = project.worker("iii-observability")
        config = dict(entry.config) if entry is not None else {}
        if self.observability is None or config == self.observability_config:
            return
        try:
            await self.observability.reconfigure(config)
        except ValueError as exc:
            log.error("iii-observability: %s — keeping its running configuration", exc)
            return
        self.observability_config = config

    async def _reload(self) -> None:
        try:
            project = await asyncio.to_thread(self._load)  # may wait on .iii/commit.lock
        except LOAD_ERRORS as exc:
            log.error("error: %s — keeping the running configuration", exc)
            if self.workers is not None:
                self.workers.config_error = exc
            return
        assert self.workers is not None
        if self.workers.config_error is not None:
            log.info("config.yaml is valid again")
            self.workers.config_error = None
        self.project = project
        await self._reconfigure_observability(project)
        try:
            configs = _listener_configs(project)
        except ConfigError as exc:
            log.error("error: %s — keeping the running listeners", exc)
        else:
            assert self.engine is not None
            self.listeners = await apply_listener_configs(self.engine, self.listeners, configs)
        await self.workers.apply(project, self.loaded_lock)

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
            if self.workers is not None:
                self.workers.kill_all()
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
        if self.observability is not None:
            await self.observability.stop()
        await engine.stop()
        return 0

    async def _close_listeners(self) -> None:
        await asyncio.gather(*(listener.close() for listener in self.listeners),
                             return_exceptions=True)


async def serve(options: Any) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    # None: not chosen here, so the iii-observability entry's level / format apply (cli.md §1.7)
    setup_logging(options.log_level or os.environ.get("III_LOG_LEVEL"), options.log_format)
    return await Server(options).run()
