"""Namespace isolation with bubblewrap, `worker::exec`, and the fallback without bwrap
(spec/cli.md §9.4-9.5, acceptance scenarios 30, 32, 33).

Tests marked [ns] need bubblewrap and working namespaces and are skipped without them.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from pyiii.manager.sandbox import probe
from tests.iii_process import iii_procs, wait_for  # noqa: F401
from tests.workers.managed.harness import ManagedEngine, alive, svc_entry

pytestmark = pytest.mark.timeout(90)
PROBE = probe()
needs_ns = pytest.mark.skipif(not PROBE.available, reason=f"[ns] {PROBE.reason}")
STATE = "  - name: iii-state\n    config: {adapter: memory}\n"


@needs_ns
def test_namespace_sandbox_is_in_force(iii_procs):
    marker = os.path.join(iii_procs.env["HOME"], "secret-marker")
    with open(marker, "w") as f:
        f.write("x")
    extra = STATE + svc_entry("svc", isolation="namespace",
                              sandbox="{rw_paths: [./shared], ro_paths: [./docs]}")
    eng = ManagedEngine(iii_procs, extra)
    eng.proc.wait_line(rf"isolation: namespace available \(bubblewrap {re.escape(PROBE.version or '')}\)", 2)
    doc = eng.wait_state("svc", "running", connected=True)
    assert (doc["isolation"], doc["rootfs"], doc["isolation_reason"]) == ("namespace", "host", None)
    assert set(doc["limits"]) == {"memory", "cpus", "pids"}
    assert eng.isolation_of("svc") == "namespace"
    assert eng.isolation_of("iii-state") == "in-process"

    seen = eng.call("svc::probe", {"home_marker": marker})
    assert seen["hostname"] == "iii-svc"
    assert seen["pid"] < 10  # its own PID namespace
    assert seen["home_marker_visible"] is False
    assert seen["write_project"] == "error: Read-only file system"
    assert seen["write_own"] == "ok" and seen["write_work"] == "ok"
    assert seen["cwd"] == str(eng.project / "svc")
    env = eng.call("svc::env")
    assert env["HOME"] == env["III_WORK_DIR"] == str(eng.project / "data" / "managed" / "svc")
    assert env["III_ISOLATION"] == "namespace"
    assert os.path.exists(marker)

    # exec joins the worker's namespaces: same hostname, same mounts, its environment
    res = eng.exec("svc", ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (res["exit_code"], res["out"], res["err"], res["joined"]) == (7, "out\n", "err\n", True)
    assert (res["signal"], res["timed_out"], res["truncated"]) == (None, False, False)
    res = eng.exec("svc", ["sh", "-c", "hostname; echo $FOO $III_WORKER_NAME; pwd"],
                   env={"FOO": "bar"})
    assert res["out"] == f"iii-svc\nbar svc\n{eng.project / 'svc'}\n"
    shared = eng.project / "shared" / "x"
    res = eng.exec("svc", ["sh", "-c", f"touch {shared} && touch {eng.project}/y"])
    assert res["exit_code"] == 1 and "Read-only" in res["err"]
    assert shared.exists() and not (eng.project / "y").exists()
    res = eng.exec("svc", ["sleep", "5"], timeout_ms=200)
    assert (res["exit_code"], res["timed_out"]) == (124, True)
    assert eng.exec("svc", ["no-such-cmd"])["exit_code"] == 127

    # stopping signals the worker inside the sandbox, which shuts down cleanly
    pid = doc["pid"]
    assert eng.call("worker::stop", {"name": "svc"})["state"] == "stopped"
    assert not alive(pid)
    after = eng.log_text("svc").rsplit("stopping (SIGTERM)", 1)[1]
    assert "\nbye\n" in after
    err = eng.error("worker::exec", {"name": "svc", "argv": ["true"]})
    assert (err.code, err.message) == ("W110", "svc is not running")
    eng.proc.signal(signal.SIGTERM)
    assert eng.proc.wait(20) == 0


def test_exec_in_process_and_plain_process_workers(iii_procs):
    eng = ManagedEngine(iii_procs, STATE + svc_entry("svc", isolation="process"))
    eng.wait_state("svc", "running", connected=True)
    res = eng.exec("svc", ["sh", "-c", "pwd; echo $III_WORKER_NAME $III_ISOLATION; exit 3"])
    assert res["out"] == f"{eng.project / 'svc'}\nsvc process\n"
    assert (res["exit_code"], res["joined"]) == (3, False)
    assert eng.exec("svc", ["no-such-cmd"])["exit_code"] == 127
    res = eng.exec("svc", ["sh", "-c", "head -c 9000000 /dev/zero"])
    assert res["truncated"] is True and len(res["out"]) == 8 * 1024 * 1024
    err = eng.error("worker::exec", {"name": "iii-state", "argv": ["true"]})
    assert err.code == "W105"
    assert err.message == ("iii-state runs inside the engine process (isolation: in-process); "
                           "exec needs a worker that runs as a process")
    assert eng.error("worker::exec", {"name": "svc", "argv": []}).code == "W105"


def test_without_bubblewrap_auto_falls_back_and_namespace_fails(iii_procs):
    extra = (svc_entry("svc") + svc_entry("strict", isolation="namespace"))
    eng = ManagedEngine(iii_procs, extra, copies=("svc", "strict"),
                        env={"III_BWRAP": "/nonexistent/bwrap"})
    eng.proc.wait_line(r"isolation: namespace unavailable \(bubblewrap not found\); managed "
                       r"workers run as plain processes", 2)
    eng.proc.wait_line(r"warning: svc runs without a sandbox \(isolation: process\): bubblewrap "
                       r"not found", 5)
    doc = eng.wait_state("svc", "running", connected=True)
    assert (doc["isolation"], doc["isolation_reason"]) == ("process", "bubblewrap not found")
    assert eng.isolation_of("svc") == "process"
    strict = eng.wait_state("strict", "failed", 5)
    assert strict["reason"] == "namespace isolation is impossible: bubblewrap not found"
    assert strict["pid"] is None
    lst = eng.call("worker::list")
    assert lst["isolation_probe"] == {"available": False, "bwrap": None, "version": None,
                                      "reason": "bubblewrap not found"}
    assert [w["name"] for w in lst["workers"]] == ["iii-worker-manager", "svc", "strict"]
    assert eng.call("svc::hello") == {"message": "hello, world"}  # the engine keeps serving
    wait_for(lambda: "failed: namespace isolation is impossible" in eng.log_text("strict"), 2)
