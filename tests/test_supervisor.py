"""The supervisor with real engines and real managed workers (spec/cli.md §1.5, §9.1-9.3).

Each test runs `iii` in a temp project holding copies of tests/workers/managed/svc. Workers run
with `isolation: process` here (the sandbox has tests/test_sandbox.py), so these tests pass on
machines without bubblewrap too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from tests.iii_process import iii_procs, manager_config, wait_for  # noqa: F401
from pyiii.manager.runrecord import group_members
from tests.workers.managed.harness import ManagedEngine, alive, svc_entry

pytestmark = pytest.mark.timeout(90)

PROCESS = {"isolation": "process"}


def test_added_local_worker_runs_reloads_and_stops_on_removal(iii_procs):
    eng = ManagedEngine(iii_procs, "")
    assert [w["name"] for w in eng.call("worker::list")["workers"]] == ["iii-worker-manager"]
    mark = len(eng.proc.lines)
    svc = svc_entry("svc", **PROCESS,
                    config="{api: {key: x}, debug: true, ports: [1, 2]}", env='{DEBUG: "yes"}')
    eng.write_config(svc)
    eng.proc.wait_line(r"manager: started svc \(local 0\.1\.0, process\) pid \d+", 10, mark)
    eng.proc.wait_line(r"config reloaded: \+svc", 5, mark)
    doc = eng.wait_state("svc", "running", connected=True)
    assert eng.call("svc::hello", {"who": "a"}) == {"message": "hello, a"}
    assert (doc["kind"], doc["type"], doc["version"], doc["isolation"]) == (
        "local", None, "0.1.0", "process")
    assert doc["restarts"] == 0 and doc["reason"] is None and doc["last_exit"] is None
    assert doc["log_path"] == str(eng.project / ".iii" / "logs" / "svc.log")
    assert eng.isolation_of("svc") == "process"
    assert eng.isolation_of("tester") is None  # connected on its own

    # setup and install ran once, in the worker folder, recorded in prepared.json
    assert (eng.project / "svc" / "prepared.txt").read_text() == "setup-ran\ninstall-ran\n"
    prepared = eng.project / ".iii" / "install" / "svc" / "local" / "prepared.json"
    assert json.loads(prepared.read_text())["setup_done"] is True

    # the process record
    record = json.loads((eng.project / ".iii" / "run" / "svc.json").read_text())
    pid = doc["pid"]
    assert record["pid"] == pid and record["pgid"] == pid and record["engine_pid"] == eng.proc.pid
    assert record["isolation"] == "process" and record["start_time"] > 0
    assert os.getpgid(pid) == pid  # it leads its own group (setsid)

    # environment (cli.md §9.2)
    env = eng.call("svc::env")
    port = eng.url.rsplit(":", 1)[1]
    assert env["III_URL"] == env["III_ENGINE_URL"] == f"ws://127.0.0.1:{port}"
    assert env["III_WORKER_NAME"] == "svc" and env["III_ISOLATION"] == "process"
    assert env["III_WORK_DIR"] == str(eng.project / "data" / "managed" / "svc")
    assert env["III_WORKER_DIR"] == str(eng.project / "svc")
    assert env["III_PROJECT_DIR"] == str(eng.project)
    assert env["III_CONFIG_PATH"] == str(eng.project / "config.yaml")
    assert json.loads(env["III_WORKER_CONFIG"]) == {"api": {"key": "x"}, "debug": True,
                                                    "ports": [1, 2]}
    assert (env["API_KEY"], env["PORTS"], env["DEBUG"]) == ("x", "[1,2]", "yes")
    assert env["HOME"] == eng.procs.env["HOME"]  # process isolation keeps the engine's HOME
    assert (eng.project / "data" / "managed" / "svc").is_dir()

    # a changed config: block restarts it (new pid); the log shows both runs
    mark = len(eng.proc.lines)
    eng.write_config(svc.replace("key: x", "key: y"))
    eng.proc.wait_line(r"config reloaded: ~svc", 10, mark)
    doc2 = eng.wait_state("svc", "running", connected=True)
    assert doc2["pid"] != pid and not alive(pid)
    assert eng.call("svc::env")["API_KEY"] == "y"
    # setup did not run again; install neither (no dependency file changed)
    assert (eng.project / "svc" / "prepared.txt").read_text() == "setup-ran\ninstall-ran\n"

    # removal stops its group and deletes the record
    mark = len(eng.proc.lines)
    eng.write_config("")
    eng.proc.wait_line(r"config reloaded: -svc", 10, mark)
    wait_for(lambda: not alive(doc2["pid"]), 5, what="svc to stop")
    assert not (eng.project / ".iii" / "run" / "svc.json").exists()
    assert eng.error("worker::status", {"name": "svc"}).code == "W110"
    log = eng.log_text("svc")
    assert log.count("svc starting in mode serve") == 2
    assert re.search(r"^\[iii\] \d{4}-\d\d-\d\dT[\d:.]+Z started pid \d+ \(process\)$", log, re.M)
    assert re.search(r"^\[iii\] \S+ stopping \(SIGTERM\)$", log, re.M)
    assert "bye" in log  # SIGTERM let it shut down cleanly

    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(20) == 0, eng.proc.stderr


def test_crash_backoff_then_crash_loop_then_start(iii_procs):
    entry = svc_entry("crashy", **PROCESS, env="{MODE: crash, CODE: '3'}",
                      restart="{backoff_initial_ms: 100, backoff_max_ms: 400, max_restarts: 3}")
    eng = ManagedEngine(iii_procs, entry, copies=("crashy",))
    doc = eng.wait_state("crashy", "failed", 10)
    reason = ("crash loop: exited 4 times within 60s (last exit code 3); see iii worker logs "
              "crashy")
    assert doc["reason"] == reason
    assert doc["restarts"] == 3
    assert doc["last_exit"]["code"] == 3 and doc["last_exit"]["signal"] is None
    assert doc["pid"] is None and doc["connected"] is False
    log = eng.log_text("crashy")
    delays = [float(d) for d in re.findall(r"exited with code 3; restarting in ([\d.]+)s", log)]
    assert len(delays) == 3
    for got, want in zip(delays, (0.1, 0.2, 0.4)):
        assert want <= got <= want * 1.1 + 0.05, delays
    assert log.count("crashing") == 4
    assert re.search(r"^\[iii\] \S+ crash loop: exited 4 times", log, re.M)
    eng.proc.wait_line(r"crashy failed: crash loop: exited 4 times within 60s", 2)

    # `failed` is left only by a start: it runs (and crashes) again
    time.sleep(0.5)
    assert eng.log_text("crashy").count("crashing") == 4  # nothing restarts a failed worker
    doc = eng.call("worker::start", {"name": "crashy"})
    assert doc["restarts"] == 0 and doc["state"] in ("starting", "backoff", "failed", "running")
    wait_for(lambda: eng.log_text("crashy").count("crashing") >= 5, 5, what="a new run")
    eng.wait_state("crashy", "failed", 10)


def test_stop_start_restart_and_reload_keeps_stopped(iii_procs):
    extra = "  - name: iii-state\n    config: {adapter: memory}\n" + svc_entry("svc", **PROCESS)
    eng = ManagedEngine(iii_procs, extra)
    first = eng.wait_state("svc", "running", connected=True)["pid"]

    doc = eng.call("worker::stop", {"name": "svc"})
    assert doc["state"] == "stopped" and doc["pid"] is None
    assert not alive(first)
    # the worker got SIGTERM, not its `sh -c` wrapper, so its clean exit is what is recorded
    assert (doc["last_exit"]["code"], doc["last_exit"]["signal"]) == (0, None)
    after_stop = eng.log_text("svc").rsplit("stopping (SIGTERM)", 1)[1]
    assert "\nbye\n" in after_stop  # the worker itself shut down cleanly
    again = eng.call("worker::stop", {"name": "svc"})
    assert again["state"] == "stopped"
    wait_for(lambda: not eng.status("svc")["connected"], 5, what="svc to disconnect")

    # an unrelated edit (iii-state's config) leaves it stopped
    mark = len(eng.proc.lines)
    eng.write_config(extra.replace("{adapter: memory}", "{adapter: memory, triggers_enabled: false}"))
    eng.proc.wait_line(r"config reloaded: ~iii-state", 10, mark)
    time.sleep(0.3)
    assert eng.status("svc")["state"] == "stopped"

    doc = eng.call("worker::start", {"name": "svc"})
    assert doc["state"] in ("starting", "running") and doc["pid"] not in (None, first)
    second = eng.wait_state("svc", "running", connected=True)["pid"]
    assert eng.call("worker::start", {"name": "svc"})["pid"] == second  # already running

    doc = eng.call("worker::restart", {"name": "svc"})
    third = eng.wait_state("svc", "running", connected=True)["pid"]
    assert third not in (first, second) and not alive(second)
    assert doc["restarts"] == 0

    for name, message in (("iii-worker-manager", "iii-worker-manager is the engine's listener "
                                                 "and cannot be stopped"),):
        err = eng.error("worker::stop", {"name": name})
        assert (err.code, err.message) == ("W105", message)
    err = eng.error("worker::restart", {"name": "iii-worker-manager"})
    assert err.code == "W105"
    assert eng.call("worker::start", {"name": "iii-worker-manager"})["state"] == "running"
    doc = eng.status("iii-worker-manager")
    assert (doc["state"], doc["isolation"], doc["declared"]) == ("running", "in-process", True)
    err = eng.error("worker::start", {"name": "nosuch"})
    assert err.code == "W110" and "nosuch" in err.message
    err = eng.error("worker::stop", {})
    assert err.code == "W105"

    # in-process first-party workers stop and start inside the engine
    assert eng.call("worker::stop", {"name": "iii-state"})["state"] == "stopped"
    wait_for(lambda: not eng.status("iii-state")["connected"], 5, what="iii-state to go")
    doc = eng.call("worker::start", {"name": "iii-state"})
    assert doc["state"] == "running" and doc["isolation"] == "in-process" and doc["pid"] is None
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(20) == 0
    assert not alive(third)
    assert list((eng.project / ".iii" / "run").glob("*.json")) == []


def test_disabled_worker_is_declared_not_started(iii_procs):
    eng = ManagedEngine(iii_procs, svc_entry("svc", **PROCESS, enabled="false"))
    eng.proc.wait_line(r"ready \(0 workers\)", 5)
    doc = eng.status("svc")
    assert doc["state"] == "disabled" and doc["declared"] is True and doc["pid"] is None
    eng.call("worker::start", {"name": "svc"})
    eng.wait_state("svc", "running", connected=True)


def test_logs_rotation_and_cursor(iii_procs):
    entry = svc_entry("ticker", **PROCESS, env="{MODE: ticker, TICK_MS: '5'}",
                      logs="{max_bytes: 1024, keep: 2}")
    eng = ManagedEngine(iii_procs, entry, copies=("ticker",))
    eng.wait_state("ticker", "running", connected=True)
    logs = eng.project / ".iii" / "logs"
    wait_for(lambda: (logs / "ticker.log.2").exists(), 15, what="two rotations")
    first = eng.call("worker::logs", {"name": "ticker", "lines": 5})
    numbers = [int(line.split()[1]) for line in first["lines"]]
    assert len(numbers) == 5 and numbers == list(range(numbers[0], numbers[0] + 5))

    # following: every line once, across rotations
    seen: list[int] = []
    cursor = first["cursor"]
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        page = eng.call("worker::logs", {"name": "ticker", "cursor": cursor, "wait_ms": 500})
        seen += [int(line.split()[1]) for line in page["lines"] if line.startswith("tick ")]
        cursor = page["cursor"]
    assert len(seen) > 50
    assert seen == list(range(numbers[-1] + 1, numbers[-1] + 1 + len(seen)))
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["ticker.log", "ticker.log.1", "ticker.log.2"]
    assert all(p.stat().st_size < 1024 + 100 for p in logs.iterdir())

    status = eng.status("ticker", log_lines=3)
    assert len(status["log_tail"]) == 3 and status["functions"] == [
        "ticker::env", "ticker::hello", "ticker::probe"]
    err = eng.error("worker::logs", {"name": "ticker", "cursor": "x"})
    assert err.code == "W105"


def test_leftover_worker_of_a_killed_engine_is_stopped(iii_procs):
    """A worker that ignores SIGTERM survives its engine's SIGKILL (the parent-death signal is
    SIGTERM); the next engine start finds its record and stops it."""
    eng = ManagedEngine(iii_procs, svc_entry("svc", **PROCESS, env="{MODE: stubborn}"))
    pid = eng.wait_state("svc", "running", connected=True)["pid"]
    eng.close_client()
    os.kill(eng.proc.pid, signal.SIGKILL)
    eng.proc.wait(5)
    time.sleep(0.3)
    survivors = group_members(pid)  # it ignored its parent-death signal
    assert survivors and all(alive(p) for p in survivors)
    assert (eng.project / ".iii" / "run" / "svc.json").exists()

    eng2 = ManagedEngine(iii_procs, "", project=eng.project)
    eng2.proc.wait_line(rf"stopped leftover process of svc \(pid {pid}\) from a previous engine", 2)
    assert not any(alive(p) for p in survivors)
    new_pid = eng2.wait_state("svc", "running", connected=True)["pid"]
    assert new_pid != pid
    record = json.loads((eng.project / ".iii" / "run" / "svc.json").read_text())
    assert record["pid"] == new_pid and record["engine_pid"] == eng2.proc.pid
    eng2.close_client()
    os.killpg(new_pid, signal.SIGKILL)


def test_record_of_a_reused_pid_is_left_alone(iii_procs, tmp_path):
    """A record whose start time does not match is stale: its pid belongs to someone else."""
    project = iii_procs.project("proj", manager_config(0))
    run = project / ".iii" / "run"
    run.mkdir(parents=True)
    me = os.getpid()
    (run / "ghost.json").write_text(json.dumps({"pid": me, "pgid": me, "start_time": 1,
                                                "engine_pid": 999999999, "isolation": "process",
                                                "command": ["x"]}))
    eng = ManagedEngine(iii_procs, "", project=project)
    assert "leftover" not in eng.proc.stderr
    assert not (run / "ghost.json").exists()


def test_unconnected_worker_warns_and_stays_starting(iii_procs):
    eng = ManagedEngine(iii_procs, svc_entry("svc", **PROCESS, env="{MODE: silent}"),
                        env={"III_CONNECT_WARNING_S": "0.5"})
    eng.proc.wait_line(r"warning: svc has not connected after 0\.5s", 5)
    doc = eng.status("svc")
    assert (doc["state"], doc["connected"]) == ("starting", False) and doc["pid"]
    assert "warning: svc has not connected after 0.5s" in eng.log_text("svc")
    # a worker that connected on its own is not declared, yet has a status
    doc = eng.status("tester")
    assert (doc["declared"], doc["state"], doc["connected"], doc["isolation"]) == (
        False, "running", True, None)


def test_worker_dies_with_a_killed_engine(iii_procs):
    """scripts.start is exec'd by the shell, so the worker itself has the parent-death signal."""
    eng = ManagedEngine(iii_procs, svc_entry("svc", **PROCESS))
    pid = eng.wait_state("svc", "running", connected=True)["pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[1] == b"main.py"  # the leader is the worker, not sh
    eng.close_client()
    os.kill(eng.proc.pid, signal.SIGKILL)
    eng.proc.wait(5)
    wait_for(lambda: not group_members(pid), 5, what="the worker to die with its engine")


def test_a_removed_worker_stays_listed_as_stopping_until_its_process_is_gone(iii_procs):
    """`iii worker remove` waits for the worker to leave `worker::list` and then reports it
    stopped: the supervisor must keep listing it until the process has exited."""
    stubborn = svc_entry("svc", **PROCESS, env="{MODE: stubborn}", stop_timeout_ms="1500")
    eng = ManagedEngine(iii_procs, stubborn)
    pid = eng.wait_state("svc", "running", connected=True)["pid"]
    removed_at = time.monotonic()
    eng.write_config("")
    listed = wait_for(lambda: {w["name"]: w for w in eng.call("worker::list")["workers"]}
                      .get("svc", {}).get("state") == "stopping" or None, 5, what="svc stopping")
    assert listed is True and alive(pid)  # SIGTERM ignored: still running, still listed
    assert eng.error("worker::start", {"name": "svc"}).code == "W110"  # leaving: not startable
    wait_for(lambda: "svc" not in {w["name"] for w in eng.call("worker::list")["workers"]} or None,
             10, what="svc gone from the list")
    assert not alive(pid)  # gone from the list only once its process is gone
    assert time.monotonic() - removed_at >= 1.4  # it waited out the stop timeout
    assert eng.error("worker::start", {"name": "svc"}).code == "W110"
