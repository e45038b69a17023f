"""The declared worker set: start, stop and re-apply what config.yaml lists (spec/cli.md §1.5).

First-party workers run in the engine's event loop (in-process transport) by default, and as a
supervised child process over WebSocket with ``isolation: process`` (:mod:`.child`). Entries of
other kinds (registry, OCI, local folders) need the full process supervisor; until it is present
they are reported as failed with that reason instead of being silently ignored.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from ..engine.config import ProjectConfig, WorkerEntry
from ..engine.core import Engine
from ..engine.firstparty import ALWAYS_ON, FIRST_PARTY
from ..engine.inprocess import local_connector
from .child import ChildWorker

log = logging.getLogger("pyiii.manager")


@dataclass
class Declared:
    entry: WorkerEntry
    running: Any = None  # RunningWorker (in-process) or ChildWorker (isolation: process)
    error: str | None = None

    @property
    def state(self) -> str:
        if isinstance(self.running, ChildWorker):
            return self.running.state
        return "running" if self.running is not None else ("failed" if self.error else "stopped")

    @property
    def reason(self) -> str | None:
        if isinstance(self.running, ChildWorker):
            return self.running.reason
        return self.error


class WorkerSet:
    def __init__(self, engine: Engine, project: ProjectConfig, ephemeral: bool,
                 engine_url: str | None = None, worker_output: bool = True) -> None:
        self.engine = engine
        # channel sockets always go over WebSocket; process workers connect to it
        self.engine_url = engine_url
        self.worker_output = worker_output  # echo child output prefixed `<name> | `
        self.project = project
        self.ephemeral = ephemeral
        self.workers: dict[str, Declared] = {}
        self.config_error: str | None = None
        self._applied_once = False
        self._applying = asyncio.Lock()  # a reload waits for the startup (or previous) apply

    def running_count(self) -> int:
        return sum(1 for d in self.workers.values() if d.state in ("starting", "running"))

    async def apply(self, project: ProjectConfig) -> None:
        async with self._applying:
            await self._apply(project)

    async def _apply(self, project: ProjectConfig) -> None:
        self.project = project
        wanted = {e.name: e for e in project.workers if e.name not in ALWAYS_ON}
        removed = [n for n in self.workers if n not in wanted]
        changed = [n for n, e in wanted.items() if n in self.workers and self.workers[n].entry != e]
        added = [n for n in wanted if n not in self.workers]
        for name in removed:
            await self._stop(self.workers.pop(name))
        for name in changed:
            declared = self.workers[name]
            old, new = declared.entry, wanted[name]
            if declared.running is not None and _only_config_changed(old, new) and hasattr(
                    declared.running, "reconfigure"):  # a ChildWorker has none: it restarts
                try:
                    await declared.running.reconfigure(new.config)
                    declared.entry = new
                    continue
                except ValueError as exc:
                    log.error("%s: new config rejected, keeping the old one: %s", name, exc)
                    continue
            await self._stop(declared)
            self.workers[name] = Declared(new)
            await self._start(self.workers[name])
        for name in added:
            self.workers[name] = Declared(wanted[name])
            await self._start(self.workers[name])
        if self._applied_once and (added or removed or changed):
            parts = [f"+{n}" for n in added] + [f"~{n}" for n in changed] + [f"-{n}" for n in removed]
            log.info("config reloaded: %s", " ".join(parts))
        self._applied_once = True

    async def _start(self, declared: Declared) -> None:
        entry = declared.entry
        if not entry.enabled:
            return
        if entry.kind != "builtin":
            declared.error = (f"{entry.kind} workers run under the process supervisor, which this "
                              "version of pyiii does not include yet")
            log.error("%s not started: %s", entry.name, declared.error)
            return
        module_name = FIRST_PARTY[entry.name].module
        try:
            module = importlib.import_module(module_name) if module_name else None
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            module = None
        if module is None or not hasattr(module, "start"):
            declared.error = f"first-party worker {entry.name} is not available in this version"
            log.error("%s not started: %s", entry.name, declared.error)
            return
        if entry.isolation == "process":  # `auto` keeps the builtin default, in-process
            await self._start_child(declared, module_name)
            return
        from ..workers.base import WorkerContext

        ctx = WorkerContext(entry.name, dict(entry.config), self.project.project_dir,
                            self.ephemeral, url=self.engine_url,
                            connector=local_connector(self.engine),
                            namespace=entry.namespace)
        try:
            declared.running = await module.start(ctx)
        except ValueError as exc:
            declared.error = f"invalid config: {exc}"
            log.error("%s not started: %s", entry.name, declared.error)
            return
        except Exception as exc:
            declared.error = f"failed to start: {exc}"
            log.exception("%s failed to start", entry.name)
            return
        log.info("started %s (builtin, in-process)", entry.name)

    async def _start_child(self, declared: Declared, module_name: str) -> None:
        entry = declared.entry
        if self.engine_url is None or importlib.util.find_spec(module_name + ".__main__") is None:
            declared.error = f"first-party worker {entry.name} cannot run out of process"
            log.error("%s not started: %s", entry.name, declared.error)
            return
        child = ChildWorker(entry, module_name, self.project.project_dir, self.engine_url,
                            ephemeral=self.ephemeral, config_path=self.project.config_path,
                            echo=self.worker_output)
        try:
            await child.start()
        except OSError as exc:
            declared.error = f"cannot start: {exc}"
            log.error("%s not started: %s", entry.name, declared.error)
            return
        declared.running = child
        log.info("started %s (builtin, process) pid %d", entry.name, child.pid)

    async def _stop(self, declared: Declared) -> None:
        if declared.running is None:
            return
        try:
            await declared.running.stop()
        except Exception:
            log.exception("%s did not stop cleanly", declared.entry.name)
        declared.running = None

    async def stop_all(self) -> None:
        """Process workers in parallel, then in-process ones (cli.md §1.6 step 3)."""
        children = [d for d in self.workers.values() if isinstance(d.running, ChildWorker)]
        await asyncio.gather(*(self._stop(d) for d in children))
        for declared in list(self.workers.values()):
            await self._stop(declared)


def _only_config_changed(old: WorkerEntry, new: WorkerEntry) -> bool:
    from dataclasses import replace

    return replace(old, config=new.config) == new
