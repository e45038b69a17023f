"""The supervisor: one record per declared worker, kept in step with config.yaml (cli.md §1.5, §9.1).

``apply`` diffs a newly loaded config against the records (removed, changed, added; unchanged
records are never touched, whatever their state) and starts or stops workers accordingly.
``start``/``stop``/``restart`` are the runtime operations behind ``worker::*``. First-party
workers run in-process by default (:mod:`.resident`); everything else runs as a supervised
process (:mod:`.child`), bare or in a bubblewrap sandbox (:mod:`.launch`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engine.config import ProjectConfig, WorkerEntry
from ..engine.core import Engine
from ..engine.firstparty import ALWAYS_ON
from .child import ManagedProcess, StartError
from .launch import IsolationChoice, Launcher
from .limits import LimitPlanner
from .logfile import WorkerLog
from .resident import start_in_process
from .registry.errors import ManagerError
from .runrecord import RunRecords
from .sandbox import Probe, probe

log = logging.getLogger("pyiii.manager")


class SupervisorError(ManagerError):
    """A refused runtime operation; ``code`` is a cli.md §0.4 code."""


class LiveIsolation(dict):
    """Worker name → isolation, as the engine reads it when a connection registers a name.

    The name alone does not prove a connection is the managed process: while that process is
    not alive (stopped, failed, waiting in backoff) anyone may connect under the name, and it
    must then be reported with isolation null rather than a sandbox it is not in (§9.4)."""

    def __init__(self, records: dict[str, "Record"]) -> None:
        super().__init__()
        self._records = records

    def get(self, name: Any, default: Any = None) -> Any:  # type: ignore[override]
        record = self._records.get(name)
        if record is None or record.process is None or record.process.pid is None:
            return default
        return super().get(name, default)


@dataclass
class Record:
    """One declared worker and whatever runs it now."""

    entry: WorkerEntry
    log: WorkerLog
    choice: IsolationChoice | None = None
    process: ManagedProcess | None = None  # process kinds
    resident: Any = None  # a running in-process first-party worker
    resident_state: str = "stopped"
    reason: str | None = None
    error_code: str | None = None
    lock_identity: Any = None  # iii.lock identity it was started with (registry workers)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    removing: bool = False  # left config.yaml; listed as stopping until its process is gone

    @property
    def in_process(self) -> bool:
        return self.choice is not None and self.choice.isolation == "in-process"

    @property
    def state(self) -> str:
        if self.process is not None and (self.process.active or self.process.state != "stopped"):
            return self.process.state
        if self.resident is not None:
            return "stopping" if self.removing else "running"
        if self.reason is not None:
            return "failed"
        return "disabled" if not self.entry.enabled else "stopped"


class Supervisor:
    def __init__(self, engine: Engine, project: ProjectConfig, ephemeral: bool,
                 engine_url: str, worker_output: bool = True,
                 isolation_probe: Probe | None = None) -> None:
        self.engine = engine
        self.project = project
        self.ephemeral = ephemeral
        self.engine_url = engine_url
        self.worker_output = worker_output
        self.probe = isolation_probe if isolation_probe is not None else probe()
        self.launcher = Launcher(self.probe, LimitPlanner(), engine_url, ephemeral)
        self.records: dict[str, Record] = {}
        self.runs = None if ephemeral else RunRecords(project.project_dir / ".iii" / "run")
        self.config_error: Exception | None = None  # ConfigError, or iii.lock's ManagerError
        self.lock: Any = None  # the iii.lock in force (pyiii.manager.lockfile.Lock)
        self._applied_once = False
        self._applying = asyncio.Lock()  # a reload waits for the startup (or previous) apply
        self._warned_unsandboxed: set[str] = set()
        self.managed_isolation = LiveIsolation(self.records)
        engine.managed_isolation = self.managed_isolation  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- queries

    def running_count(self) -> int:
        return sum(1 for r in self.records.values() if r.state in ("starting", "running"))

    def record(self, name: str) -> Record:
        found = self.records.get(name)
        if found is None or found.removing:
            raise SupervisorError("W110", f"no worker named '{name}' is declared in "
                                          f"{self._config_name()}")
        return found

    def _config_name(self) -> str:
        path = self.project.config_path
        return path.name if path is not None else "the default configuration"

    def connections(self, name: str) -> list[Any]:
        return [c for c in self.engine.connections.values()
                if c.info is not None and c.info.name == name and c.live]

    def log_path(self, name: str) -> Path | None:
        if self.ephemeral:
            return None
        return self.project.project_dir / ".iii" / "logs" / f"{name}.log"

    # ----------------------------------------------------------------- config diff

    async def apply(self, project: ProjectConfig, lock: Any = None) -> None:
        """Bring the running set in line with ``project`` (and ``lock``, the iii.lock read with
        it; None keeps the previous one)."""
        async with self._applying:
            if lock is not None:
                self.lock = lock
            await self._apply(project)

    def locked(self, name: str) -> Any:
        return self.lock.workers.get(name) if self.lock is not None else None

    def _identity(self, entry: WorkerEntry) -> Any:
        found = self.locked(entry.name) if entry.kind in ("registry", "oci") else None
        return found.identity() if found is not None else None

    async def _apply(self, project: ProjectConfig) -> None:
        self.project = project
        wanted = {e.name: e for e in project.workers if e.name not in ALWAYS_ON}
        removed = [n for n in self.records if n not in wanted]
        changed = [n for n, e in wanted.items() if n in self.records and (
            self.records[n].entry != e or self.records[n].lock_identity != self._identity(e))]
        added = [n for n in wanted if n not in self.records]
        await asyncio.gather(*(self._remove(n) for n in removed))
        for name in changed:
            await self._change(name, wanted[name])
        for name in added:
            self.records[name] = Record(wanted[name], self._new_log(wanted[name]),
                                        lock_identity=self._identity(wanted[name]))
        await asyncio.gather(*(self._start(self.records[n], automatic=True) for n in added))
        if self._applied_once and (added or removed or changed):
            parts = [f"+{n}" for n in added] + [f"~{n}" for n in changed] + [f"-{n}" for n in removed]
            log.info("config reloaded: %s", " ".join(parts))
        self._applied_once = True

    def _new_log(self, entry: WorkerEntry) -> WorkerLog:
        prefix = f"{entry.name} | " if self.worker_output else None
        return WorkerLog(self.log_path(entry.name), entry.logs.max_bytes, entry.logs.keep, prefix)

    async def _remove(self, name: str) -> None:
        # the record stays listed (state "stopping") until its process is gone: `iii worker
        # remove` waits for the worker to leave the list and then says it has stopped
        record = self.records[name]
        record.removing = True
        try:
            async with record.lock:
                await self._halt(record)
        finally:  # even if halting failed: the worker has left config.yaml
            self.records.pop(name, None)
            self.managed_isolation.pop(name, None)
            record.log.close()

    async def _change(self, name: str, new: WorkerEntry) -> None:
        record = self.records[name]
        async with record.lock:
            old = record.entry
            if record.resident is not None and replace(old, config=new.config) == new and \
                    hasattr(record.resident, "reconfigure"):
                try:
                    await record.resident.reconfigure(new.config)
                except ValueError as exc:
                    log.error("%s: new config rejected, keeping the old one: %s", name, exc)
                    return
                record.entry = new
                return
            await self._halt(record)
            record.entry = new
            record.lock_identity = self._identity(new)
            record.log.configure(new.logs.max_bytes, new.logs.keep, record.log.echo_prefix)
            record.process = None
            record.reason = record.error_code = None
        await self._start(record, automatic=True)

    # ----------------------------------------------------------------- start and stop

    async def _start(self, record: Record, automatic: bool) -> None:
        """Start one record; ``automatic`` (startup, reload) skips disabled entries."""
        entry = record.entry
        if automatic and not entry.enabled:
            return
        async with record.lock:
            record.reason = record.error_code = None
            choice = record.choice = self.launcher.isolation_for(entry)
            if choice.isolation == "in-process":
                await self._start_resident(record)
                return
            self.managed_isolation[entry.name] = choice.isolation
            if choice.reason and not choice.impossible and entry.name not in self._warned_unsandboxed:
                self._warned_unsandboxed.add(entry.name)
                log.warning("warning: %s runs without a sandbox (isolation: process): %s",
                            entry.name, choice.reason)
            if record.process is None or record.process.entry != entry:
                project = self.project

                async def prepare() -> Any:
                    return await self.launcher.prepare(record.entry, project, record.log, choice,
                                                       self.locked(record.entry.name))

                record.process = ManagedProcess(entry, prepare, record.log, self.runs,
                                                lambda: bool(self.connections(entry.name)))
            await record.process.start()

    async def _start_resident(self, record: Record) -> None:
        entry = record.entry
        if record.resident is not None:
            return
        try:
            record.resident = await start_in_process(self.engine, entry, self.project.project_dir,
                                                     self.ephemeral, self.engine_url)
        except StartError as exc:
            record.reason, record.error_code = exc.message, exc.code
            log.error("%s not started: %s", entry.name, exc.message)
            return
        log.info("started %s (builtin, in-process)", entry.name)

    async def _halt(self, record: Record) -> None:
        """Stop whatever runs ``record`` (no lock taken: callers hold it)."""
        if record.process is not None:
            await record.process.stop()
        if record.resident is not None:
            try:
                await record.resident.stop()
            except Exception:  # noqa: BLE001 - one worker's bug must not stop the others
                log.exception("%s did not stop cleanly", record.entry.name)
            record.resident = None

    async def start(self, name: str) -> Record:
        record = self.record(name)
        if record.state in ("installing", "starting", "running", "backoff"):
            return record
        if record.process is not None:
            record.process.state = "stopped"
            record.process.reason = None
        await self._start(record, automatic=False)
        return record

    async def stop(self, name: str) -> Record:
        if name == "iii-worker-manager":
            raise SupervisorError("W105", "iii-worker-manager is the engine's listener and "
                                          "cannot be stopped")
        if name in ALWAYS_ON:
            raise SupervisorError("W105", f"{name} is always on and cannot be stopped")
        record = self.record(name)
        async with record.lock:
            await self._halt(record)
            if record.process is not None and record.process.state == "failed":
                record.process.state = "stopped"  # the user's stop: leave `failed` behind
            record.reason = record.error_code = None
        return record

    async def restart(self, name: str) -> Record:
        await self.stop(name)
        return await self.start(name)

    async def stop_all(self) -> None:
        """Process workers in parallel, then in-process ones (cli.md §1.6 step 3)."""
        processes = [r for r in self.records.values() if r.process is not None]
        await asyncio.gather(*(self._locked_halt(r) for r in processes))
        for record in list(self.records.values()):
            await self._locked_halt(record)
        for record in self.records.values():
            record.log.close()

    async def _locked_halt(self, record: Record) -> None:
        async with record.lock:
            await self._halt(record)

    def kill_all(self) -> None:
        for record in self.records.values():
            if record.process is not None:
                record.process.kill_now()


def stop_leftovers(project_dir: Path) -> None:
    """Stop a dead engine's workers before anything else starts (cli.md §1.4)."""
    RunRecords(project_dir / ".iii" / "run").stop_leftovers()
