"""The `iii` command against real engine processes (spec/cli.md §1, §2, §10 scenarios 1-3, 5-7).

Every `iii` runs as a subprocess in its own process group with a timeout, HOME and the caches in
temp folders; workers are pyiii.sdk processes (tests/workers/pyiii_worker.py). Teardown kills
every group still alive.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyiii.engine.config import STARTER_CONFIG
from tests.conftest_peers import Peer, fn, make_spec, start_peer_process
from tests.iii_process import (IIIProcs, engine_json, free_port, has_unshare_net, iii_procs,  # noqa: F401
                               kill_group, manager_config, port_free, wait_for, III_CMD)

DEFAULT_PORT = 49134


def started_engine(procs: IIIProcs, name: str = "proj", extra: str = "") -> tuple[Path, str]:
    project = procs.project(name, manager_config(0, extra))
    url = procs.engine(project).wait_ready()
    return project, url


# --------------------------------------------------------------------------- scenarios 1-3

def test_scenario_1_starter_config_and_clean_shutdown(iii_procs):
    """Bare `iii` in an empty folder. The starter declares no iii-worker-manager, so the engine
    listens on 0.0.0.0:49134: run it directly when that port is free, else in a private network
    namespace (`unshare -rn`), which changes nothing else the scenario looks at."""
    project = iii_procs.project("empty")
    prefix: list[str] = []
    if not port_free(DEFAULT_PORT):
        if not has_unshare_net():
            pytest.fail(f"scenario 1 needs port {DEFAULT_PORT} free (the starter config has no "
                        "engine port) or `unshare -rn` for a private network namespace")
        prefix = ["unshare", "-rn"]
    engine = iii_procs.engine(project, prefix=prefix)
    url = engine.wait_ready()
    assert url == f"ws://127.0.0.1:{DEFAULT_PORT}"
    info = wait_for(lambda: engine_json(project), 5, what=".iii/engine.json")
    assert info["pid"] == engine.pid and info["url"] == url
    assert info["config"] == str(project / "config.yaml")

    engine.signal(signal.SIGTERM)
    assert engine.wait(12) == 0, engine.stderr
    assert (project / "config.yaml").read_text() == STARTER_CONFIG
    assert "created config.yaml" in engine.stderr
    assert not (project / ".iii" / "engine.json").exists()
    assert not (project / "iii.lock").exists()


@pytest.mark.parametrize("choice, loop", [(None, "uvloop"), ("asyncio", "asyncio")])
def test_engine_event_loop(iii_procs, choice, loop):
    """`iii` serves on uvloop (installed with pyiii) unless PYIII_LOOP=asyncio asks otherwise."""
    project = iii_procs.project(f"loop-{loop}", manager_config(0))
    engine = iii_procs.engine(project, env={"PYIII_LOOP": choice})
    url = engine.wait_ready()
    engine.wait_line(rf"engine: event loop: {loop}$")
    res = iii_procs.run("trigger", "engine::functions::list", "--engine", url, cwd=project)
    assert res.returncode == 0, res.stderr
    assert "worker::exec" in {f["function_id"] for f in json.loads(res.stdout)["functions"]}
    engine.signal(signal.SIGTERM)
    assert engine.wait(12) == 0, engine.stderr


def test_scenario_2_use_default_config(iii_procs):
    folder = iii_procs.project("empty")
    zero = {"III_ENGINE_PORT": "0", "III_HTTP_PORT": "0", "III_STREAM_PORT": "0"}
    engine = iii_procs.engine(folder, "--use-default-config", env=zero)
    url = engine.wait_ready()
    started = {line.split("started ", 1)[1].split(" ")[0]
               for line in engine.lines if " manager: started " in line}
    res = iii_procs.run("trigger", "engine::workers::list", "--engine", url, cwd=folder)
    assert res.returncode == 0, res.stderr
    names = {w["name"] for w in json.loads(res.stdout)["workers"]}
    assert started <= names, (started, names)  # every first-party worker it could start
    engine.signal(signal.SIGTERM)
    assert engine.wait(12) == 0, engine.stderr
    assert list(folder.iterdir()) == []

    res = iii_procs.run("--use-default-config", "--config", "x.yaml", cwd=folder, timeout=15)
    assert res.returncode == 2
    assert "--use-default-config and --config cannot be used together" in res.stderr
    assert list(folder.iterdir()) == []


def test_scenario_3_startup_errors(iii_procs):
    missing = iii_procs.project("missing", "workers:\n  - name: iii-http\n    config:\n"
                                           "      port: ${MISSING_PORT}\n")
    iii_procs.env.pop("MISSING_PORT", None)
    res = iii_procs.run(cwd=missing, timeout=15)
    assert res.returncode == 1, res.stderr
    assert ("error: config.yaml:4:13: environment variable MISSING_PORT is not set and has no default"
            in res.stderr), res.stderr
    assert not (missing / ".iii" / "engine.json").exists()

    typo = iii_procs.project("typo", "workers:\n  - name: svc\n    imgae: example/svc:1\n")
    res = iii_procs.run(cwd=typo, timeout=15)
    assert res.returncode == 1
    assert "error: config.yaml:3:5:" in res.stderr and "did you mean 'image'" in res.stderr, res.stderr

    project, url = started_engine(iii_procs, "up")
    before = (project / "config.yaml").read_bytes()
    res = iii_procs.run(cwd=project, timeout=15)
    assert res.returncode == 1
    assert "another engine is already running for this project" in res.stderr, res.stderr
    assert f"pid {iii_procs.started[0].pid}" in res.stderr and url in res.stderr
    assert (project / "config.yaml").read_bytes() == before
    assert engine_json(project)["pid"] == iii_procs.started[0].pid  # the first one is untouched


# --------------------------------------------------------------------------- iii trigger

TRIGGER_FUNCS = [fn("math::add", "add"), fn("t::echo", "echo"), fn("t::boom", "boom"),
                 fn("t::slow", "slow"), fn("t::none", "none")]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One engine (project P, port 0) with a pyiii.sdk worker serving TRIGGER_FUNCS."""
    procs = IIIProcs(tmp_path_factory.mktemp("trigger"))
    peer: Peer | None = None
    try:
        project, url = started_engine(procs)
        peer = start_peer_process("pyiii", url, make_spec("tfuncs", TRIGGER_FUNCS))
        yield procs, project, peer
    finally:
        if peer is not None:
            peer.close(grace=2)
        procs.close_all()


