"""`iii trigger` (alias `t`): call one function on the engine and print its result (cli.md §2).

Parsing and presentation only: the payload rules live in `payload.py`, finding the engine in
`locate.py`, and the call itself goes through `pyiii.sdk` like any other worker's.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from pyiii.cli.locate import EngineLocation, find_project, locate_engine, no_engine, probe_engine
from pyiii.cli.output import EXIT_FAILED, EXIT_NO_ENGINE, EXIT_OK, EXIT_TIMEOUT, CliError, UsageError
from pyiii.cli.payload import build_payload, format_duration, resolve_timeout

# The CLI enforces the timeout itself (the engine has no call timeout, protocol §4.3); the SDK's
# own limit is set later so it never pre-empts ours with an ambiguous TIMEOUT error.
_SDK_TIMEOUT_MARGIN_MS = 5000
_SHUTDOWN_WAIT_S = 2.0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `trigger` and its alias `t`."""
    p = subparsers.add_parser(
        "trigger", aliases=["t"], help="call a function on the running engine",
        description="Call one function on the engine and print its result as JSON.",
    )
    p.add_argument("function_id", help="the function to call, e.g. hello::greet")
    p.add_argument("pairs", nargs="*", metavar="key=value",
                   help="payload fields; values are JSON when they parse, else strings")
    p.add_argument("--json", dest="json_arg", metavar="JSON|-|@FILE",
                   help="payload as inline JSON, '-' for stdin or @path")
    p.add_argument("--timeout", metavar="DURATION", help="30, 30s, 500ms, 2m (default 30s)")
    p.add_argument("--timeout-ms", metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--void", action="store_true", help="fire and forget: do not wait for a result")
    p.add_argument("--compact", action="store_true", help="print the result on one line")
    p.add_argument("--engine", metavar="URL", help="engine WebSocket URL (default: this project's engine)")
    p.add_argument("--address", metavar="HOST", help="engine host (with --port)")
    p.add_argument("--port", metavar="PORT", type=int, help="engine port (with --address)")
    p.add_argument("-n", "--namespace", metavar="NAMESPACE", help="namespace to resolve the function in")
    p.add_argument("-c", "--config", metavar="PATH", help="the project's config file")
    p.set_defaults(run=run, intermixed=True)
    return p


def engine_flag(args: argparse.Namespace) -> str | None:
    """`--engine URL`, or `--address HOST --port PORT` turned into a URL."""
    if args.engine and (args.address or args.port is not None):
        raise UsageError("--engine cannot be combined with --address/--port")
    if args.address or args.port is not None:
        if args.port is not None and not 0 < args.port < 65536:
            raise UsageError(f"invalid --port {args.port}")
        return f"ws://{args.address or '127.0.0.1'}:{args.port if args.port is not None else 49134}"
    return args.engine


def render(result: Any, compact: bool) -> str:
    """The result as JSON in received key order: 2-space indented, or one line."""
    if compact:
        return json.dumps(result, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(result, ensure_ascii=False, indent=2)


def run(args: argparse.Namespace) -> int:
    # Everything that can be a usage error is checked before connecting (exit 2 without engine).
    payload = build_payload(args.pairs, args.json_arg)
    timeout_ms = resolve_timeout(args.timeout, args.timeout_ms)
    location = locate_engine(find_project(args.config), engine_flag(args))
    probe_engine(location)
    client = _connect(location)
    try:
        if location.source == "default":
            _check_same_project(client, location)
        request: dict[str, Any] = {"function_id": args.function_id, "payload": payload,
                                   "timeout_ms": timeout_ms + _SDK_TIMEOUT_MARGIN_MS}
        if args.namespace:
            request["namespace"] = args.namespace
        if args.void:
            from pyiii.sdk import TriggerAction

            request["action"] = TriggerAction.Void()
        result = _call(client, request, timeout_ms, location)
    finally:
        _shutdown(client)
    if not args.void:
        sys.stdout.write(render(result, args.compact) + "\n")
        sys.stdout.flush()
    return EXIT_OK


def _options(cls: Any, **wanted: Any) -> Any:
    """Build SDK options with only the fields this SDK version has (it is evolving)."""
    try:
        accepted = set(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        accepted = set(wanted)
    return cls(**{k: v for k, v in wanted.items() if k in accepted})


def _connect(location: EngineLocation) -> Any:
    """Connect as worker `iii-cli-<pid>`, registering nothing; no reconnection (a CLI call is
    short: a lost connection is reported, not hidden)."""
    import pyiii.sdk as sdk

    if not os.environ.get("III_LOG_LEVEL"):
        for name in ("pyiii.sdk",):  # SDK chatter would drown the one line the user wants
            logging.getLogger(name).setLevel(logging.ERROR)
    reconnection = None
    if hasattr(sdk, "ReconnectionConfig"):
        reconnection = _options(sdk.ReconnectionConfig, max_retries=0)
    options = _options(sdk.InitOptions, worker_name=f"iii-cli-{os.getpid()}",
                       reconnection_config=reconnection, enable_metrics_reporting=False,
                       otel={"enabled": False})
    try:
        return sdk.register_worker(location.url, options)
    except Exception as exc:  # the SDK raises ConnectionError (or its own) when it cannot connect
        raise no_engine(location, str(exc) or type(exc).__name__) from None


def _call(client: Any, request: dict[str, Any], timeout_ms: int, location: EngineLocation) -> Any:
    """Run the blocking SDK call on a thread so the CLI can enforce its timeout and notice a
    lost connection, whatever the SDK does with pending calls."""
    from pyiii.sdk import InvocationError

    function_id = request["function_id"]
    done = threading.Event()
    lost = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = client.trigger(request)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    def on_state(state: Any) -> None:
        if str(state) in ("disconnected", "failed", "reconnecting"):
            lost.set()

    listen = getattr(client, "add_connection_state_listener", None)
    if callable(listen):
        try:
            listen(on_state)
        except Exception:  # noqa: BLE001 - optional: without it loss shows as an SDK error
            pass
    threading.Thread(target=work, name="iii-trigger", daemon=True).start()
    deadline = time.monotonic() + timeout_ms / 1000
    while not done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
        if lost.is_set() and not done.wait(0.2):  # a result already read still wins
            raise CliError(f"connection to {location.url} lost before {function_id} answered")
        if time.monotonic() >= deadline:
            raise CliError(f"{function_id} timed out after {format_duration(timeout_ms)}", EXIT_TIMEOUT)
    if "error" not in outcome:
        return outcome.get("result")
    exc = outcome["error"]
    if isinstance(exc, InvocationError):
        trace = getattr(exc, "stacktrace", None)
        raise CliError(f"{function_id} failed: [{exc.code}] {exc.message}", EXIT_FAILED,
                       details=[trace] if trace else ())
    if isinstance(exc, (ConnectionError, OSError)) or lost.is_set():
        raise CliError(f"connection to {location.url} lost before {function_id} answered")
    raise CliError(f"{function_id} failed: {type(exc).__name__}: {exc}")


def _check_same_project(client: Any, location: EngineLocation) -> None:
    """An engine found on the default port may serve another project (§0.6): refuse it then.

    Best effort: an engine without `worker::list`, or one run with `--use-default-config`
    (no config path), is accepted.
    """
    project = location.project
    if not project.config_path.is_file():
        return
    box: dict[str, Any] = {}

    def ask() -> None:
        try:
            box["r"] = client.trigger({"function_id": "worker::list", "payload": {}, "timeout_ms": 2000})
        except BaseException:  # noqa: BLE001 - best effort
            pass

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(2.5)
    served = box.get("r", {}).get("config_path") if isinstance(box.get("r"), dict) else None
    if not served:
        return
    try:
        same = os.path.samefile(served, project.config_path)
    except OSError:
        same = os.path.abspath(served) == str(project.config_path)
    if not same:
        raise CliError(f"the engine at {location.url} serves {served}, not {project.config_path}",
                       EXIT_NO_ENGINE)


def _shutdown(client: Any) -> None:
    """Close the connection without letting a stuck SDK hang the command."""
    t = threading.Thread(target=getattr(client, "shutdown", lambda: None), daemon=True)
    t.start()
    t.join(_SHUTDOWN_WAIT_S)
