"""Acceptance scenarios of spec/cli.md §10 that need a real registry worker under a running engine:
5, 7, 9, 22, 23, 25-27, 37, 41 (add, trigger, shutdown, reinstall, remove, clear, stop/start,
update), all through the `iii` command as a user types it.

`hello` here is the §10 fixture worker for real: a pyiii.sdk worker published into a registry
folder (greet, echo, boom, slow, record), run by the engine from its install folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyiii.manager.registry.publish import publish
from tests.iii_process import III_CMD, IIIProcs, iii_procs, kill_group, manager_config, wait_for  # noqa: F401
from tests.test_registry_fetch import served
from tests.test_worker_cli_engine import listed, pid_alive

pytestmark = pytest.mark.timeout(120)

HELLO_MAIN = '''\
import asyncio, os, signal, threading
from pyiii.sdk import InitOptions, register_worker

NAME = os.environ.get("III_WORKER_NAME", "hello")
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
iii = register_worker(os.environ.get("III_URL"), InitOptions(worker_name=NAME))


def greet(data):
    return {"greeting": "hello " + str((data or {}).get("who", "world"))}


def echo(data):
    return data


def boom(data):
    raise RuntimeError("boom on purpose")


async def slow(data):
    print("slow started", flush=True)
    await asyncio.sleep(2)
    return {"slept": 2}


async def record(data):
    await iii.trigger_async({"function_id": "state::set",
                             "payload": {"scope": "hello", "key": "record", "value": data}})
    return {"recorded": data}


for fid, fn in (("greet", greet), ("echo", echo), ("boom", boom), ("slow", slow), ("record", record)):
    iii.register_function("hello::" + fid, fn)
print("hello " + os.environ.get("III_WORKER_VERSION", "?") + " serving", flush=True)
while not done.wait(0.2):
    pass
print("bye", flush=True)
closer = threading.Thread(target=iii.shutdown, daemon=True)
closer.start()
closer.join(5)
os._exit(0)
'''
BASE = manager_config(0, "  - name: iii-state\n")


def write_hello(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "iii.worker.yaml").write_text(
        f"name: hello\ndescription: Greets people\nversion: {version}\nruntime: python\n"
        "dependencies:\n  iii-state: \"*\"\n"
        "scripts:\n  install: echo installed > installed.txt\n  start: '\"$III_PYTHON\" main.py'\n")
    (folder / "main.py").write_text(HELLO_MAIN)
    return folder


def publish_hello(reg: Path, work: Path, version: str, tag: str | None = None) -> None:
    publish(write_hello(work / f"hello-{version}", version), reg, tag=tag)


@pytest.fixture(scope="module")
def hello_reg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hello-reg")
    for v in ("1.0.0", "1.2.0", "1.3.0-rc.1"):
        publish_hello(root / "REG", root / "work", v)
    from tests.test_registry_build import publish_worker

    for v in ("1.3.0", "2.0.1"):
        publish_worker(root / "REG", root / "work", "c", v)
    publish_worker(root / "REG", root / "work", "d", "1.0.0", deps={"c": "^1.0.0", "e": "^1"})
    publish_worker(root / "REG", root / "work", "e", "1.1.0", deps={"c": ">=1.2.0 <2"})
    return root / "REG"


def project_with_reg(procs: IIIProcs, reg: Path, config: str = BASE) -> Path:
    project = procs.project("P", config)
    shutil.copytree(reg, project / "REG")
    return project


def files(project: Path) -> dict[str, bytes | None]:
    return {n: (project / n).read_bytes() if (project / n).exists() else None for n in ("config.yaml", "iii.lock")}


def mtimes(project: Path) -> list[int]:
    return [(project / n).stat().st_mtime_ns for n in ("config.yaml", "iii.lock")]


def install_dir(project: Path) -> Path:
    found = [p for p in (project / ".iii/install/hello").iterdir() if not p.name.startswith(".")]
    assert len(found) == 1, found
    return found[0]


def trigger(procs: IIIProcs, project: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return procs.run("trigger", *args, cwd=project, timeout=timeout)


def group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return not pid_alive(pid)


# --------------------------------------------------------------------------- 9, 7, 23

def test_scenarios_9_7_23_add_call_and_remove_with_the_engine_up(iii_procs: IIIProcs, hello_reg: Path) -> None:
    project = project_with_reg(iii_procs, hello_reg)
    engine = iii_procs.engine(project)
    engine.wait_ready()

    # 9: add from ./REG while the engine runs
    added = iii_procs.run("worker", "add", "hello", "--registry", "./REG", cwd=project, timeout=60)
    assert added.returncode == 0, added.stderr
    assert (project / "config.yaml").read_text() == BASE + "  - name: hello\n    version: ^1.2.0\n"
    lock = (project / "iii.lock").read_text()
    sha = hashlib.sha256((project / "REG/packages/hello/hello-1.2.0.tar.gz").read_bytes()).hexdigest()
    assert ("  hello:\n    version: 1.2.0\n    type: package\n    dependencies:\n      iii-state: \"*\"\n"
            f"    source:\n      url: ./REG/packages/hello/hello-1.2.0.tar.gz\n      sha256: {sha}\n") in lock
    assert "  iii-state:\n" in lock
    folder = project / f".iii/install/hello/1.2.0-{sha[:12]}"
    assert (folder / ".complete").is_file()
    assert re.search(r"ok: hello is running \(connected after \d+\.\ds\)\n$", added.stderr), added.stderr
    greet = trigger(iii_procs, project, "hello::greet", "who=x")
    assert (greet.returncode, json.loads(greet.stdout)) == (0, {"greeting": "hello x"}), greet.stderr

    status = iii_procs.run("worker", "status", "hello", cwd=project)
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in status.stdout.splitlines()
                                                  if line and not line.startswith(" ") and ":" in line)}
    assert (fields["kind"], fields["version"]) == ("package (registry ./REG)", "1.2.0 (locked); declared ^1.2.0")
    assert fields["installed"] == f".iii/install/hello/1.2.0-{sha[:12]}" and fields["log"] == ".iii/logs/hello.log"

    # 7 with the real worker
    boom = trigger(iii_procs, project, "hello::boom")
    assert boom.returncode == 1 and "error: hello::boom failed: [" in boom.stderr, boom.stderr
    assert trigger(iii_procs, project, "nope::nope").returncode == 1
    slow = trigger(iii_procs, project, "hello::slow", "--timeout", "200ms")
    assert slow.returncode == 124 and "error: hello::slow timed out after 200ms" in slow.stderr
    void = trigger(iii_procs, project, "hello::record", "--void", "v=2")
    assert (void.returncode, void.stdout) == (0, ""), void.stderr

    def recorded() -> bool:
        got = trigger(iii_procs, project, "state::get", "scope=hello", "key=record")
        return got.returncode == 0 and json.loads(got.stdout) == {"v": 2}
    wait_for(recorded, 2 * 1.5, interval=0.2, what="state::get to show v: 2")

    # 23: remove asks (no terminal → exit 2), then removes and stops
    pid = listed(iii_procs, project)["hello"]["pid"]
    before = files(project)
    asked = iii_procs.run("worker", "remove", "hello", cwd=project, input="")
    assert asked.returncode == 2 and "hint: pass -y" in asked.stderr
    assert files(project) == before
    removed = iii_procs.run("worker", "remove", "-y", "hello", cwd=project)
    assert removed.returncode == 0 and "ok: removed hello (stopped)" in removed.stderr, removed.stderr
    assert (project / "config.yaml").read_text() == BASE
    lock = (project / "iii.lock").read_text()
    assert "  hello:" not in lock and "  iii-state:\n" in lock
    assert group_gone(pid)
    assert folder.is_dir()  # artifacts stay until `clear`
    nosuch = iii_procs.run("worker", "remove", "-y", "nosuch", cwd=project)
    assert nosuch.returncode == 1 and "error: no worker named 'nosuch' in config.yaml" in nosuch.stderr
    assert iii_procs.run("worker", "add", "d", "--registry", "./REG", "--no-wait", cwd=project).returncode == 0
    before = files(project)
    protected = iii_procs.run("worker", "remove", "-y", "c", cwd=project)
    assert protected.returncode == 1 and "error: d depends on c (^1.0.0)" in protected.stderr
    assert files(project) == before

    engine.signal(signal.SIGTERM)
    assert engine.wait(15) == 0
    down = iii_procs.run("trigger", "hello::greet", cwd=project)
    assert down.returncode == 3 and "error: no iii engine is answering at ws://127.0.0.1:" in down.stderr


# --------------------------------------------------------------------------- 5

def test_scenario_5_graceful_shutdown_with_a_call_in_flight(iii_procs: IIIProcs, hello_reg: Path) -> None:
    project = project_with_reg(iii_procs, hello_reg)
    assert iii_procs.run("worker", "add", "hello", "--registry", "./REG", cwd=project, timeout=60).returncode == 0
    engine = iii_procs.engine(project)
    engine.wait_ready()
    wait_for(lambda: listed(iii_procs, project)["hello"]["connected"], 20, interval=0.2, what="hello")
    rec = trigger(iii_procs, project, "hello::record", "v=1")
    assert rec.returncode == 0, rec.stderr
    call = subprocess.Popen(III_CMD + ["trigger", "hello::slow"], cwd=project, env=iii_procs.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # SIGTERM 0.5 s after the call started (on a loaded machine the CLI itself may take longer
        # than 0.5 s to connect, and a call not yet made is not in flight)
        log = project / ".iii/logs/hello.log"
        wait_for(lambda: "slow started" in log.read_text(), 10, interval=0.05, what="the call in flight")
        time.sleep(0.5)
        t0 = time.monotonic()
        engine.signal(signal.SIGTERM)
        out, err = call.communicate(timeout=15)
        assert (call.returncode, json.loads(out)) == (0, {"slept": 2}), err
        assert engine.wait(12) == 0, engine.stderr
        assert time.monotonic() - t0 < 12
    finally:
        kill_group(call)
        call.wait(5)
    assert "stopping (SIGTERM)" in (project / ".iii/logs/hello.log").read_text()
    assert list((project / ".iii/run").iterdir()) == []
    again = iii_procs.engine(project)
    again.wait_ready()
    got = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
        trigger(iii_procs, project, "state::get", "scope=hello", "key=record")), 10, interval=0.2)
    assert json.loads(got.stdout) == {"v": 1}


# --------------------------------------------------------------------------- 22, 25, 26, 27

def test_scenarios_22_25_26_27_reinstall_clear_stop_start(iii_procs: IIIProcs, hello_reg: Path) -> None:
    project = project_with_reg(iii_procs, hello_reg)
    server = served(project / "REG")  # kept up for the whole test: start reinstalls from it
    http = server.__enter__()
    iii_procs.on_close(lambda: server.__exit__(None, None, None))
    assert iii_procs.run("worker", "add", "hello", "--registry", http.url, cwd=project,
                         timeout=60).returncode == 0
    # 26/27 engine down
    down = iii_procs.run("worker", "list", cwd=project)
    assert down.returncode == 0 and "note: the engine is not running" in down.stderr
    assert [line.split()[3] for line in down.stdout.splitlines()[1:]] == ["stopped"] * 3
    assert iii_procs.run("worker", "status", "hello", cwd=project).returncode == 3
    assert iii_procs.run("worker", "status", "nosuch", cwd=project).returncode == 1
    assert iii_procs.run("worker", "start", "hello", cwd=project).returncode == 3

    engine = iii_procs.engine(project)
    engine.wait_ready()
    pid = wait_for(lambda: listed(iii_procs, project)["hello"].get("pid"), 20, interval=0.2)
    wait_for(lambda: listed(iii_procs, project)["hello"]["connected"], 20, interval=0.2)

    # 22: reinstall re-fetches (a new package GET), restores the file, restarts; files untouched
    folder = install_dir(project)
    (folder / "installed.txt").unlink()
    before, times = files(project), mtimes(project)
    # the server's log reaches us through a pipe: let the add's GET land first
    wait_for(lambda: any("GET /packages/hello/" in line for line in http.log), 5, what="the add's GET")
    gets = len([line for line in http.log if "GET /packages/hello/" in line])
    again = iii_procs.run("worker", "reinstall", "hello", "--registry", http.url, cwd=project, timeout=60)
    assert again.returncode == 0, again.stderr
    assert (folder / "installed.txt").is_file()
    wait_for(lambda: len([line for line in http.log if "GET /packages/hello/" in line]) == gets + 1, 5,
             what="the server to log the new package GET")
    assert files(project) == before and mtimes(project) == times
    pid2 = listed(iii_procs, project)["hello"]["pid"]
    assert pid2 != pid and not pid_alive(pid)

    # 25: clear refuses a running worker, asks without -y
    running = iii_procs.run("worker", "clear", "-y", "hello", cwd=project)
    assert running.returncode == 1 and "error: hello is running" in running.stderr
    assert iii_procs.run("worker", "clear", "hello", cwd=project, input="").returncode == 2
    # 27: stop asks, stops, is idempotent; an unrelated edit leaves it stopped
    assert iii_procs.run("worker", "stop", "hello", cwd=project, input="").returncode == 2
    stopped = iii_procs.run("worker", "stop", "-y", "hello", cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    assert group_gone(pid2)
    twice = iii_procs.run("worker", "stop", "-y", "hello", cwd=project)
    assert twice.returncode == 0 and "hello is already stopped" in twice.stderr
    mark = len(engine.lines)
    config = project / "config.yaml"
    config.write_text(config.read_text().replace("  - name: iii-state\n", "  - name: iii-state\n    config: {adapter: memory}\n"))
    engine.wait_line(r"config reloaded: ~iii-state", 10, mark)
    assert listed(iii_procs, project)["hello"]["state"] == "stopped"

    before = files(project)
    log_before = (project / ".iii/logs/hello.log").read_bytes()
    (project / "data/managed/hello").mkdir(parents=True, exist_ok=True)
    (project / "data/managed/hello/keep.txt").write_text("mine")
    blobs = list((iii_procs.home / "iii-cache/blobs/sha256").iterdir())
    assert len(blobs) == 1
    cleared = iii_procs.run("worker", "clear", "-y", "hello", cwd=project)
    assert cleared.returncode == 0 and "ok: cleared hello (" in cleared.stderr, cleared.stderr
    assert not (project / ".iii/install/hello").exists() and not blobs[0].exists()
    assert files(project) == before
    assert (project / ".iii/logs/hello.log").read_bytes().startswith(log_before)
    assert (project / "data/managed/hello/keep.txt").read_text() == "mine"

    # start reinstalls from the lock (state installing), then runs
    started = iii_procs.run("worker", "start", "hello", cwd=project, timeout=60)
    assert started.returncode == 0 and "ok: hello is running" in started.stderr, started.stderr
    assert re.search(r"^\[iii\] \S+ installing hello 1\.2\.0$", (project / ".iii/logs/hello.log").read_text(), re.M)
    pid3 = listed(iii_procs, project)["hello"]["pid"]
    restarted = iii_procs.run("worker", "restart", "hello", cwd=project, timeout=60)
    assert restarted.returncode == 0, restarted.stderr
    pid4 = listed(iii_procs, project)["hello"]["pid"]
    assert pid4 != pid3 and not pid_alive(pid3)

    # an engine restart runs a stopped worker again
    assert iii_procs.run("worker", "stop", "-y", "hello", cwd=project).returncode == 0
    engine.signal(signal.SIGTERM)
    assert engine.wait(15) == 0
    iii_procs.engine(project).wait_ready()
    wait_for(lambda: listed(iii_procs, project)["hello"]["state"] == "running", 20, interval=0.2)


# --------------------------------------------------------------------------- 37

def test_scenario_37_update_restarts_the_running_worker(iii_procs: IIIProcs, hello_reg: Path) -> None:
    project = project_with_reg(iii_procs, hello_reg)
    assert iii_procs.run("worker", "add", "hello", "--registry", "./REG", cwd=project, timeout=60).returncode == 0
    (project / "svc").mkdir()
    (project / "svc/iii.worker.yaml").write_text("name: svc\nversion: 0.1.0\nscripts: {start: sleep 60}\n")
    with open(project / "config.yaml", "a") as f:
        f.write("  - name: svc\n    worker_path: ./svc\n    enabled: false\n")
    for v in ("1.4.0", "2.0.0"):
        publish_hello(project / "REG", iii_procs.root / "more", v)
    engine = iii_procs.engine(project)
    engine.wait_ready()
    wait_for(lambda: listed(iii_procs, project)["hello"]["connected"], 20, interval=0.2)
    old_pid = listed(iii_procs, project)["hello"]["pid"]
    config_before = (project / "config.yaml").read_bytes()
    updated = iii_procs.run("worker", "update", "--registry", "./REG", cwd=project, timeout=60)
    assert updated.returncode == 0, updated.stderr
    assert "hello 1.2.0 → 1.4.0" in updated.stderr
    assert "  hello:\n    version: 1.4.0\n" in (project / "iii.lock").read_text()
    assert (project / "config.yaml").read_bytes() == config_before  # still ^1.2.0
    status = iii_procs.run("worker", "status", "hello", "--json", cwd=project)
    doc = json.loads(status.stdout)
    assert doc["version"] == "1.4.0" and doc["pid"] != old_pid and not pid_alive(old_pid)
    assert "hello 1.4.0 serving" in (project / ".iii/logs/hello.log").read_text()
    lock_mtime = (project / "iii.lock").stat().st_mtime_ns
    same = iii_procs.run("worker", "update", "--registry", "./REG", cwd=project, timeout=60)
    assert same.returncode == 0 and "everything is up to date" in same.stderr
    assert (project / "iii.lock").stat().st_mtime_ns == lock_mtime
    local = iii_procs.run("worker", "update", "svc", "--registry", "./REG", cwd=project)
    assert local.returncode == 1 and "error: svc is a local worker" in local.stderr
    assert iii_procs.run("worker", "update", "nosuch", "--registry", "./REG", cwd=project).returncode == 1


# --------------------------------------------------------------------------- 41

def test_scenario_41_publish_then_add_runs(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("P", BASE)
    assert iii_procs.run("worker", "init", "pub", cwd=project).returncode == 0
    manifest = project / "pub/iii.worker.yaml"  # offline: no pip install step
    manifest.write_text("\n".join(line for line in manifest.read_text().splitlines()
                                  if "install:" not in line) + "\n")
    first = iii_procs.run("worker", "publish", "./pub", "--to", "REG3", cwd=project)
    assert (first.returncode, first.stdout) == (0, "pub@0.1.0\n"), first.stderr
    meta = json.loads((project / "REG3/meta/pub.json").read_text())
    tarball = project / "REG3/packages/pub/pub-0.1.0.tar.gz"
    assert (project / "REG3/index.json").is_file()
    sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert meta["versions"]["0.1.0"]["package"]["sha256"] == sha
    dup = iii_procs.run("worker", "publish", "./pub", "--to", "REG3", cwd=project)
    assert dup.returncode == 1 and "already published" in dup.stderr
    assert iii_procs.run("worker", "publish", "./pub", "--to", "REG4", cwd=project).returncode == 0
    assert hashlib.sha256((project / "REG4/packages/pub/pub-0.1.0.tar.gz").read_bytes()).hexdigest() == sha
    iii_procs.engine(project).wait_ready()
    added = iii_procs.run("worker", "add", "pub", "--registry", "./REG3", cwd=project, timeout=60)
    assert added.returncode == 0 and "ok: pub is running" in added.stderr, added.stderr
    hi = trigger(iii_procs, project, "pub::hello", "who=p")
    assert json.loads(hi.stdout) == {"message": "hello, p"}
    (project / "bad").mkdir()
    (project / "bad/iii.worker.yaml").write_text("name: iii-state\nversion: 1.0.0\nscripts: {start: run}\n")
    refused = iii_procs.run("worker", "publish", "./bad", "--to", "REG3", cwd=project)
    assert refused.returncode == 2, refused.stderr
