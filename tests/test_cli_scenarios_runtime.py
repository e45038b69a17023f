"""Acceptance scenarios of spec/cli.md §10 about running workers, through the `iii` command:
4 (hot reload as an editor does it), 17 (a binary worker's environment), 28 (crash loop seen by
`status`), 29 (`logs` and `logs -f` across rotations, after the engine stopped), 33 (`add
--isolation namespace` without bubblewrap)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyiii.manager.registry.model import host_platform
from tests.iii_process import III_CMD, IIIProcs, iii_procs, kill_group, manager_config, wait_for  # noqa: F401
from tests.test_registry_build import publish_ticker
from tests.test_worker_cli import init_svc, snapshot
from tests.test_worker_cli_engine import listed, pid_alive

pytestmark = pytest.mark.timeout(120)

OTHER = Path(__file__).resolve().parent / "workers" / "managed" / "svc"
BASE = manager_config(0, "  - name: iii-state\n    config: {adapter: memory}\n"
                         "  - name: other\n    worker_path: ./other\n    isolation: process\n")


def copy_other(project: Path) -> None:
    shutil.copytree(OTHER, project / "other", ignore=shutil.ignore_patterns("__pycache__"))
    manifest = project / "other/iii.worker.yaml"
    manifest.write_text(manifest.read_text().replace("name: svc", "name: other", 1))


def group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return not pid_alive(pid)


def test_scenarios_4_and_17_hot_reload_through_an_editor(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("P", BASE)
    copy_other(project)
    init_svc(iii_procs, project)
    ticker = host_platform() in ("linux-x86_64", "linux-aarch64")
    if ticker:  # 17: a binary worker from a registry folder, added before the engine starts
        publish_ticker(project / "REG", iii_procs.root / "tw")
        added = iii_procs.run("worker", "add", "ticker", "--registry", "./REG", cwd=project)
        assert added.returncode == 0, added.stderr
    engine = iii_procs.engine(project)
    engine.wait_ready()
    other_pid = wait_for(lambda: listed(iii_procs, project)["other"].get("pid"), 15, interval=0.2)
    if ticker:
        log = project / ".iii/logs/ticker.log"
        wait_for(lambda: log.exists() and "III_WORKER_NAME=ticker" in log.read_text(), 10, what="ticker's env")

    config = project / "config.yaml"
    good = config.read_text()
    mark = len(engine.lines)
    with open(config, "a") as f:  # an editor saving in place
        f.write("  - name: svc\n    worker_path: ./svc\n")
    t0 = time.monotonic()
    svc_pid = wait_for(lambda: (lambda w: w["state"] == "running" and w["pid"])(listed(iii_procs, project)["svc"]
                                                                               if "svc" in listed(iii_procs, project)
                                                                               else {"state": None, "pid": None}),
                       5 * 1.5, interval=0.2, what="svc running")
    assert time.monotonic() - t0 < 5 * 1.5
    engine.wait_line(r"config reloaded: \+svc", 2, mark)
    table = iii_procs.run("worker", "list", cwd=project).stdout
    assert re.search(r"^svc\s+local\s+0\.1\.0\s+running\s+\d+", table, re.M), table

    mark = len(engine.lines)
    config.write_text(config.read_text().replace("    worker_path: ./svc\n", "    worker_path: ./svc\n    config: {x: 1}\n"))
    engine.wait_line(r"config reloaded: ~svc", 10, mark)
    new_pid = wait_for(lambda: (lambda w: w["state"] == "running" and w["pid"] != svc_pid and w["pid"])(
        listed(iii_procs, project)["svc"]), 10, interval=0.2, what="svc restarted")
    assert group_gone(svc_pid)

    mark = len(engine.lines)
    config.write_text(good)
    engine.wait_line(r"config reloaded: -svc", 10, mark)
    wait_for(lambda: group_gone(new_pid), 5, what="svc's group to go")

    # invalid YAML: the engine keeps everything running and says so
    mark = len(engine.lines)
    config.write_text(good + "  - name: [unclosed\n")
    engine.wait_line(r"error: config\.yaml:\d+:\d+: .* — keeping the running configuration", 10, mark)
    assert engine.proc.poll() is None
    assert listed_pid(iii_procs, project, "other") == other_pid and pid_alive(other_pid)
    r = iii_procs.run("worker", "list", cwd=project)
    assert r.returncode == 1
    assert "warning: config.yaml has errors; the engine keeps running the last valid version: " in r.stderr
    status = iii_procs.run("worker", "status", "other", cwd=project)
    assert status.returncode == 1 and "error: config.yaml:" in status.stderr
    assert "warning: config.yaml has errors; the engine keeps running the last valid version" in status.stderr
    mark = len(engine.lines)
    config.write_text(good)
    engine.wait_line(r"config\.yaml is valid again", 10, mark)
    assert listed_pid(iii_procs, project, "other") == other_pid


def listed_pid(procs: IIIProcs, project: Path, name: str) -> int | None:
    """pid from `worker::list` via the CLI (list exits 1 while config.yaml is invalid)."""
    r = procs.run("trigger", "worker::list", cwd=project)
    assert r.returncode == 0, r.stderr
    return {w["name"]: w for w in json.loads(r.stdout)["workers"]}[name]["pid"]


NUMBERED = ("i=0; while :; do i=$((i+1)); "
            "echo \"line $i ..................................................................\"; "
            "sleep 0.05; done")


def test_scenarios_28_29_crash_loop_and_logs(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("P", manager_config(0, (
        "  - name: crashy\n    worker_path: ./crashy\n    isolation: process\n"
        "    restart: {backoff_initial_ms: 100, backoff_max_ms: 400, max_restarts: 3}\n"
        "  - name: numbers\n    worker_path: ./numbers\n    isolation: process\n"
        "    logs: {max_bytes: 2048, keep: 2}\n")))
    (project / "crashy").mkdir()
    (project / "crashy/iii.worker.yaml").write_text("name: crashy\nscripts:\n  start: echo crashing; exit 1\n")
    (project / "numbers").mkdir()
    (project / "numbers/iii.worker.yaml").write_text(f"name: numbers\nscripts:\n  start: {json.dumps(NUMBERED)}\n")
    engine = iii_procs.engine(project)
    engine.wait_ready()
    logs = project / ".iii/logs"

    # 28: failed within 5 s, restarts 3, crash loop, delays near 0.1 / 0.2 / 0.4 s
    def failed() -> str | None:
        r = iii_procs.run("worker", "status", "crashy", cwd=project)
        return r.stdout if "failed" in r.stdout.split("state:", 1)[-1].splitlines()[0] else None
    out = wait_for(failed, 5 * 1.5, interval=0.3, what="crashy failed")
    assert "restarts 3" in out and "crash loop" in out, out
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+)s", (logs / "crashy.log").read_text())]
    assert len(delays) == 3
    for got, want in zip(delays, (0.1, 0.2, 0.4)):
        assert want <= got <= want * 1.5, delays
    runs = (logs / "crashy.log").read_text().count("crashing")
    again = iii_procs.run("worker", "start", "crashy", "--wait-timeout", "10", cwd=project)
    assert again.returncode == 1 and "warning: crashy failed to start: crash loop" in again.stderr
    assert (logs / "crashy.log").read_text().count("crashing") > runs

    # 29: the numbered worker rotates every ~30 lines (1.5 s)
    wait_for(lambda: (logs / "numbers.log.2").exists(), 10, what="two rotations")
    tail = iii_procs.run("worker", "logs", "numbers", "-n", "5", cwd=project)
    nums = [int(line.split()[1]) for line in tail.stdout.splitlines()]
    assert tail.returncode == 0 and len(nums) == 5 and nums == list(range(nums[0], nums[0] + 5)), tail.stdout

    follower = subprocess.Popen(III_CMD + ["worker", "logs", "numbers", "-f", "-n", "1"], cwd=project,
                                env=iii_procs.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        seen: list[int] = []
        stamps: list[float] = []
        deadline = time.monotonic() + 10
        while len(seen) < 45 and time.monotonic() < deadline:
            line = follower.stdout.readline()
            if line.startswith("line "):
                seen.append(int(line.split()[1]))
                stamps.append(time.monotonic())
        assert len(seen) == 45 and seen == list(range(seen[0], seen[0] + 45)), seen  # > one file's worth
        assert max(b - a for a, b in zip(stamps, stamps[1:])) < 1.0
        os.killpg(follower.pid, signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        kill_group(follower)
        follower.wait(5)
    assert sorted(p.name for p in logs.glob("numbers.log*")) == ["numbers.log", "numbers.log.1", "numbers.log.2"]

    engine.signal(signal.SIGTERM)
    assert engine.wait(15) == 0
    after = iii_procs.run("worker", "logs", "numbers", "-n", "3", cwd=project)
    assert after.returncode == 0 and len(after.stdout.splitlines()) == 3, after.stderr


def test_scenario_33_add_namespace_without_bubblewrap(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("P", "workers: []\n")
    init_svc(iii_procs, project, "svc2")
    before = snapshot(project)
    path = os.pathsep.join(p for p in iii_procs.env["PATH"].split(os.pathsep)
                           if not (Path(p) / "bwrap").exists())
    r = iii_procs.run("worker", "add", "./svc2", "--isolation", "namespace", cwd=project,
                      env={"PATH": path, "III_BWRAP": ""})
    assert r.returncode == 1, r.stderr
    assert "error: svc2 cannot run with isolation: namespace: bubblewrap not found" in r.stderr
    assert snapshot(project) == before
    assert not (project / ".iii/install/svc2").exists()


def test_committed_add_exits_0_when_the_worker_fails(iii_procs: IIIProcs) -> None:
    """§3.5: a committed add stays exit 0 whatever the outcome, printing the failure, the log
    tail and the hint. The engine (without bubblewrap) fails a namespace worker the CLI (with
    bubblewrap) accepted."""
    from pyiii.manager.sandbox import probe

    if not probe().available:
        pytest.skip("[ns] the CLI side needs bubblewrap")
    project = iii_procs.project("P", manager_config(0))
    init_svc(iii_procs, project)
    iii_procs.engine(project, env={"III_BWRAP": "/nonexistent/bwrap"}).wait_ready()
    r = iii_procs.run("worker", "add", "./svc", "--isolation", "namespace", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "warning: svc failed to start: namespace isolation is impossible: bubblewrap not found" in r.stderr
    assert "hint: iii worker logs svc" in r.stderr
    assert "  - name: svc\n    worker_path: ./svc\n    isolation: namespace\n" in (project / "config.yaml").read_text()
