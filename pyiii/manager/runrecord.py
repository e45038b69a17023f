"""Process tracking: ``.iii/run/<name>.json`` and stopping a dead engine's leftovers (cli.md §9.3).

A record holds the worker's pid, its process group and the process start time (field 22 of
``/proc/<pid>/stat``), so a pid reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from .jsonfile import read_json_object, write_json

log = logging.getLogger("pyiii.manager")
LEFTOVER_GRACE_S = 5.0


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), None if gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])  # fields after the command start at field 3


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (one owned by another user counts; a zombie does not:
    it has already exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start_time(pid) is not None or not os.path.exists("/proc")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (Linux /proc)."""
    return list(group_tree(pgid))


def group_tree(pgid: int) -> dict[int, int]:
    """Live processes of process group ``pgid`` mapped to their parent pids (Linux /proc)."""
    found: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found[int(entry)] = int(fields[1])
    return found


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class RunRecords:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def write(self, name: str, pid: int, isolation: str, command: list[str]) -> None:
        write_json(self.path(name), {"pid": pid, "pgid": pid, "start_time": start_time(pid),
                                     "engine_pid": os.getpid(), "isolation": isolation, "command": command})

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def stop_leftovers(self) -> list[tuple[str, int]]:
        """Stop every recorded group whose engine is dead and whose pid still is the recorded
        process, or whose leader is gone but group is not (SIGTERM, up to 5 s, SIGKILL);
        returns (name, pid) of those stopped."""
        stopped: list[tuple[str, int]] = []
        if not self.dir.is_dir():
            return stopped
        waiting: list[tuple[str, int, int]] = []
        for path in sorted(self.dir.glob("*.json")):
            record = read_json_object(path)
            name = path.stem
            pid, pgid = record.get("pid"), record.get("pgid")
            engine_pid = record.get("engine_pid")
            if not isinstance(pid, int) or not isinstance(pgid, int):
                path.unlink(missing_ok=True)
                continue
            if isinstance(engine_pid, int) and engine_pid != os.getpid() and pid_alive(engine_pid):
                continue  # another engine still owns it
            # the leader (often `sh -c`) may be gone while its group lives on; a group id
            # cannot be reused while the group has members, so those are still ours
            same = start_time(pid) is not None and start_time(pid) == record.get("start_time")
            if same or (start_time(pid) is None and group_members(pgid)):
                signal_group(pgid, signal.SIGTERM)
                waiting.append((name, pid, pgid))
                log.info("stopped leftover process of %s (pid %d) from a previous engine", name, pid)
            path.unlink(missing_ok=True)
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while waiting and time.monotonic() < deadline:
            if not any(group_members(pgid) for _, _, pgid in waiting):
                break
            time.sleep(0.05)
        for name, pid, pgid in waiting:
            signal_group(pgid, signal.SIGKILL)
            stopped.append((name, pid))
        return stopped
