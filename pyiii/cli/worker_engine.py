"""The runtime `iii worker` commands' connection to the engine (spec/cli.md §0.6, §9.4).

`start`, `stop`, `status`, `logs`, `exec` and the waits after `add` are thin clients of the
engine's `worker::*` functions. This module finds the engine the way `iii trigger` does,
refuses one that serves another project, and turns the functions' W-coded errors into CLI
errors with the right exit codes.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from pyiii.cli.locate import EngineLocation, Project, locate_engine, probe_engine
from pyiii.cli.output import EXIT_NO_ENGINE, W_EXIT, CliError

_W_CODE = re.compile(r"^W\d{3}$")
_CALL_MARGIN_S = 5.0


class EngineSession:
    """A connected CLI worker (`iii-cli-<pid>`) that only calls functions."""

    def __init__(self, location: EngineLocation, client: Any, served: dict[str, Any] | None) -> None:
        self.location, self.client = location, client
        self.listing = served  # the worker::list answer read while checking the project

    @property
    def url(self) -> str:
        return self.location.url

    def call(self, function_id: str, payload: dict[str, Any], timeout_s: float = 30.0) -> Any:
        """Call a function and wait for its result; engine errors become CliErrors."""
        from pyiii.sdk import InvocationError

        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["result"] = self.client.trigger({"function_id": function_id, "payload": payload,
                                                     "timeout_ms": int(timeout_s * 1000)})
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name=f"iii-{function_id}", daemon=True).start()
        if not done.wait(timeout_s + _CALL_MARGIN_S):
            raise CliError(f"{function_id} did not answer within {timeout_s:g}s", wcode="W900")
        if "error" not in box:
            return box.get("result")
        exc = box["error"]
        if isinstance(exc, InvocationError):
            raise engine_error(self.location, function_id, exc.code, exc.message) from None
        if isinstance(exc, (ConnectionError, OSError)):
            raise CliError(f"connection to {self.url} lost before {function_id} answered",
                           EXIT_NO_ENGINE, wcode="W190") from None
        raise CliError(f"{function_id} failed: {type(exc).__name__}: {exc}", wcode="W900")

    def close(self) -> None:
        from pyiii.cli.trigger import _shutdown

        _shutdown(self.client)


def engine_error(location: EngineLocation, function_id: str, code: str | None, message: str) -> CliError:
    """An error answered by a `worker::*` function, with its §0.4 code and exit code."""
    code = str(code or "")
    if code in ("function_not_found", "FUNCTION_NOT_FOUND"):
        return CliError(f"the engine at {location.url} does not manage workers ({function_id} is not "
                        "available)", EXIT_NO_ENGINE, wcode="W190")
    hint = None
    text = message or code
    if "\nhint: " in text:  # engines may put the hint in the message's last line
        text, hint = text.split("\nhint: ", 1)
    if _W_CODE.match(code) and code in W_EXIT:
        return CliError(text, wcode=code, hint=hint)
    found = _W_CODE.match(text[:4]) if text else None
    if found and text[:4] in W_EXIT:  # "W110: message" style
        return CliError(text[4:].lstrip(": "), wcode=text[:4], hint=hint)
    return CliError(f"{function_id} failed: [{code}] {text}", wcode="W900", hint=hint)


def connect(project: Project, engine_flag: str | None, *, required: bool) -> EngineSession | None:
    """Connect to the engine serving `project`.

    `required`: no engine (or another project's) is an exit-3 error; otherwise None is
    returned and the caller says `note: the engine is not running`.
    """
    from pyiii.cli.trigger import _connect

    location = locate_engine(project, engine_flag)
    try:
        probe_engine(location)
        client = _connect(location)
    except CliError:
        if required:
            raise
        return None
    session = EngineSession(location, client, None)
    try:
        listing = session.call("worker::list", {}, 10.0)
    except CliError as exc:
        session.close()
        if required:
            raise
        if exc.wcode == "W190":
            return None
        raise
    session.listing = listing if isinstance(listing, dict) else None
    served = session.listing.get("config_path") if session.listing else None
    if served and project.config_path.exists() and not _same(Path(served), project.config_path):
        session.close()
        if not required:
            return None
        raise CliError(f"the engine at {location.url} serves {served}, not {project.config_path}",
                       EXIT_NO_ENGINE, wcode="W190")
    return session


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def wait_ready(session: EngineSession, names: list[str], timeout_s: float,
               expect: dict[str, str] | None = None) -> dict[str, str]:
    """§3.5: poll `worker::status` every 200 ms until each worker is running and connected, is
    `failed`, or the timeout passes; print the outcome of each. Returns name -> `running`,
    `failed` or `timeout`.

    `expect` maps a worker to the version just committed: until the engine's hot reload has
    picked it up, the status still describes the old instance, which must not count as ready."""
    import time

    from pyiii.cli import output

    started = time.monotonic()
    pending = list(names)
    outcome: dict[str, str] = {}
    last: dict[str, dict[str, Any]] = {}
    while pending:
        for name in list(pending):
            try:
                status = session.call("worker::status", {"name": name, "log_lines": 10}, 10.0)
            except CliError as exc:
                if exc.wcode == "W110":  # not picked up by the engine's reload yet
                    continue
                raise
            if not isinstance(status, dict):
                continue
            last[name] = status
            if expect and name in expect and status.get("version") not in (None, expect[name]):
                continue  # still the previous pin: the reload has not reached it yet
            state = status.get("state")
            if state == "running" and status.get("connected"):
                output.ok(f"{name} is running (connected after {time.monotonic() - started:.1f}s)")
                outcome[name] = "running"
                pending.remove(name)
            elif state == "failed":
                output.warning(f"{name} failed to start: {status.get('reason') or 'unknown reason'}")
                for line in (status.get("log_tail") or [])[-10:]:
                    output.plain(f"  {line}")
                output.plain(f"hint: iii worker logs {name}")
                outcome[name] = "failed"
                pending.remove(name)
        if not pending:
            break
        if time.monotonic() - started >= timeout_s:
            for name in pending:
                output.warning(f"{name} has not connected after {timeout_s:g}s; it stays declared — "
                               f"watch it with `iii worker status {name}`")
                outcome[name] = "timeout"
            break
        time.sleep(0.2)
    return outcome
