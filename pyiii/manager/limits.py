"""Resource limits of managed workers: delegated cgroup v2 when possible, else rlimits (cli.md §9.5).

cgroup v2 is used only when the engine's own group is writable, has the memory, cpu and pids
controllers available, and holds no process but the engine: then the engine moves itself into a
child group ``engine`` (cgroup v2 forbids processes in a group that hands controllers down) and
each worker gets a group of its own, joined before exec. Any other situation (cgroup v1, a
shared group, read-only cgroupfs) falls back to rlimits, and ``limits`` says so.
"""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("pyiii.manager")

DEFAULT_MEMORY_MIB = 2048
DEFAULT_CPUS = 2.0
DEFAULT_PIDS = 512
_CONTROLLERS = ("memory", "cpu", "pids")


@dataclass(frozen=True)
class Limits:
    memory: int = DEFAULT_MEMORY_MIB
    cpus: float = DEFAULT_CPUS
    pids: int = DEFAULT_PIDS
    memory_explicit: bool = False  # set by the entry or the manifest, not defaulted


def _own_cgroup() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    if len(lines) != 1 or not lines[0].startswith("0::"):
        return None  # cgroup v1 or hybrid: not a unified hierarchy we can delegate in
    return Path("/sys/fs/cgroup") / lines[0][3:].lstrip("/")


class CgroupTree:
    """The engine's delegated subtree, or None when it cannot be used."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def detect(cls) -> "CgroupTree | None":
        if os.environ.get("III_NO_CGROUP") == "1":
            return None
        own = _own_cgroup()
        try:
            if own is None or not os.access(own, os.W_OK):
                return None
            available = (own / "cgroup.controllers").read_text().split()
            if not all(c in available for c in _CONTROLLERS):
                return None
            members = {int(p) for p in (own / "cgroup.procs").read_text().split()}
            if own.name == "engine" and members == {os.getpid()}:
                return cls(own.parent)  # already moved (a second Supervisor in this process)
            if members != {os.getpid()}:
                return None  # other processes share the group: not ours to reorganise
            engine_group = own / "engine"
            engine_group.mkdir(exist_ok=True)
            (engine_group / "cgroup.procs").write_text(str(os.getpid()))
            (own / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in _CONTROLLERS))
        except (OSError, ValueError) as exc:
            log.debug("cgroup v2 limits unavailable: %s", exc)
            return None
        return cls(own)

    def group_for(self, name: str, limits: Limits) -> Path:
        group = self.root / f"worker-{name}"
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(limits.memory * 1024 * 1024))
        (group / "cpu.max").write_text(f"{int(limits.cpus * 100000)} 100000")
        (group / "pids.max").write_text(str(limits.pids))
        return group


class LimitPlanner:
    """Decides, once per engine, how limits are enforced, and builds each worker's preexec."""

    def __init__(self) -> None:
        self.cgroups = CgroupTree.detect()

    def plan(self, name: str, limits: Limits) -> tuple[Callable[[], None] | None, dict[str, str]]:
        """A function to run in the child before exec, and the truthful ``limits`` report."""
        if self.cgroups is not None:
            try:
                group = self.cgroups.group_for(name, limits)
            except OSError as exc:
                log.warning("%s: cannot create its cgroup (%s); using rlimits", name, exc)
            else:
                procs = str(group / "cgroup.procs")

                def join() -> None:
                    with open(procs, "w") as f:
                        f.write(str(os.getpid()))

                return join, {"memory": f"cgroup {limits.memory} MiB",
                              "cpus": f"cgroup {limits.cpus:g}", "pids": f"cgroup {limits.pids}"}
        report = {"memory": "not enforced", "cpus": "not enforced", "pids": "not enforced"}
        if not limits.memory_explicit:
            return None, report
        cap = limits.memory * 1024 * 1024
        report["memory"] = f"rlimit {limits.memory} MiB (address space)"

        def cap_memory() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        return cap_memory, report