def test_trigger_math_add_acceptance(running):
    procs, project, _ = running
    res = procs.run("trigger", "math::add", "a=2", "b=3", cwd=project)  # engine from engine.json
    assert (res.returncode, res.stdout) == (0, '{\n  "c": 5\n}\n'), res.stderr
    res = procs.run("trigger", "math::add", "a=2", "b=3", "--compact", cwd=project)
    assert (res.returncode, res.stdout) == (0, '{"c":5}\n'), res.stderr


def test_scenario_6_payload_through_a_real_engine(running):
    procs, project, _ = running
    res = procs.run("trigger", "t::echo", "a=2", "b=2.5", "ok=true", "n=null", "s=hi",
                    "arr=[1,2]", 'q="42"', "z=007", cwd=project)
    expected = {"a": 2, "b": 2.5, "ok": True, "n": None, "s": "hi", "arr": [1, 2], "q": "42",
                "z": "007"}
    assert res.returncode == 0, res.stderr
    assert res.stdout == json.dumps(expected, indent=2) + "\n"
    res = procs.run("trigger", "t::echo", "--json", '{"a":1,"b":1}', "b=2", cwd=project)
    assert (res.returncode, res.stdout) == (0, '{\n  "a": 1,\n  "b": 2\n}\n'), res.stderr
    res = procs.run("trigger", "t::none", cwd=project)
    assert (res.returncode, res.stdout) == (0, "null\n"), res.stderr


