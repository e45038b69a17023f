"""A real `iii` engine in a temp project with managed test workers, and a pyiii.sdk caller.

Used by tests/test_supervisor*.py, tests/test_sandbox*.py and tests/test_worker_functions*.py.
The caller is a plain SDK client in the test process (faster than one `iii trigger` process per
call); it connects on its own, so the engine reports it with isolation null.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from pyiii.sdk import InitOptions, InvocationError, register_worker
from tests.iii_process import IIIProcs, Proc, manager_config, wait_for

SVC_DIR = Path(__file__).parent / "svc"


def svc_entry(name: str = "svc", **fields: str) -> str:
    """A config.yaml entry for a copy of the svc worker in ./<name>; fields as YAML text."""
    lines = [f"  - name: {name}", f"    worker_path: ./{name}"]
    lines += [f"    {key}: {value}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ManagedEngine:
    def __init__(self, procs: IIIProcs, extra: str, copies: tuple[str, ...] = ("svc",),
                 env: dict[str, str | None] | None = None, project: Path | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.procs = procs
        if project is None:
            project = procs.project("proj", manager_config(0, extra))
            for name in copies:
                target = project / name
                shutil.copytree(SVC_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
                manifest = target / "iii.worker.yaml"
                manifest.write_text(manifest.read_text().replace("name: svc", f"name: {name}", 1))
        self.project = project
        self.proc: Proc = procs.engine(project, *args, env=env)
        self.url = self.proc.wait_ready(20)
        self.pids: set[int] = set()
        self._closed = False
        self.client = register_worker(self.url, InitOptions(worker_name="tester"))
        procs.on_close(self.close_client)
        procs.on_close(self.kill_workers)

    def close_client(self) -> None:
        if not self._closed:  # a second shutdown() of the SDK client would wait forever
            self._closed = True
            self.client.shutdown()

    def kill_workers(self) -> None:
        """Teardown: every worker group this engine ever reported, and any left in .iii/run."""
        for path in (self.project / ".iii" / "run").glob("*.json"):
            try:
                self.pids.add(json.loads(path.read_text())["pgid"])
            except (OSError, ValueError, KeyError):
                pass
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def call(self, function_id: str, payload: Any = None, timeout_ms: int = 15000) -> Any:
        return self.client.trigger({"function_id": function_id, "payload": payload or {},
                                    "timeout_ms": timeout_ms})

    def error(self, function_id: str, payload: Any = None) -> InvocationError:
        try:
            result = self.call(function_id, payload)
        except InvocationError as exc:
            return exc
        raise AssertionError(f"{function_id} succeeded: {result}")

    def status(self, name: str, **extra: Any) -> dict[str, Any]:
        doc = self.call("worker::status", {"name": name, **extra})
        if doc.get("pid"):
            self.pids.add(doc["pid"])
        return doc

    def wait_state(self, name: str, state: str, timeout: float = 15.0,
                   connected: bool | None = None) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                doc = self.status(name)
            except InvocationError as exc:
                if exc.code == "W110":  # not declared yet: a config edit is being reloaded
                    return None
                raise
            if doc["state"] == state and (connected is None or doc["connected"] == connected):
                return doc
            return None
        return wait_for(check, timeout, 0.1, f"{name} to be {state}")

    def write_config(self, extra: str) -> None:
        path = self.project / "config.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(manager_config(0, extra))
        os.replace(tmp, path)

    def isolation_of(self, name: str) -> Any:
        rows = self.call("engine::workers::list")["workers"]
        found = [w for w in rows if w["name"] == name]
        assert found, f"{name} not connected: {rows}"
        return found[0]["isolation"]

    def exec(self, name: str, argv: list[str], **extra: Any) -> dict[str, Any]:
        doc = self.call("worker::exec", {"name": name, "argv": argv, **extra}, timeout_ms=30000)
        doc["out"] = base64.b64decode(doc["stdout"]).decode()
        doc["err"] = base64.b64decode(doc["stderr"]).decode()
        return doc

    def log_text(self, name: str) -> str:
        return (self.project / ".iii" / "logs" / f"{name}.log").read_text()
