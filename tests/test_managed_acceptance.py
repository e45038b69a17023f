"""Acceptance checks of managed workers that the per-command tests leave open (spec/cli.md §1.5,
§4.8, §4.12, §8.2, §9.1, §9.2, §9.5): the engine restart bringing workers back, the Node
template running unmodified with the official npm `iii-sdk`, manifest resources applied as
rlimits inside the worker and reported truthfully, isolation never claimed when not in force,
a corrupt config.yaml under a running engine, and `exec` running with the worker's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from pyiii.manager.limits import CgroupTree
from pyiii.manager.runrecord import pid_alive
from pyiii.manager.sandbox import probe
from pyiii.sdk import InitOptions, InvocationError, register_worker
from tests.iii_process import IIIProcs, iii_procs, manager_config, wait_for  # noqa: F401
from tests.test_worker_cli import snapshot
from tests.workers.managed.harness import SVC_DIR, ManagedEngine, svc_entry

pytestmark = pytest.mark.timeout(120)
PROBE = probe()
needs_ns = pytest.mark.skipif(not PROBE.available, reason=f"[ns] {PROBE.reason}")
PEER_MODULES = Path(__file__).resolve().parent / "peers" / "node_modules"  # iii-sdk 0.22 from npm
STATE = "  - name: iii-state\n    config: {adapter: memory}\n"

# A local worker that reports its own resource limits from inside (the sandbox, when any).
LIMITS_MAIN = '''\
import os, signal, threading
from pyiii.sdk import InitOptions, InvocationError, register_worker
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
iii = register_worker(os.environ["III_URL"], InitOptions(worker_name=os.environ["III_WORKER_NAME"]))
iii.register_function(os.environ["III_WORKER_NAME"] + "::limits",
                      lambda data: open("/proc/self/limits").read())
done.wait()
iii.shutdown()
'''


def limits_worker(project: Path, name: str, resources: str | None) -> None:
    folder = project / name
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(LIMITS_MAIN)
    manifest = f"name: {name}\nversion: 0.1.0\nruntime: python\nscripts:\n  start: '\"$III_PYTHON\" main.py'\n"
    if resources:
        manifest += f"resources: {resources}\n"
    (folder / "iii.worker.yaml").write_text(manifest)


def address_space_limit(text: str) -> str:
    """The soft limit column of 'Max address space' in /proc/<pid>/limits."""
    line = next(line for line in text.splitlines() if line.startswith("Max address space"))
    return line[len("Max address space"):].split()[0]


def copy_svc(project: Path, name: str) -> None:
    target = project / name
    shutil.copytree(SVC_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = target / "iii.worker.yaml"
    manifest.write_text(manifest.read_text().replace("name: svc", f"name: {name}", 1))


def test_engine_restart_brings_workers_back(iii_procs: IIIProcs) -> None:
    extra = STATE + svc_entry("svc", isolation="process") + svc_entry(
        "crashy", isolation="process", config="{mode: crash}",
        restart="{backoff_initial_ms: 50, backoff_max_ms: 100, max_restarts: 2}")
    eng = ManagedEngine(iii_procs, extra, copies=("svc", "crashy"))
    first = eng.wait_state("svc", "running", connected=True)
    eng.wait_state("crashy", "failed")
    eng.close_client()
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(20) == 0
    assert not pid_alive(first["pid"])
    assert list((eng.project / ".iii" / "run").glob("*.json")) == []

    again = ManagedEngine(iii_procs, extra, project=eng.project)
    second = again.wait_state("svc", "running", connected=True)
    assert second["pid"] != first["pid"] and second["restarts"] == 0
    assert again.call("svc::hello", {"who": "back"}) == {"message": "hello, back"}
    # a failed worker leaves `failed` with an engine restart (§9.1): it runs (and crashes) anew
    log = (eng.project / ".iii" / "logs" / "crashy.log").read_text()
    wait_for(lambda: (eng.project / ".iii" / "logs" / "crashy.log").read_text().count("crashing")
             > log.count("crashing"), 10, what="crashy run again after the engine restart")


def test_node_template_runs_unmodified_under_the_engine(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("p", manager_config(0, STATE))
    assert iii_procs.run("worker", "init", "web", "--language", "node", cwd=project).returncode == 0
    folder = project / "web"
    template = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    # the npm registry is not used by the tests: `npm install` (the template's own script) runs
    # offline against the official iii-sdk already in node_modules
    shutil.copytree(PEER_MODULES, folder / "node_modules", symlinks=True)
    sdk = json.loads((folder / "node_modules" / "iii-sdk" / "package.json").read_text())
    assert sdk["name"] == "iii-sdk" and sdk["version"].startswith("0.22.")
    env = {"npm_config_offline": "true", "npm_config_update_notifier": "false"}
    engine = iii_procs.engine(project, env=env)
    engine.wait_ready(20)
    added = iii_procs.run("worker", "add", "./web", cwd=project, env=env, timeout=90)
    assert added.returncode == 0, added.stderr
    assert "ok: web is running" in added.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name in template} == template
    assert (folder / "package-lock.json").exists()  # npm install really ran
    hello = iii_procs.run("trigger", "web::hello", cwd=project)
    assert hello.returncode == 0 and json.loads(hello.stdout) == {"message": "hello, world"}
    hello = iii_procs.run("trigger", "web::hello", "who=node", cwd=project)
    assert json.loads(hello.stdout) == {"message": "hello, node"}
    doc = json.loads(iii_procs.run("worker", "status", "web", "--json", cwd=project).stdout)
    assert doc["isolation"] == ("namespace" if PROBE.available else "process")
    stopped = iii_procs.run("worker", "stop", "-y", "web", cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    log = (project / ".iii" / "logs" / "web.log").read_text()
    tail = log.rsplit("stopping (SIGTERM)", 1)[1]
    assert "SIGKILL" not in tail and "exited with code 0" in tail, tail


@pytest.mark.parametrize("isolation", ["process", pytest.param("namespace", marks=needs_ns)])
def test_manifest_memory_is_an_rlimit_inside_the_worker(iii_procs: IIIProcs, isolation: str) -> None:
    if CgroupTree.detect() is not None:
        pytest.skip("cgroup v2 is delegated here: limits are cgroups, not rlimits")
    project = iii_procs.project("proj", manager_config(0, "".join(
        f"  - name: {n}\n    worker_path: ./{n}\n    isolation: {isolation}\n{more}"
        for n, more in (("capped", ""), ("free", ""),
                        ("entry", "    resources: {memory: 640}\n")))))
    limits_worker(project, "capped", "{memory: 300, cpus: 1, pids: 64}")
    limits_worker(project, "free", None)
    limits_worker(project, "entry", "{memory: 300}")  # the entry's value wins
    eng = ManagedEngine(iii_procs, "", project=project)
    for name in ("capped", "free", "entry"):
        eng.wait_state(name, "running", connected=True)
    assert address_space_limit(eng.call("capped::limits")) == str(300 * 1024 * 1024)
    assert address_space_limit(eng.call("entry::limits")) == str(640 * 1024 * 1024)
    assert address_space_limit(eng.call("free::limits")) == "unlimited"
    assert eng.status("capped")["limits"] == {"memory": "rlimit 300 MiB (address space)",
                                              "cpus": "not enforced", "pids": "not enforced"}
    assert eng.status("free")["limits"] == {"memory": "not enforced", "cpus": "not enforced",
                                            "pids": "not enforced"}
    shown = iii_procs.run("worker", "status", "capped", cwd=project)
    line = next(li for li in shown.stdout.splitlines() if li.startswith("isolation"))
    assert line.endswith("limits: memory rlimit 300 MiB (address space), cpus not enforced, "
                         "pids not enforced"), line
    assert line.split(":", 1)[1].strip().startswith(isolation)


def test_isolation_is_never_claimed_when_not_in_force(iii_procs: IIIProcs) -> None:
    extra = svc_entry("svc") + svc_entry("plain", isolation="process")
    eng = ManagedEngine(iii_procs, extra, copies=("svc", "plain"),
                        env={"III_BWRAP": "/nonexistent/bwrap"})
    for name in ("svc", "plain"):
        doc = eng.wait_state(name, "running", connected=True)
        assert doc["isolation"] == "process" and eng.isolation_of(name) == "process"
        env = eng.call(f"{name}::env")
        assert env["III_ISOLATION"] == "process"
        assert eng.call(f"{name}::probe")["hostname"] != f"iii-{name}"
    assert eng.status("svc")["isolation_reason"] == "bubblewrap not found"
    assert eng.status("plain")["isolation_reason"] is None
    listed = eng.call("worker::list")
    assert listed["isolation_probe"]["available"] is False
    # a process that connects on its own under a managed worker's name is not the managed one
    eng.call("worker::stop", {"name": "plain"})
    outsider = register_worker(eng.url, InitOptions(worker_name="plain"))
    try:
        outsider.register_function("plain::outside", lambda data: "outside")
        def answered() -> bool:
            try:
                return eng.call("plain::outside") == "outside"
            except InvocationError:  # the registration is still on its way
                return False
        wait_for(answered, 10, 0.1, "plain::outside to answer")
        rows = [w for w in eng.call("engine::workers::list")["workers"] if w["name"] == "plain"]
        assert rows and all(w["isolation"] is None for w in rows), rows
        assert eng.status("plain")["state"] == "stopped"
    finally:
        outsider.shutdown()


def test_corrupt_config_keeps_the_running_workers(iii_procs: IIIProcs) -> None:
    eng = ManagedEngine(iii_procs, STATE + svc_entry("svc", isolation="process"))
    pid = eng.wait_state("svc", "running", connected=True)["pid"]
    cfg = eng.project / "config.yaml"
    mark = len(eng.proc.lines)
    cfg.write_text(cfg.read_text() + "  - name: [unclosed\n")
    bad_line = len(cfg.read_text().splitlines())
    m = eng.proc.wait_line(r"error: config\.yaml:(\d+):\d+: .* — keeping the running configuration",
                           10, start=mark)
    assert int(m.group(1)) in (bad_line, bad_line + 1), m.group(0)
    listed = eng.call("worker::list")
    error = listed["config_error"]
    assert (error["code"], error["line"]) == ("W131", int(m.group(1)))
    assert error["message"].startswith(f"config.yaml:{m.group(1)}:1: invalid YAML")
    doc = eng.status("svc")
    assert (doc["state"], doc["pid"]) == ("running", pid)
    assert eng.call("svc::hello", {"who": "x"}) == {"message": "hello, x"}
    shown = iii_procs.run("worker", "list", cwd=eng.project)
    # §4.4: the file error and the engine's last-valid-version note, exit 1
    assert shown.returncode == 1
    assert shown.stderr.splitlines() == [
        f"warning: config.yaml has errors; the engine keeps running the last valid version: "
        f"{error['message']}", f"error: {error['message']}"]
    copy_svc(eng.project, "other")
    before = snapshot(eng.project)
    failed = iii_procs.run("worker", "add", "./other", cwd=eng.project)
    assert failed.returncode == 1 and f"config.yaml:{m.group(1)}" in failed.stderr, failed.stderr
    assert snapshot(eng.project) == before
    assert eng.status("svc")["pid"] == pid


@pytest.mark.parametrize("isolation", ["process", pytest.param("namespace", marks=needs_ns)])
def test_exec_runs_with_the_workers_environment(iii_procs: IIIProcs, isolation: str) -> None:
    eng = ManagedEngine(iii_procs, svc_entry("svc", isolation=isolation,
                                             config="{api: {key: k1}, debug: true}",
                                             env="{EXTRA: e1}"))
    eng.wait_state("svc", "running", connected=True)
    worker = eng.call("svc::env")
    ran = eng.exec("svc", ["env", "-0"])
    assert ran["exit_code"] == 0
    inside = dict(item.split("=", 1) for item in ran["out"].split("\0") if item)
    # the shell that started the worker may add PWD/SHLVL/_; everything else is identical
    shell_noise = {"PWD", "SHLVL", "_", "OLDPWD"}
    assert {k: v for k, v in inside.items() if k not in shell_noise} == \
        {k: v for k, v in worker.items() if k not in shell_noise}
    assert (inside["API_KEY"], inside["DEBUG"], inside["EXTRA"]) == ("k1", "true", "e1")
    assert inside["III_WORKER_NAME"] == "svc" and inside["III_ISOLATION"] == isolation
    with_extra = eng.exec("svc", ["sh", "-c", "echo $FOO $EXTRA"], env={"FOO": "bar"})
    assert with_extra["out"] == "bar e1\n"


def test_add_shows_setup_and_install_output_and_logs_it(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("p", manager_config(0, STATE))
    copy_svc(project, "svc")
    manifest = project / "svc" / "iii.worker.yaml"
    manifest.write_text(manifest.read_text().replace(
        "setup: echo setup-ran >> prepared.txt", "setup: echo setup-out; echo setup-err >&2"))
    added = iii_procs.run("worker", "add", "./svc", cwd=project)
    assert added.returncode == 0, added.stderr
    shown = ["running setup of svc 0.1.0: echo setup-out; echo setup-err >&2", "setup-out",
             "setup-err", "running install of svc 0.1.0: echo install-ran >> prepared.txt"]
    assert added.stderr.splitlines()[:4] == shown
    assert (project / ".iii" / "logs" / "svc.log").read_text() == "\n".join(shown) + "\n"
    logs = iii_procs.run("worker", "logs", "svc", cwd=project)
    assert (logs.returncode, logs.stdout) == (0, "\n".join(shown) + "\n")

    # a failing install: exit 1, nothing declared, no file left behind in a fresh folder
    empty = iii_procs.project("fresh")
    copy_svc(empty, "bad")
    bad = empty / "bad" / "iii.worker.yaml"
    bad.write_text(bad.read_text().replace("install: echo install-ran >> prepared.txt",
                                           "install: echo boom; exit 3"))
    before = sorted(p.name for p in empty.iterdir())
    failed = iii_procs.run("worker", "add", "./bad", cwd=empty)
    assert failed.returncode == 1 and "boom" in failed.stderr, failed.stderr
    assert sorted(p.name for p in empty.iterdir()) == before


def test_registry_name_of_a_declared_local_worker_is_refused(iii_procs: IIIProcs) -> None:
    project = iii_procs.project("p", manager_config(0, STATE + svc_entry("svc")))
    copy_svc(project, "svc")
    before = snapshot(project)
    for command in ("add", "reinstall"):
        r = iii_procs.run("worker", command, "svc", "--offline", cwd=project)
        assert r.returncode == 1, r.stderr
        assert r.stderr.splitlines()[-2:] == ["error: a worker named 'svc' is already declared "
                                              "(local: ./svc)", "hint: remove it first, or pass --name"]
        assert snapshot(project) == before


@needs_ns
def test_namespace_sandbox_has_its_own_mount_pid_ipc_uts_and_shares_the_network(
        iii_procs: IIIProcs) -> None:
    eng = ManagedEngine(iii_procs, svc_entry("svc"))  # isolation: auto → namespace here
    doc = eng.wait_state("svc", "running", connected=True)
    assert doc["isolation"] == "namespace" and eng.isolation_of("svc") == "namespace"
    kinds = ("mnt", "pid", "ipc", "uts", "net")
    script = "; ".join(f"readlink /proc/1/ns/{k}" for k in kinds)
    ran = eng.exec("svc", ["sh", "-c", script])
    assert ran["exit_code"] == 0 and ran["joined"] is True, ran
    inside = dict(zip(kinds, ran["out"].split()))
    host = {k: os.readlink(f"/proc/self/ns/{k}") for k in kinds}
    assert [k for k in kinds if inside[k] == host[k]] == ["net"], (inside, host)
    # the worker process itself (not only exec) is in that sandbox: the status pid, or the
    # process bwrap forked for it, has the sandbox's mount namespace
    pids = [doc["pid"], *_children(doc["pid"])]
    assert inside["mnt"] in {os.readlink(f"/proc/{p}/ns/mnt") for p in pids}


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (bwrap's forked worker), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found
