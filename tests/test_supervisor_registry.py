"""Registry workers under the supervisor: run from their install folder, reinstalled from
iii.lock when the folder is missing, `failed` when not locked (spec/cli.md §1.5, §9.7)."""

from __future__ import annotations

import re
import shutil
import signal

import pytest

from tests.iii_process import iii_procs, manager_config  # noqa: F401
from tests.workers.managed.harness import SVC_DIR, ManagedEngine, alive

pytestmark = pytest.mark.timeout(120)


def published_project(procs) -> tuple:
    """A project with `hello` (the svc worker published as hello 0.1.0) added from ./REG."""
    source = procs.root / "hello"
    shutil.copytree(SVC_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = source / "iii.worker.yaml"
    manifest.write_text(manifest.read_text().replace("name: svc", "name: hello", 1))
    project = procs.project("proj", manager_config(0))
    for args in (("worker", "publish", str(source), "--to", "./REG"),
                 ("worker", "add", "hello", "--registry", "./REG", "-y")):
        res = procs.run(*args, cwd=project, timeout=60)
        assert res.returncode == 0, res.stderr
    return project


def test_registry_worker_runs_and_is_reinstalled_from_the_lock(iii_procs):
    project = published_project(iii_procs)
    installs = list((project / ".iii" / "install" / "hello").iterdir())
    assert len(installs) == 1 and re.fullmatch(r"0\.1\.0-[0-9a-f]{12}", installs[0].name)
    eng = ManagedEngine(iii_procs, "", project=project)
    eng.proc.wait_line(r"manager: started hello \(registry 0\.1\.0, \w+\) pid \d+", 5)
    doc = eng.wait_state("hello", "running", connected=True)
    assert (doc["kind"], doc["type"], doc["version"]) == ("registry", "package", "0.1.0")
    assert doc["install_path"] == str(installs[0])
    assert eng.call("hello::hello", {"who": "x"}) == {"message": "hello, x"}
    assert eng.call("hello::env")["III_WORKER_DIR"] == str(installs[0])
    eng.close_client()
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(20) == 0
    assert not alive(doc["pid"])

    # a fresh clone (or `clear`): the engine installs it from iii.lock before starting it
    shutil.rmtree(installs[0])
    eng = ManagedEngine(iii_procs, "", project=project)
    doc = eng.wait_state("hello", "running", 30, connected=True)
    assert (installs[0] / ".complete").exists()
    log = eng.log_text("hello")
    assert re.search(r"^\[iii\] \S+ installing hello 0\.1\.0$", log, re.M)
    assert "install-ran" in (installs[0] / "prepared.txt").read_text()

    # declared by hand but never locked
    config = (project / "config.yaml").read_text() + "  - name: nolock\n"
    (project / "config.yaml").write_text(config)
    doc = eng.wait_state("nolock", "failed", 10)
    assert doc["reason"] == "not locked: run `iii worker add nolock`"
    assert eng.status("hello")["pid"] is not None  # the others are untouched
