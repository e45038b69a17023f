"""spec/cli.md §1.5 (hot reload) and §3.2 (transactions) behaviours that the scenario tests do not
reach: the reload settles 300 ms after the last event, waits for `.iii/commit.lock`, keeps an
invalid first-party `config:` block from replacing the running one; the engine recovers an
interrupted commit at startup; a mutating command waits for the project lock and says so, and
refuses an invalid iii.lock without touching anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyiii.manager.registry.firstparty import shipped_version
from pyiii.manager.transaction import commit_lock
from tests.iii_process import IIIProcs, iii_procs, manager_config, wait_for  # noqa: F401
from tests.test_worker_cli import snapshot

pytestmark = pytest.mark.timeout(90)

BASE = manager_config(0, "  - name: iii-state\n    config: {adapter: memory}\n")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def reloads(lines: list[str], start: int) -> list[str]:
    return [line.split("config reloaded: ", 1)[1] for line in lines[start:] if "config reloaded: " in line]


def test_reload_settles_waits_for_the_commit_lock_and_keeps_a_bad_block(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("P", BASE)
    (project / ".iii").mkdir()
    engine = iii_procs.engine(project)
    url = engine.wait_ready()
    config = project / "config.yaml"

    # §0.6: an engine serving another project's config file is refused (exit 3)
    other = iii_procs.project("Q", "workers:\n  - name: iii-state\n")
    wrong = iii_procs.run("worker", "status", "iii-state", "--engine", url, cwd=other)
    assert wrong.returncode == 3
    assert f"error: the engine at {url} serves {config}, not {other / 'config.yaml'}" in wrong.stderr

    # two saves 100 ms apart are one reload, 300 ms after the last one
    mark = len(engine.lines)
    atomic_write(config, BASE + "  - name: iii-cron\n")
    time.sleep(0.1)
    atomic_write(config, BASE + "  - name: iii-cron\n  - name: iii-pubsub\n")
    engine.wait_line(r"config reloaded: ", 10, mark)
    time.sleep(0.6)
    assert reloads(engine.lines, mark) == ["+iii-cron +iii-pubsub"]

    # a commit in progress (exclusive .iii/commit.lock) delays the reload until it ends
    mark = len(engine.lines)
    holder = commit_lock(project / ".iii")
    holder.__enter__()
    try:
        atomic_write(config, BASE + "  - name: iii-cron\n")
        time.sleep(1.5)
        assert reloads(engine.lines, mark) == []
    finally:
        holder.__exit__(None, None, None)
    engine.wait_line(r"config reloaded: -iii-pubsub", 10, mark)

    # an invalid config: block of an in-process worker: only that error, the old block stays
    mark = len(engine.lines)
    atomic_write(config, BASE.replace("{adapter: memory}", "{adapter: nosuch}") + "  - name: iii-cron\n")
    engine.wait_line(r"ERROR manager: iii-state: new config rejected, keeping the old one: "
                     r"config\.adapter: unknown adapter 'nosuch'", 10, mark)
    assert engine.proc.poll() is None
    listed = iii_procs.run("trigger", "worker::status", "name=iii-state", cwd=project)
    doc = json.loads(listed.stdout)
    assert (doc["state"], doc["connected"]) == ("running", True)
    stored = iii_procs.run("trigger", "state::set", "scope=s", "key=k", "value=1", cwd=project)
    assert stored.returncode == 0, stored.stderr  # still serving with the old block
    assert doc["reason"] is None
    listing = json.loads(iii_procs.run("trigger", "worker::list", cwd=project).stdout)
    assert listing["config_error"] is None  # only that worker's error, not a file error


def test_engine_recovers_an_interrupted_commit_at_startup(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("P", "not: [valid\n")
    (project / "iii.lock").write_text("garbage\n")
    txn = project / ".iii/txn"
    txn.mkdir(parents=True)
    (txn / "config.yaml.orig").write_text(BASE)
    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True).stdout)
    (txn / "journal.json").write_text(json.dumps({"pid": pid, "files": [
        {"path": str(project / "config.yaml"), "backup": "config.yaml.orig"},
        {"path": str(project / "iii.lock"), "backup": None}]}))
    engine = iii_procs.engine(project)
    engine.wait_ready()
    assert (f"warning: restored config.yaml and iii.lock from an interrupted iii worker command (pid {pid})"
            in engine.stderr)
    assert (project / "config.yaml").read_text() == BASE
    assert not (project / "iii.lock").exists() and not (txn / "journal.json").exists()


def test_mutating_command_waits_for_the_project_lock(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("P", "workers: []\n")
    (project / ".iii").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,os,sys,time\n"
         "fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT)\nfcntl.flock(fd,fcntl.LOCK_EX)\n"
         "os.write(fd,b'{\"pid\": %d, \"argv\": [\"iii\", \"worker\", \"add\", \"zero\"]}' % os.getpid())\n"
         "print('held',flush=True)\ntime.sleep(1.5)", str(project / ".iii" / "lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        r = iii_procs.run("worker", "add", "iii-state", "--lock-timeout", "20", cwd=project)
        assert r.returncode == 0, r.stderr
        assert f"waiting for another iii worker command (pid {holder.pid}: iii worker add zero)" in r.stderr
        assert time.monotonic() - started >= 0.5
        assert (project / "config.yaml").read_text() == "workers:\n  - name: iii-state\n"
    finally:
        holder.kill()
        holder.wait()

    # an invalid iii.lock: exit 1, the hint, nothing written
    (project / "iii.lock").write_text("version: 1\nworkers:\n  x: [\n")
    before = snapshot(project)
    r = iii_procs.run("worker", "add", "iii-cron", cwd=project)
    assert r.returncode == 1 and "error: iii.lock:" in r.stderr
    assert "hint: fix iii.lock first; nothing was changed" in r.stderr
    assert snapshot(project) == before
    assert shipped_version()  # the first-party index needs no network
