"""How each declared worker is run as a process: command, folder, isolation, environment, limits.

``Launcher.isolation_for`` decides the isolation in effect (cli.md §9.5: ``auto`` means a
namespace sandbox when the probe succeeded, else a plain process with the reason);
``Launcher.prepare`` builds the ``Launch`` for one start, running a local worker's
setup/install first (§9.7).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..engine.config import ProjectConfig, WorkerEntry
from .child import Launch, StartError
from .envbuild import EnvInputs, worker_environment
from .limits import DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_PIDS, LimitPlanner, Limits
from .local import ScriptError, prepare_local
from .logfile import WorkerLog
from .manifest import Manifest, ManifestError, load_manifest
from .resident import first_party_module
from .sandbox import Probe, SandboxSpec, bwrap_args, resolve_in

log = logging.getLogger("pyiii.manager")


_SIMPLE = re.compile(r"""^[^;&|<>()`\n=]+(?:\s.*)?$""")


def shell_command(script: str) -> list[str]:
    """``/bin/sh -c <script>``; a single simple command is ``exec``'d, so the worker itself
    is the process the supervisor started: it keeps the parent-death signal and gets SIGTERM
    directly. Lists, pipes, redirections and leading assignments keep the shell."""
    if _SIMPLE.match(script.strip()) and not re.search(r"[;&|<>()`\n]", script):
        return ["/bin/sh", "-c", "exec " + script.strip()]
    return ["/bin/sh", "-c", script]


def startable_manifest(folder: Path) -> Manifest:
    """The valid ``iii.worker.yaml`` of a local or package worker, which must say how to start
    it (``scripts.start``); StartError W180 otherwise."""
    try:
        manifest = load_manifest(folder)
    except ManifestError as exc:
        raise StartError("W180", str(exc)) from None
    if not manifest.start:
        raise StartError("W180", f"{manifest.path}: scripts.start is required")
    return manifest


@dataclass(frozen=True)
class IsolationChoice:
    isolation: str  # in-process | process | namespace
    reason: str | None = None  # why not namespace (auto), or why impossible (namespace)
    impossible: bool = False


