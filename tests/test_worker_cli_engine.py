"""`iii worker` against a running engine (spec/cli.md §3.5, §4.1-4.8, §10 scenarios 18, 23,
26, 27, 29, 30): add while the engine runs → the worker runs and is callable; list, status,
stop/start/restart, logs (-f), exec and remove go through the engine's `worker::*` functions."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.iii_process import III_CMD, IIIProcs, iii_procs, kill_group, manager_config, wait_for  # noqa: F401
from pyiii.manager.runrecord import pid_alive
from tests.test_worker_cli import init_svc, snapshot

MANAGED_SVC = Path(__file__).resolve().parent / "workers" / "managed" / "svc" / "main.py"
PEER_MODULES = Path(__file__).resolve().parent / "peers" / "node_modules"  # holds iii-sdk 0.22
BASE = manager_config(0, "  - name: iii-state   # memory only\n    config: {adapter: memory}\n")


def listed(procs: IIIProcs, project: Path) -> dict[str, dict]:
    r = procs.run("worker", "list", "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    return {w["name"]: w for w in json.loads(r.stdout)["workers"]}


def test_add_list_status_logs_exec_remove(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("p", BASE)
    original = snapshot(project)
    init_svc(iii_procs, project, fast=False)  # the template as written, pip install included
    iii_procs.engine(project).wait_ready()

    added = iii_procs.run("worker", "add", "./svc", cwd=project)
    assert added.returncode == 0, added.stderr
    assert re.search(r"ok: svc is running \(connected after \d+\.\ds\)", added.stderr), added.stderr
    called = iii_procs.run("trigger", "svc::hello", "who=a", cwd=project)
    assert called.returncode == 0 and json.loads(called.stdout) == {"message": "hello, a"}

    table = iii_procs.run("worker", "list", cwd=project)
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "VERSION", "STATE", "PID", "ISOLATION"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["iii-worker-manager", "builtin", lines[1].split()[2], "running"],
        ["iii-state", "builtin", lines[2].split()[2], "running"], ["svc", "local", "0.1.0", "running"]]
    workers = listed(iii_procs, project)
    pid = workers["svc"]["pid"]
    assert isinstance(pid, int) and pid_alive(pid)
    assert lines[3].split()[4] == str(pid)

    status = iii_procs.run("worker", "status", "svc", cwd=project)
    assert status.returncode == 0, status.stderr
    fields = dict(line.split(":", 1) for line in status.stdout.splitlines() if not line.startswith(" ") and ":" in line)
    assert fields["name"].strip() == "svc" and fields["kind"].strip() == "local (./svc)"
    assert fields["connected"].strip() == "yes — functions: svc::hello"
    assert fields["state"].strip().startswith("running since ") and f"pid {pid}" in fields["state"]
    assert "recent log:" in status.stdout and "svc is serving svc::hello" in status.stdout
    doc = json.loads(iii_procs.run("worker", "status", "svc", "--json", cwd=project).stdout)
    assert doc["ok"] is True and doc["state"] == "running" and doc["functions"] == ["svc::hello"]

    logs = iii_procs.run("worker", "logs", "svc", "-n", "1", cwd=project)
    assert logs.returncode == 0 and logs.stdout == "svc is serving svc::hello\n"

    ran = iii_procs.run("worker", "exec", "svc", "--", "sh", "-c", "echo out; echo err >&2; exit 7", cwd=project)
    assert (ran.returncode, ran.stdout) == (7, "out\n") and ran.stderr.endswith("err\n")
    slow = iii_procs.run("worker", "exec", "svc", "--timeout", "200ms", "--", "sleep", "5", cwd=project)
    assert slow.returncode == 124
    assert iii_procs.run("worker", "exec", "svc", "--", "no-such-cmd", cwd=project).returncode == 127
    inproc = iii_procs.run("worker", "exec", "iii-state", "--", "true", cwd=project)
    assert inproc.returncode == 125 and "runs inside the engine process" in inproc.stderr

    before_remove = snapshot(project)
    asked = iii_procs.run("worker", "remove", "svc", cwd=project)
    assert asked.returncode == 2 and "pass -y" in asked.stderr
    assert snapshot(project) == before_remove
    removed = iii_procs.run("worker", "remove", "-y", "svc", cwd=project)
    assert removed.returncode == 0 and "ok: removed svc (stopped)" in removed.stderr
    assert not pid_alive(pid)
    assert snapshot(project) == original
    assert (project / ".iii" / "install" / "svc").exists()  # artifacts stay until `clear`


def test_stop_start_restart(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("p", BASE)
    init_svc(iii_procs, project)
    iii_procs.engine(project).wait_ready()
    assert iii_procs.run("worker", "add", "./svc", "--no-wait", cwd=project).returncode == 0
    pid = wait_for(lambda: listed(iii_procs, project)["svc"].get("pid"), 15, interval=0.2, what="svc's pid")
    assert iii_procs.run("worker", "stop", "svc", cwd=project).returncode == 2  # no terminal, no -y
    stopped = iii_procs.run("worker", "stop", "-y", "svc", cwd=project)
    assert stopped.returncode == 0 and "ok: stopped svc" in stopped.stderr
    assert not pid_alive(pid)
    again = iii_procs.run("worker", "stop", "-y", "svc", cwd=project)
    assert again.returncode == 0 and "svc is already stopped" in again.stderr
    stopped_exec = iii_procs.run("worker", "exec", "svc", "--", "true", cwd=project)
    assert stopped_exec.returncode == 125
    assert "error: svc is not running\nhint: iii worker start svc" in stopped_exec.stderr
    manager = iii_procs.run("worker", "stop", "-y", "iii-worker-manager", cwd=project)
    assert manager.returncode == 1
    assert "error: iii-worker-manager is the engine's listener and cannot be stopped" in manager.stderr

    started = iii_procs.run("worker", "start", "svc", cwd=project)
    assert started.returncode == 0 and "ok: svc is running" in started.stderr
    pid2 = listed(iii_procs, project)["svc"]["pid"]
    assert pid2 != pid and pid_alive(pid2)
    already = iii_procs.run("worker", "start", "svc", cwd=project)
    assert already.returncode == 0 and "svc is already running" in already.stderr
    restarted = iii_procs.run("worker", "restart", "svc", cwd=project)
    assert restarted.returncode == 0, restarted.stderr
    pid3 = listed(iii_procs, project)["svc"]["pid"]
    assert pid3 not in (pid, pid2) and not pid_alive(pid2)

    busy = iii_procs.run("worker", "clear", "-y", "svc", cwd=project)
    assert busy.returncode == 1
    assert "error: svc is running\nhint: stop it first with `iii worker stop -y svc`" in busy.stderr


def test_logs_follow_first_party_add_and_failures(iii_procs: IIIProcs) -> None:
    crashy = ("  - name: crashy\n    worker_path: ./crashy\n    enabled: false\n"
              "    restart: {max_restarts: 1, backoff_initial_ms: 100, reset_after_s: 30}\n")
    project = iii_procs.project("p", BASE + crashy)
    (project / "crashy").mkdir()
    (project / "crashy" / "iii.worker.yaml").write_text("name: crashy\nscripts:\n  start: echo crashing; exit 1\n")
    tick = project / "tick"
    tick.mkdir()
    shutil.copy(MANAGED_SVC, tick / "main.py")
    (tick / "iii.worker.yaml").write_text("name: tick\nversion: 1.0.0\nscripts:\n  start: '\"$III_PYTHON\" main.py'\n")
    iii_procs.engine(project).wait_ready()
    added = iii_procs.run("worker", "add", "./tick", "iii-queue", "--json", cwd=project)
    assert added.returncode == 0, added.stderr
    doc = json.loads(added.stdout)
    assert doc["added"] == ["tick", "iii-queue"] and doc["ready"] == {"tick": "running", "iii-queue": "running"}
    (project / "config.yaml").write_text((project / "config.yaml").read_text().replace(
        "    worker_path: ./tick\n", "    worker_path: ./tick\n    env: {MODE: ticker, TICK_MS: \"50\"}\n"))
    wait_for(lambda: "tick 3" in (project / ".iii" / "logs" / "tick.log").read_text(), 15, what="ticks")

    last = iii_procs.run("worker", "logs", "tick", "-n", "3", cwd=project).stdout.splitlines()
    numbers = [int(line.split()[1]) for line in last]
    assert len(numbers) == 3 and numbers == list(range(numbers[0], numbers[0] + 3))

    follower = subprocess.Popen(III_CMD + ["worker", "logs", "tick", "-f", "-n", "1"], cwd=project,
                                env=iii_procs.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 10
        while len(seen) < 15 and time.monotonic() < deadline:
            line = follower.stdout.readline()
            if line.startswith("tick "):
                seen.append(int(line.split()[1]))
        assert len(seen) == 15 and seen == list(range(seen[0], seen[0] + 15)), seen
        os.killpg(follower.pid, signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        kill_group(follower)
        follower.wait(5)

    started = iii_procs.run("worker", "start", "crashy", "--wait-timeout", "20", cwd=project)
    assert started.returncode == 1, started.stderr
    assert "note: crashy is disabled in config.yaml; started for this engine run only" in started.stderr
    assert "warning: crashy failed to start: crash loop" in started.stderr
    assert "  crashing" in started.stderr and "hint: iii worker logs crashy" in started.stderr

    # the node template runs as written (its `npm install` replaced by the test suite's copy)
    assert iii_procs.run("worker", "init", "web", "--language", "node", cwd=project).returncode == 0
    manifest = project / "web" / "iii.worker.yaml"
    manifest.write_text(manifest.read_text().replace("npm install --no-audit --no-fund", f"ln -s {PEER_MODULES} node_modules"))
    web = iii_procs.run("worker", "add", "./web", cwd=project)
    assert web.returncode == 0 and "ok: web is running" in web.stderr, web.stderr
    hello = iii_procs.run("trigger", "web::hello", "who=node", cwd=project)
    assert json.loads(hello.stdout) == {"message": "hello, node"}

    (project / "slow").mkdir()
    (project / "slow" / "iii.worker.yaml").write_text("name: slow\nscripts:\n  start: sleep 30\n")
    waited = iii_procs.run("worker", "add", "./slow", "--wait-timeout", "1", cwd=project)
    assert waited.returncode == 0, waited.stderr
    assert ("warning: slow has not connected after 1s; it stays declared — watch it with "
            "`iii worker status slow`") in waited.stderr



def test_reinstall_reruns_install_and_restarts_and_config_error_note(iii_procs: IIIProcs) -> None:
    """`reinstall ./svc` re-runs install (the prepared marker is dropped) and restarts the
    running worker; an invalid config.yaml makes `list` exit 1 with the engine's note (§1.5)."""
    project = iii_procs.project("p", BASE)
    svc = init_svc(iii_procs, project)
    (svc / "iii.worker.yaml").write_text((svc / "iii.worker.yaml").read_text().replace(
        "scripts:\n", "scripts:\n  install: echo install-ran >> installs.txt\n"))
    iii_procs.engine(project).wait_ready()
    assert iii_procs.run("worker", "add", "./svc", cwd=project).returncode == 0
    assert (svc / "installs.txt").read_text() == "install-ran\n"
    pid = listed(iii_procs, project)["svc"]["pid"]
    files = snapshot(project)

    again = iii_procs.run("worker", "reinstall", "./svc", cwd=project)
    assert again.returncode == 0, again.stderr
    assert "ok: reinstalled svc 0.1.0" in again.stderr and "ok: svc is running" in again.stderr
    assert (svc / "installs.txt").read_text() == "install-ran\ninstall-ran\n"
    new_pid = listed(iii_procs, project)["svc"]["pid"]
    assert new_pid != pid and not pid_alive(pid)
    assert snapshot(project) == files

    (project / "config.yaml").write_text(BASE + "\t- broken\n")

    def noted() -> subprocess.CompletedProcess[str] | None:
        r = iii_procs.run("worker", "list", cwd=project)
        return r if "the engine keeps running the last valid version" in r.stderr else None
    r = wait_for(noted, 10, interval=0.3, what="the engine's config_error")
    assert r.returncode == 1 and "error: config.yaml:" in r.stderr
    assert pid_alive(new_pid)  # the running set is kept
