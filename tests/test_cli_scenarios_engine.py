"""Acceptance scenario 2 of spec/cli.md §10 exactly as written: `iii --use-default-config` in an
empty folder runs the six default first-party workers, writes nothing, and refuses --config."""

from __future__ import annotations

import json
import signal

import pytest

from tests.iii_process import IIIProcs, iii_procs  # noqa: F401

pytestmark = pytest.mark.timeout(60)

DEFAULT_SET = {"iii-http", "iii-stream", "iii-state", "iii-pubsub", "iii-cron", "iii-queue"}


def test_scenario_2_default_configuration_lists_the_six_workers(iii_procs: IIIProcs) -> None:
    folder = iii_procs.project("empty")
    zero = {"III_ENGINE_PORT": "0", "III_HTTP_PORT": "0", "III_STREAM_PORT": "0"}
    engine = iii_procs.engine(folder, "--use-default-config", env=zero)
    url = engine.wait_ready()
    res = iii_procs.run("trigger", "engine::workers::list", "--engine", url, cwd=folder)
    assert res.returncode == 0, res.stderr
    names = {w["name"] for w in json.loads(res.stdout)["workers"]}
    assert DEFAULT_SET <= names, names
    # §1.2: runtime commands list, stop, start and inspect the default configuration's workers
    listed = iii_procs.run("worker", "list", "--json", "--engine", url, cwd=folder)
    assert listed.returncode == 0, listed.stderr
    states = {w["name"]: w["state"] for w in json.loads(listed.stdout)["workers"]}
    assert {n: states.get(n) for n in DEFAULT_SET} == {n: "running" for n in DEFAULT_SET}
    stopped = iii_procs.run("worker", "stop", "-y", "iii-cron", "--engine", url, cwd=folder)
    assert stopped.returncode == 0 and "ok: stopped iii-cron" in stopped.stderr, stopped.stderr
    started = iii_procs.run("worker", "start", "iii-cron", "--engine", url, cwd=folder)
    assert started.returncode == 0 and "ok: iii-cron is running" in started.stderr, started.stderr
    status = iii_procs.run("worker", "status", "iii-state", "--engine", url, cwd=folder)
    assert status.returncode == 0 and "connected: yes — functions: state::" in status.stdout, status.stderr
    assert iii_procs.run("worker", "status", "nosuch", "--engine", url, cwd=folder).returncode == 1
    engine.signal(signal.SIGTERM)
    assert engine.wait(12) == 0, engine.stderr
    assert list(folder.iterdir()) == []
    refused = iii_procs.run("--use-default-config", "--config", "x.yaml", cwd=folder, timeout=15)
    assert refused.returncode == 2
    assert "error: --use-default-config and --config cannot be used together" in refused.stderr
    assert list(folder.iterdir()) == []
