"""The supervisor's parts without an engine: manifests (cli.md §8.1), environment (§9.2), log
files (§9.3), local installs (§9.7), limits and the sandbox argv (§9.5), exec's fresh sandbox."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import pytest

from pyiii.manager.child import Launch
from pyiii.manager.envbuild import EnvInputs, flatten_config, worker_environment
from pyiii.manager.exec import build_argv, run_exec
from pyiii.manager.launch import shell_command
from pyiii.manager.limits import LimitPlanner, Limits
from pyiii.manager.local import ScriptError, prepare_local, state_path
from pyiii.manager.logfile import WorkerLog, read_tail
from pyiii.manager.manifest import ManifestError, load_manifest
from pyiii.manager.sandbox import SandboxSpec, bwrap_args, probe

pytestmark = pytest.mark.timeout(60)


def manifest_error(tmp_path: Path, text: str) -> ManifestError:
    (tmp_path / "iii.worker.yaml").write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    return info.value


def test_manifest_valid_with_every_field(tmp_path):
    (tmp_path / "SKILL.md").write_text("# skill\n")
    (tmp_path / "iii.worker.yaml").write_text(
        "name: hello\ndescription: Greets people\nversion: 1.2.0\n"
        "runtime: {language: python, base_image: docker.io/library/python:3.12-slim}\n"
        "scripts: {setup: s, install: i, start: go}\nenv: {LOG_LEVEL: info, III_X: nope}\n"
        "dependencies: {iii-state: '*', c: ^1.0.0}\nresources: {memory: 512, cpus: 1, pids: 256}\n"
        "skills: [SKILL.md]\ntags: [greeting]\niii: {ignored: true}\n")
    m = load_manifest(tmp_path)
    assert (m.name, m.description, m.version, m.language, m.base_image) == (
        "hello", "Greets people", "1.2.0", "python", "docker.io/library/python:3.12-slim")
    assert (m.setup, m.install, m.start) == ("s", "i", "go")
    assert m.env == {"LOG_LEVEL": "info"}
    assert m.warnings == ("env.III_X is ignored: III_* variables are set by the engine",)
    assert m.dependencies == {"iii-state": "*", "c": "^1.0.0"}
    assert (m.memory, m.cpus, m.pids) == (512, 1.0, 256)
    assert (m.skills, m.tags, m.folder) == (("SKILL.md",), ("greeting",), tmp_path)
    (tmp_path / "iii.worker.yaml").write_text("name: b\nruntime: binary\n")
    assert load_manifest(tmp_path).start is None  # binary workers run their executable


def test_manifest_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "iii.worker.yaml"
    err = manifest_error(tmp_path, "name: x\nscripts: {start: a}\nfoo: 1\n")
    assert str(err) == (f"{path}:3:1: unknown key 'foo' in iii.worker.yaml (supported: name, "
                        "description, version, runtime, scripts, env, dependencies, resources, "
                        "skills, tags)")
    assert (err.code, err.field, err.line) == ("W180", "foo", 3)
    err = manifest_error(tmp_path, "name: x\nscripts:\n  start: [a, b]\n")
    assert err.message == "scripts.start must be one command string; chain commands with &&"
    assert (err.line, err.field) == (3, "scripts.start")
    assert "duplicate key" in manifest_error(tmp_path, "name: x\nname: y\n").message
    assert manifest_error(tmp_path, "- a\n").message.startswith("the top level must be a mapping")
    err = manifest_error(tmp_path, "name: x\nscripts: {start: a}\ndependencies: {x: '*'}\n")
    assert err.message == "x cannot depend on itself"
    err = manifest_error(tmp_path, "name: x\nscripts: {start: a}\ndependencies: {y: '^^'}\n")
    assert err.field == "dependencies.y"
    err = manifest_error(tmp_path, "name: x\nscripts: {start: a}\nenv: {PORT: 8080}\n")
    assert err.field == "env.PORT"
    err = manifest_error(tmp_path, "name: x\nscripts: {start: a}\nskills: [../out.md]\n")
    assert err.message == "skills[0] must be a path inside the worker folder (got '../out.md')"
    err = manifest_error(tmp_path, "name: Bad\nscripts: {start: a}\n")
    assert err.message.startswith("invalid worker name 'Bad'")
    assert manifest_error(tmp_path, "name: x\n").field == "scripts.start"
    assert "larger than 64 KiB" in manifest_error(tmp_path, "name: x\n" + "#" * 70000).message
    with pytest.raises(ManifestError, match="no iii.worker.yaml in"):
        load_manifest(tmp_path / "missing")


def test_environment_layers(tmp_path):
    inputs = EnvInputs(name="svc", engine_url="ws://127.0.0.1:5", project_dir=tmp_path,
                       worker_dir=tmp_path / "svc", work_dir=tmp_path / "data/managed/svc",
                       isolation="namespace", config={"api": {"key": "x"}, "debug": True,
                                                      "ports": [1, 2], "n": None, "path": "p",
                                                      "my-key": 1.5},
                       entry_env={"DEBUG": "yes"}, manifest_env={"A": "m", "API_KEY": "m"},
                       version="0.1.0", namespace="ns1")
    env = worker_environment(inputs, base={"PATH": "/bin", "III_SECRET": "s", "A": "host",
                                           "HOME": "/root"})
    assert "III_SECRET" not in env and env["PATH"] == "/bin"  # config `path` skipped
    assert (env["A"], env["API_KEY"], env["DEBUG"], env["PORTS"], env["N"], env["MY_KEY"]) == (
        "m", "x", "yes", "[1,2]", "", "1.5")
    assert env["III_WORKER_CONFIG"] == ('{"api":{"key":"x"},"debug":true,"ports":[1,2],'
                                        '"n":null,"path":"p","my-key":1.5}')
    assert env["HOME"] == env["III_WORK_DIR"] == str(tmp_path / "data/managed/svc")
    assert (env["III_NAMESPACE"], env["III_WORKER_VERSION"], env["III_ISOLATION"]) == (
        "ns1", "0.1.0", "namespace")
    assert env["III_PYTHON"] == sys.executable
    assert flatten_config({"a": {"b": {"c": False}}}) == {"A_B_C": "false"}


def test_log_rotation_tail_and_cursor(tmp_path):
    async def main() -> None:
        path = tmp_path / "logs" / "w.log"
        log = WorkerLog(path, max_bytes=100, keep=2)
        for i in range(40):
            log.write(f"line {i:02d}")  # 8 bytes a line: a rotation every 13 lines
            assert path.is_file(), i  # never missing, not even right after a rotation
        log.event("stopping (SIGTERM)")
        assert sorted(p.name for p in path.parent.iterdir()) == ["w.log", "w.log.1", "w.log.2"]
        tail = log.tail(5)
        assert tail[:4] == ["line 36", "line 37", "line 38", "line 39"]
        assert tail[4].startswith("[iii] 20") and tail[4].endswith("Z stopping (SIGTERM)")
        lines, cursor = await log.read(3, None, 0)
        assert len(lines) == 3 and cursor == 41
        waiter = asyncio.ensure_future(log.read(100, cursor, 2000))
        await asyncio.sleep(0.05)
        log.write("late")
        assert await waiter == (["late"], 42)
        assert await log.read(100, 38, 0) == (["line 38", "line 39", lines[-1], "late"], 42)
        assert read_tail(path, 2, 100)[0] == "line 13"  # lines 0-12 went with the oldest rotation
        log.close()

    asyncio.run(main())


def test_prepare_local_runs_setup_once_and_install_on_change(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "iii.worker.yaml").write_text(
        "name: w\nscripts:\n  setup: echo s >> ran.txt\n  install: echo i >> ran.txt; echo out\n"
        "  start: 'true'\n")
    out: list[str] = []
    first = asyncio.run(prepare_local("w", folder, tmp_path, output=out.append))
    assert (first.ran_setup, first.ran_install) == (True, True)
    assert out == ["running setup of w: echo s >> ran.txt",
                   "running install of w: echo i >> ran.txt; echo out", "out"]
    again = asyncio.run(prepare_local("w", folder, tmp_path, output=out.append))
    assert (again.ran_setup, again.ran_install) == (False, False)
    (folder / "requirements.txt").write_text("x\n")
    third = asyncio.run(prepare_local("w", folder, tmp_path, output=out.append))
    assert (third.ran_setup, third.ran_install) == (False, True)
    assert (folder / "ran.txt").read_text() == "s\ni\ni\n"
    assert state_path(tmp_path, "w").exists()

    (folder / "iii.worker.yaml").write_text("name: w\nscripts: {install: exit 3, start: x}\n")
    with pytest.raises(ScriptError) as info:  # the manifest changed: install runs, fails
        asyncio.run(prepare_local("w", folder, tmp_path, output=out.append))
    assert (str(info.value), info.value.code) == ("install script of w failed (exit 3)", "W160")


def test_limits_report_is_truthful():
    planner = LimitPlanner()
    if planner.cgroups is not None:
        pytest.skip("a delegated cgroup v2 subtree is available here")
    hook, report = planner.plan("w", Limits())
    assert hook is None
    assert report == {"memory": "not enforced", "cpus": "not enforced", "pids": "not enforced"}
    hook, report = planner.plan("w", Limits(memory=300, memory_explicit=True))
    assert hook is not None and report["memory"] == "rlimit 300 MiB (address space)"


def test_bwrap_arguments(tmp_path):
    spec = SandboxSpec("w", tmp_path, tmp_path / "w", tmp_path / "data", hide_home=True,
                       ro_paths=("docs",), rw_paths=("~/cache",))
    args = bwrap_args(spec)
    assert args[:9] == ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                        "--hostname", "iii-w", "--ro-bind", "/", "/"]
    joined = " ".join(args)
    assert f"--ro-bind {tmp_path} {tmp_path}" in joined
    assert f"--bind {tmp_path / 'w'} {tmp_path / 'w'}" in joined
    assert f"--ro-bind-try {tmp_path / 'docs'}" in joined
    home = os.path.expanduser("~")
    assert f"--bind {home}/cache {home}/cache" in joined
    assert joined.index("--tmpfs /home") < joined.index(f"--ro-bind {tmp_path}")
    assert "--tmpfs /home" not in " ".join(bwrap_args(SandboxSpec(
        "w", tmp_path, tmp_path, tmp_path, hide_home=False)))


@pytest.mark.skipif(not probe().available, reason="[ns] bubblewrap or namespaces unavailable")
def test_exec_without_a_running_sandbox_uses_a_fresh_one(tmp_path):
    found = probe()
    (tmp_path / "w").mkdir()
    spec = SandboxSpec("w", tmp_path, tmp_path / "w", tmp_path / "w")
    launch = Launch(argv=[], cwd=tmp_path / "w", env={"PATH": os.environ["PATH"], "X": "1"},
                    isolation="namespace", label="local", sandbox_args=bwrap_args(spec),
                    bwrap=found.bwrap)
    argv, joined = build_argv(launch, None, ["true"], str(tmp_path))
    assert joined is False and argv[0] == found.bwrap
    res = asyncio.run(run_exec(launch, None, ["sh", "-c", "hostname; echo $X; pwd"], None, None,
                               5000))
    assert res["joined"] is False and res["exit_code"] == 0
    assert base64.b64decode(res["stdout"]).decode() == f"iii-w\n1\n{tmp_path / 'w'}\n"
    res = asyncio.run(run_exec(launch, None, ["no-such-cmd"], None, None, 5000))
    assert res["exit_code"] == 127


def test_simple_start_commands_are_execd():
    assert shell_command('"$III_PYTHON" main.py') == ["/bin/sh", "-c", 'exec "$III_PYTHON" main.py']
    assert shell_command("./bin/run --port=3") == ["/bin/sh", "-c", "exec ./bin/run --port=3"]
    for script in ("npm ci && node x", "a; b", "a | b", "x > log", "FOO=1 node x", "echo `id`"):
        assert shell_command(script) == ["/bin/sh", "-c", script]


async def test_a_worker_whose_stop_fails_still_leaves_the_list(tmp_path):
    """A removal whose halt raises must not leave a record that is listed forever and refuses
    every command."""
    from pyiii.engine.config import parse_config
    from pyiii.engine.core import Engine
    from pyiii.manager.logfile import WorkerLog
    from pyiii.manager.supervisor import Record, Supervisor, SupervisorError

    project = parse_config("workers:\n  - name: svc\n    worker_path: ./svc\n",
                           tmp_path / "config.yaml")
    sup = Supervisor(Engine(), project, ephemeral=True, engine_url="ws://127.0.0.1:1")

    class BrokenProcess:
        active, state = True, "running"

        async def stop(self) -> None:
            raise OSError("signal failed")

    sup.records["svc"] = Record(project.workers[0], WorkerLog(None, 1000, 1), process=BrokenProcess())
    with pytest.raises(OSError, match="signal failed"):
        await sup._remove("svc")
    assert "svc" not in sup.records
    with pytest.raises(SupervisorError):
        sup.record("svc")

    leaving = Record(project.workers[0], WorkerLog(None, 1000, 1), resident=object(), removing=True)
    assert leaving.state == "stopping"  # an in-process worker being removed is not "running"
