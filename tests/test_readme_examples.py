"""The README's quickstart, as written: the sync math worker (a script, so pyiii.sdk runs its
own loop in a thread) and the async caller (``pyiii.sdk.run``), against a real `iii`."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from tests.iii_process import REPO_ROOT, base_env, iii_procs, manager_config  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def readme_block(first_line: str) -> str:
    """The fenced Python block of README.md that starts with ``first_line``."""
    text = (REPO_ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"README.md has no python block starting with {first_line!r}")


def test_quickstart_worker_and_async_caller(iii_procs, tmp_path):
    project = iii_procs.project("quickstart", manager_config(0))
    engine = iii_procs.engine(project)
    url = engine.wait_ready()
    (tmp_path / "math_worker.py").write_text(readme_block("# math_worker.py"))
    (tmp_path / "caller.py").write_text(readme_block("# caller.py"))
    env = base_env(tmp_path / "home", {"III_URL": url, "PYTHONPATH": str(REPO_ROOT)})

    worker = subprocess.Popen([sys.executable, "math_worker.py"], cwd=tmp_path, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline() == "serving math::add — press Enter to stop\n"
        deadline = time.monotonic() + 15
        while True:  # the worker's registration reaches the engine just after the prompt
            caller = subprocess.run([sys.executable, "caller.py"], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=30)
            if caller.returncode == 0 or time.monotonic() > deadline \
                    or "function_not_found" not in caller.stderr:
                break
            time.sleep(0.1)
        assert caller.returncode == 0, caller.stderr
        assert caller.stdout == "{'c': 5}\n"
        worker.stdin.write("\n")
        worker.stdin.flush()
        assert worker.wait(15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(5)
    engine.signal(signal.SIGTERM)
    assert engine.wait(12) == 0, engine.stderr