def test_scenario_7_failures_timeout_void(running):
    procs, project, peer = running
    res = procs.run("trigger", "t::boom", cwd=project)
    assert res.returncode == 1 and res.stdout == ""
    assert "error: t::boom failed: [" in res.stderr and "boom" in res.stderr, res.stderr

    res = procs.run("trigger", "nope::nope", cwd=project)
    assert res.returncode == 1 and "error: nope::nope failed: [function_not_found]" in res.stderr

    t0 = time.monotonic()
    res = procs.run("trigger", "t::slow", "ms=3000", "--timeout", "200ms", cwd=project)
    assert res.returncode == 124, res.stderr
    assert "error: t::slow timed out after 200ms" in res.stderr
    assert time.monotonic() - t0 < 3.0

    peer.drain_events()
    res = procs.run("trigger", "t::echo", "--void", "v=2", cwd=project)
    assert (res.returncode, res.stdout) == (0, ""), res.stderr
    ev = peer.wait_event("invoke", function_id="t::echo", timeout=2)
    assert ev["data"] == {"v": 2}


def test_trigger_without_engine_exits_3(iii_procs):
    port = free_port()  # declared in config.yaml, nothing listening
    project = iii_procs.project("down", manager_config(port))
    res = iii_procs.run("trigger", "t::echo", "a=1", cwd=project, timeout=15)
    assert res.returncode == 3 and res.stdout == ""
    assert f"no iii engine is answering at ws://127.0.0.1:{port}" in res.stderr, res.stderr


# --------------------------------------------------------------------------- engine lifecycle

def test_graceful_shutdown_lets_a_call_in_flight_finish(iii_procs):
    project, url = started_engine(iii_procs)
    engine = iii_procs.started[0]
    peer = start_peer_process("pyiii", url, make_spec("slowpoke", [fn("t::slow", "slow")]))
    iii_procs.on_close(peer.close)
    call = subprocess.Popen(III_CMD + ["trigger", "t::slow", "ms=2000"], cwd=str(project),
                            env=iii_procs.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        peer.wait_event("invoke", function_id="t::slow", timeout=10)  # the call is in flight
        time.sleep(0.5)
        t_term = time.monotonic()
        engine.signal(signal.SIGTERM)
        out, err = call.communicate(timeout=15)
        assert (call.returncode, out) == (0, '{\n  "slept": 2000\n}\n'), err
        assert engine.wait(12) == 0, engine.stderr
        took = time.monotonic() - t_term
        print(f"\nengine exit {took:.2f}s after SIGTERM (call in flight needed ~1.5s more)")
        assert "shutting down" in engine.stderr
        assert not (project / ".iii" / "engine.json").exists()
        assert [p.name for p in (project / ".iii" / "run").glob("*.json")] == []
    finally:
        kill_group(call)
        call.wait(5)


def test_hot_reload_keeps_running_on_invalid_yaml(iii_procs):
    project, url = started_engine(iii_procs)
    engine = iii_procs.started[0]
    cfg = project / "config.yaml"
    good = cfg.read_text()
    mark = len(engine.lines)
    cfg.write_text(good + "  - name: [unclosed\n")
    m = engine.wait_line(r"config\.yaml:(\d+):(\d+): .*keeping the running configuration",
                         timeout=10, start=mark)
    assert int(m.group(1)) >= 4, m.group(0)
    assert engine.proc.poll() is None
    res = iii_procs.run("trigger", "engine::workers::list", cwd=project, timeout=15)
    assert res.returncode == 0, res.stderr  # still serving on the same listener
    assert engine_json(project)["url"] == url

    mark = len(engine.lines)
    cfg.write_text(good)
    engine.wait_line(r"config\.yaml is valid again", timeout=10, start=mark)
    assert engine.proc.poll() is None
    engine.signal(signal.SIGTERM)
    assert engine.wait(12) == 0
