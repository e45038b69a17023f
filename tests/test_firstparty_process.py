"""First-party workers out of process with `isolation: process`, in-process otherwise
(spec/workers.md §1.1-1.2; spec/cli.md §1.5, §1.6, §5.1, §9.1-9.2).

Real `iii` engines in temp projects (tests/iii_process.py); every engine runs in its own process
group, and teardown kills every group still alive. The worker children run in process groups of
their own, so each test also SIGKILLs every child pid it saw.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.iii_process import IIIProcs, Proc, iii_procs, manager_config, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(90)

STATE_PROCESS = ("  - name: iii-state\n    isolation: process\n"
                 "    config: {adapter: memory}\n")
STARTED = r"manager: (?:re)?started iii-state \(builtin, process\) pid (\d+)"


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not os.path.exists("/proc")  # no /proc: kill(0) succeeded, it exists


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class Engine:
    """One `iii` engine in a temp project plus `iii trigger` against it."""

    def __init__(self, procs: IIIProcs, extra: str) -> None:
        self.procs = procs
        self.project = procs.project("proj", manager_config(0, extra))
        self.proc: Proc = procs.engine(self.project)
        self.url = self.proc.wait_ready()
        self.seen: set[int] = set()
        procs.on_close(self._kill_children)

    def _kill_children(self) -> None:
        for pid in self.seen:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def child_pid(self, start: int = 0, timeout: float = 10.0) -> int:
        pid = int(self.proc.wait_line(STARTED, timeout, start).group(1))
        self.seen.add(pid)
        return pid

    def trigger(self, function_id: str, *args: str, timeout: str = "5s") -> tuple[int, object, str]:
        res = self.procs.run("trigger", function_id, *args, "--compact", "--timeout", timeout,
                             "--engine", self.url, cwd=self.project, timeout=20)
        out = json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else None
        return res.returncode, out, res.stderr

    def call(self, function_id: str, *args: str) -> object:
        code, out, err = self.trigger(function_id, *args)
        assert code == 0, f"{function_id} failed ({code}): {err}\n--- engine ---\n{self.proc.stderr}"
        return out

    def worker(self, name: str) -> dict | None:
        listed = self.call("engine::workers::list")
        return next((w for w in listed["workers"] if w["name"] == name), None)  # type: ignore[index]

    def info(self, name: str) -> dict:
        return self.call("engine::workers::info", f"name={name}")["worker"]  # type: ignore[index]

    def write_config(self, extra: str) -> None:
        path = self.project / "config.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(manager_config(0, extra))
        os.replace(tmp, path)

    def state_roundtrip(self, value: int) -> None:
        assert self.call("state::set", "scope=t", "key=k", f"value={value}") is not None
        assert self.call("state::get", "scope=t", "key=k") == value


def test_process_isolation_lifecycle(iii_procs):
    eng = Engine(iii_procs, STATE_PROCESS)
    pid = eng.child_pid()
    assert pid != eng.proc.pid
    worker = wait_for(lambda: eng.worker("iii-state"), 10, 0.2, "iii-state to connect")
    assert worker["isolation"] == "process"
    assert eng.info("iii-state")["pid"] == pid
    assert alive(pid) and pid in children_of(eng.proc.pid)
    eng.state_roundtrip(1)

    # a crash (a signal the supervisor did not send) restarts it, with the default backoff
    mark = len(eng.proc.lines)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    new_pid = eng.child_pid(mark, 5)
    assert new_pid != pid

    def callable_again() -> bool:
        code, _, _ = eng.trigger("state::get", "scope=t", "key=k", timeout="1s")
        return code == 0
    wait_for(callable_again, 3.0, 0.05, "state::get after the restart")
    elapsed = time.monotonic() - killed_at
    assert elapsed < 3.0, elapsed
    assert eng.info("iii-state")["pid"] == new_pid
    eng.state_roundtrip(2)
    assert not alive(pid)

    # a changed config: block restarts the child (no live reconfigure across processes)
    mark = len(eng.proc.lines)
    eng.write_config(STATE_PROCESS.replace("{adapter: memory}",
                                           "{adapter: memory, triggers_enabled: false}"))
    third = eng.child_pid(mark, 10)
    assert third != new_pid
    wait_for(lambda: not alive(new_pid), 5, what="the old child to stop")
    eng.proc.wait_line(r"config reloaded: ~iii-state", 5, mark)

    # removing the entry stops the child
    mark = len(eng.proc.lines)
    eng.write_config("")
    eng.proc.wait_line(r"config reloaded: -iii-state", 10, mark)
    wait_for(lambda: not alive(third), 5, what="the child to stop after removal")
    wait_for(lambda: eng.worker("iii-state") is None, 5, 0.2, "iii-state to disconnect")

    # added again, then the engine's SIGTERM stops it: exit 0 and no child left
    mark = len(eng.proc.lines)
    eng.write_config(STATE_PROCESS)
    last = eng.child_pid(mark, 10)
    wait_for(lambda: eng.worker("iii-state"), 10, 0.2, "iii-state to reconnect")
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(20) == 0, eng.proc.stderr
    assert not alive(last)
    assert not any(alive(p) for p in eng.seen)
    assert re.search(r"^iii-state \| ", eng.proc.stderr, re.M), "child output is echoed"


def test_in_process_entry_reports_in_process(iii_procs):
    eng = Engine(iii_procs, "  - name: iii-state\n    config: {adapter: memory}\n")
    eng.proc.wait_line(r"started iii-state \(builtin, in-process\)", 5)
    worker = wait_for(lambda: eng.worker("iii-state"), 5, 0.2, "iii-state")
    assert worker["isolation"] == "in-process"
    assert eng.info("iii-state")["pid"] == eng.proc.pid
    assert children_of(eng.proc.pid) == []
    eng.state_roundtrip(7)
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(15) == 0, eng.proc.stderr


def test_crash_loop_gives_up(iii_procs):
    policy = "    restart: {max_restarts: 1, reset_after_s: 60, backoff_initial_ms: 100}\n"
    eng = Engine(iii_procs, STATE_PROCESS + policy)
    first = eng.child_pid()
    mark = len(eng.proc.lines)
    os.kill(first, signal.SIGKILL)
    second = eng.child_pid(mark, 5)
    assert second != first
    os.kill(second, signal.SIGKILL)
    line = eng.proc.wait_line(r"iii-state failed: crash loop: exited 2 times within 60s", 5)
    assert "last exit code -9" in line.string
    time.sleep(0.5)
    assert not re.search(r"restarted iii-state", "\n".join(eng.proc.lines[mark + 2:]))
    assert children_of(eng.proc.pid) == []
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(15) == 0, eng.proc.stderr


def test_invalid_config_fails_without_restarting(iii_procs):
    eng = Engine(iii_procs, STATE_PROCESS.replace("{adapter: memory}",
                                                  "{adapter: memory, no_such_key: 1}"))
    eng.child_pid()
    eng.proc.wait_line(r"iii-state failed: invalid config: .*no_such_key", 10)
    time.sleep(0.3)
    assert "restarting in" not in eng.proc.stderr
    assert children_of(eng.proc.pid) == []
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(15) == 0, eng.proc.stderr


def test_child_dies_with_a_killed_engine(iii_procs):
    """Linux parent-death signal (cli.md §9.3): SIGKILL to the engine alone still ends the child."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs Linux")
    eng = Engine(iii_procs, STATE_PROCESS)
    pid = eng.child_pid()
    wait_for(lambda: eng.worker("iii-state"), 10, 0.2, "iii-state to connect")
    os.kill(eng.proc.pid, signal.SIGKILL)  # not the group: the child has its own anyway
    eng.proc.wait(5)
    wait_for(lambda: not alive(pid), 5, what="the orphaned child to exit")
