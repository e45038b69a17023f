"""spec/workers.md §13 scenario 5: state written before a SIGKILL of the engine survives it."""

from __future__ import annotations

import json

import pytest

from tests.iii_process import free_port, iii_procs, manager_config  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def trigger(iii_procs, project, url: str, *args: str) -> object:
    res = iii_procs.run("trigger", *args, "--engine", url, "--compact", cwd=project, timeout=20)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_state_survives_sigkill_of_the_engine(iii_procs):
    port = free_port()
    project = iii_procs.project("durable", manager_config(port, "  - name: iii-state\n"))
    url = f"ws://127.0.0.1:{port}"
    engine = iii_procs.engine(project)
    engine.wait_ready()
    for key, value in (("a", 1), ("b", {"x": [2]}), ("c", "three")):
        answer = trigger(iii_procs, project, url, "state::set", "scope=s", f"key={key}",
                         "--json", json.dumps({"value": value}))
        assert answer == {"old_value": None, "new_value": value}
    engine.kill()  # SIGKILL right after the last acknowledged write
    engine.wait(10)
    assert (project / "data" / "state.db").exists()

    restarted = iii_procs.engine(project)
    restarted.wait_ready()
    assert trigger(iii_procs, project, url, "state::get", "scope=s", "key=b") == {"x": [2]}
    assert trigger(iii_procs, project, url, "state::list", "scope=s") == [1, {"x": [2]}, "three"]