class Launcher:
    def __init__(self, probe: Probe, planner: LimitPlanner, engine_url: str,
                 ephemeral: bool) -> None:
        self.probe = probe
        self.planner = planner
        self.engine_url = engine_url
        self.ephemeral = ephemeral

    def isolation_for(self, entry: WorkerEntry) -> IsolationChoice:
        wanted = entry.isolation
        if entry.kind == "builtin" and wanted in ("auto", "in-process"):
            return IsolationChoice("in-process")
        if entry.kind == "oci" and wanted != "process" and not self.probe.available:
            return IsolationChoice("namespace", self.probe.reason, impossible=True)  # never bare
        if wanted == "process":
            return IsolationChoice("process")
        if self.probe.available:
            return IsolationChoice("namespace")
        if wanted == "namespace":
            return IsolationChoice("namespace", self.probe.reason, impossible=True)
        return IsolationChoice("process", self.probe.reason)

    async def prepare(self, entry: WorkerEntry, project: ProjectConfig, worker_log: WorkerLog,
                      choice: IsolationChoice, locked: Any = None) -> Launch:
        """The Launch of one start; ``locked`` is the worker's iii.lock entry (registry kind)."""
        if entry.kind == "oci" or (locked is not None and locked.type == "image"):
            from .oci.starter import prepare_image

            return await prepare_image(self, entry, project, worker_log, choice, locked)
        if choice.impossible:
            raise StartError("W161", f"namespace isolation is impossible: {choice.reason}")
        work_dir = project.project_dir / "data" / "managed" / entry.name
        if entry.kind == "builtin":
            module_name, _ = first_party_module(entry.name)
            if importlib.util.find_spec(module_name + ".__main__") is None:
                raise StartError("W160", f"first-party worker {entry.name} cannot run out of process")
            spec = importlib.util.find_spec(module_name)
            worker_dir = Path(list(spec.submodule_search_locations or ["."])[0]) if spec else Path(".")
            command = [sys.executable, "-m", module_name]
            cwd = project.project_dir
            writable = project.project_dir / "data"  # first-party workers keep their files there
            manifest_env: dict[str, str] = {}
            version: str | None = __version__
            label = "builtin"
            manifest: Manifest | None = None
        elif entry.kind == "local":
            worker_dir = project.worker_dir(entry)
            assert worker_dir is not None
            if not worker_dir.is_dir():
                raise StartError("W110", f"worker folder {worker_dir} does not exist")
            manifest = startable_manifest(worker_dir)
            command = shell_command(manifest.start)
            cwd = writable = worker_dir
            manifest_env, version = dict(manifest.env), manifest.version
            label = "local" + (f" {manifest.version}" if manifest.version else "")
        elif entry.kind == "oci":
            raise AssertionError("image workers are prepared by prepare_image")
        else:
            folder, command, manifest_env, version = await self._registry(entry, project, worker_log,
                                                                           locked)
            worker_dir = writable = folder
            cwd = folder if command[0] == "/bin/sh" else work_dir  # binaries run in III_WORK_DIR
            label = f"registry {version}"
            manifest = None
        if not self.ephemeral:
            work_dir.mkdir(parents=True, exist_ok=True)
            writable.mkdir(parents=True, exist_ok=True)
            for extra in entry.sandbox.rw_paths:  # asked to be writable: make sure it exists
                try:
                    resolve_in(project.project_dir, extra).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StartError("W160", f"sandbox.rw_paths: cannot create {extra}: "
                                             f"{exc.strerror or exc}") from None
        env = worker_environment(EnvInputs(
            name=entry.name, engine_url=self.engine_url, project_dir=project.project_dir,
            worker_dir=worker_dir, work_dir=work_dir, isolation=choice.isolation,
            config=dict(entry.config), entry_env=dict(entry.env), manifest_env=manifest_env,
            version=version, namespace=entry.namespace, config_path=project.config_path,
            ephemeral=self.ephemeral))
        preexec, limits = self.planner.plan(entry.name, self.limits(entry, manifest))
        wrap: list[str] = []
        sandbox: list[str] = []
        if choice.isolation == "namespace":
            assert self.probe.bwrap is not None
            sandbox = bwrap_args(SandboxSpec(
                entry.name, project.project_dir, writable, work_dir, entry.sandbox.hide_home,
                entry.sandbox.ro_paths, entry.sandbox.rw_paths))
            wrap = [self.probe.bwrap, *sandbox, "--chdir", str(cwd), "--"]
        if entry.kind == "local" and manifest is not None:
            def output(line: str) -> None:
                worker_log.write(line)

            try:
                await prepare_local(entry.name, worker_dir, project.project_dir, env=env,
                                    wrap=wrap, output=output, manifest=manifest)
            except ScriptError as exc:
                raise StartError("W160", str(exc)) from None
        return Launch(argv=wrap + command, cwd=cwd, env=env, isolation=choice.isolation,
                      label=label, limits=limits, preexec=preexec, sandbox_args=sandbox,
                      bwrap=self.probe.bwrap if sandbox else None)

    async def _registry(self, entry: WorkerEntry, project: ProjectConfig, worker_log: WorkerLog,
                        locked: Any) -> tuple[Path, list[str], dict[str, str], str]:
        """Install from iii.lock if the identity folder is missing (cli.md §9.7), then the
        command: the package's ``scripts.start`` or the binary itself."""
        from .registry.errors import ManagerError
        from .registry.install import clean_stale, is_current
        from .registry.lockops import ensure_installed
        from .registry.model import host_platform

        if locked is None:
            raise StartError("W110", f"not locked: run `iii worker add {entry.name}`")
        if locked.type not in ("package", "binary"):
            raise StartError("W141", f"{locked.type} workers are not supported by this engine yet")
        platform = host_platform()
        loop = asyncio.get_running_loop()
        if not is_current(project.project_dir, entry.name, locked, platform):
            worker_log.event(f"installing {entry.name} {locked.version}")

        def output(line: str) -> None:  # called from the install thread
            loop.call_soon_threadsafe(worker_log.write, line)

        try:
            folder = await asyncio.to_thread(ensure_installed, project.project_dir, entry.name,
                                             locked, platform=platform, output=output)
        except (ManagerError, ManifestError) as exc:
            raise StartError(getattr(exc, "code", "W160"), str(exc)) from None
        assert folder is not None
        # the previous identity's worker was stopped before this start: its folder can go
        await asyncio.to_thread(clean_stale, project.project_dir, entry.name, folder.name)
        if locked.type == "binary":
            art = locked.artifact_for(platform)
            exe = folder / (art.entry or entry.name) if art and art.format == "tar.gz" \
                else folder / "bin" / entry.name
            return folder, [str(exe)], {}, locked.version
        manifest = startable_manifest(folder)
        return folder, shell_command(manifest.start), dict(manifest.env), locked.version

    @staticmethod
    def limits(entry: WorkerEntry, manifest: Manifest | None) -> Limits:
        res = entry.resources
        memory = res.memory if res.memory is not None else manifest.memory if manifest else None
        cpus = res.cpus if res.cpus is not None else manifest.cpus if manifest else None
        pids = res.pids if res.pids is not None else manifest.pids if manifest else None
        return Limits(memory or DEFAULT_MEMORY_MIB, cpus or DEFAULT_CPUS, pids or DEFAULT_PIDS,
                      memory_explicit=memory is not None)
