"""The engine functions ``worker::*`` (spec/cli.md §9.4): the runtime half of ``iii worker``.

Registered as engine functions (owned by the engine itself, like ``engine::*``), so they exist
exactly while an engine runs a supervisor. Every refusal is a ``CallError`` whose code is one of
cli.md §0.4 (W105 bad request, W110 not found...), which the CLI turns into its exit codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..engine.errors import CallError
from .exec import run_exec
from ..engine.firstparty import ALWAYS_ON
from .status import always_on_status, list_document, undeclared_status, worker_status
from .supervisor import Supervisor, SupervisorError

if TYPE_CHECKING:
    from ..engine.core import CallContext

MAX_WAIT_MS = 5000


def _name(data: dict[str, Any]) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise CallError("W105", "missing or non-string field `name`")
    return name


def _int(data: dict[str, Any], key: str, default: int, minimum: int = 0) -> int:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise CallError("W105", f"`{key}` must be an integer of at least {minimum}")
    return value


def register_worker_functions(engine: Any, sup: Supervisor) -> None:
    handlers = WorkerFunctions(sup)
    add = engine.add_engine_function
    add("worker::list", handlers.list, "List the declared workers and their state")
    add("worker::status", handlers.status, "State, log tail and functions of one worker")
    add("worker::start", handlers.start, "Start a declared worker")
    add("worker::stop", handlers.stop, "Stop a declared worker")
    add("worker::restart", handlers.restart, "Restart a declared worker")
    add("worker::logs", handlers.logs, "Read a worker's log lines after a cursor")
    add("worker::exec", handlers.exec, "Run a command inside a worker's sandbox")


class WorkerFunctions:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def _record(self, name: str) -> Any:
        try:
            return self.sup.record(name)
        except SupervisorError as exc:
            raise CallError(exc.code, exc.message) from None

    def list(self, ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
        return list_document(self.sup)

    def status(self, ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
        name = _name(data)
        lines = _int(data, "log_lines", 10)
        record = self.sup.records.get(name)
        if record is None and name in ALWAYS_ON:
            doc = always_on_status(self.sup, name)
            doc.update(log_tail=[], declared=self.sup.project.worker(name) is not None)
        elif record is None:
            if not self.sup.connections(name):
                self._record(name)  # raises W110
            doc = undeclared_status(self.sup, name)
            doc.update(log_tail=[], declared=False)
        else:
            doc = worker_status(self.sup, record)
            doc.update(log_tail=record.log.tail(lines), declared=True)
        doc["functions"] = sorted({f.function_id for c in self.sup.connections(name)
                                   for f in self.sup.engine.functions.owned_by(c)})
        return doc

    async def start(self, ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
        return await self._run("start", _name(data))

    async def stop(self, ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
        return await self._run("stop", _name(data))

    async def restart(self, ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
        return await self._run("restart", _name(data))

    async def _run(self, action: str, name: str) -> dict[str, Any]:
        if action == "start" and name in ALWAYS_ON:
            return always_on_status(self.sup, name)  # always running
        if action == "restart" and name in ALWAYS_ON:
            action = "stop"  # refused with the same message as stop
        try:
            record = await getattr(self.sup, action)(name)
        except SupervisorError as exc:
            raise CallError(exc.code, exc.message) from None
        return worker_status(self.sup, record)

    async def logs(self, ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
        record = self._record(_name(data))
        count = _int(data, "lines", 100)
        cursor = data.get("cursor")
        if cursor is not None and (not isinstance(cursor, int) or isinstance(cursor, bool)):
            raise CallError("W105", "`cursor` must be the integer a previous call returned")
        wait_ms = min(_int(data, "wait_ms", 0), MAX_WAIT_MS)
        lines, new_cursor = await record.log.read(count, cursor, wait_ms)
        return {"lines": lines, "cursor": new_cursor}

    async def exec(self, ctx: "CallContext", data: dict[str, Any]) -> dict[str, Any]:
        name = _name(data)
        record = self._record(name)
        argv = data.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise CallError("W105", "`argv` must be a non-empty list of strings")
        env = data.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise CallError("W105", "`env` must map names to strings")
        cwd = data.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise CallError("W105", "`cwd` must be a string")
        timeout_ms = _int(data, "timeout_ms", 60000, 1)
        if record.in_process or (record.choice is None and record.entry.kind == "builtin"
                                 and record.entry.isolation == "in-process"):
            raise CallError("W105", f"{name} runs inside the engine process (isolation: "
                                    "in-process); exec needs a worker that runs as a process")
        process = record.process
        if process is None or process.launch is None or process.pid is None:
            raise CallError("W110", f"{name} is not running")
        try:
            return await run_exec(process.launch, process.pid, argv, env, cwd, timeout_ms)
        except FileNotFoundError as exc:
            return _spawn_failure(127, f"{argv[0]}: command not found ({exc.strerror})")
        except PermissionError as exc:
            return _spawn_failure(126, f"{argv[0]}: not executable ({exc.strerror})")


def _spawn_failure(code: int, message: str) -> dict[str, Any]:
    import base64

    return {"exit_code": code, "signal": None, "stdout": "",
            "stderr": base64.b64encode((message + "\n").encode()).decode(), "truncated": False,
            "timed_out": False, "joined": False}
