"""`iii worker start`, `stop`, `restart` and `exec` (spec/cli.md §4.5, §4.8).

Thin clients of the engine's `worker::start/stop/restart/exec`: they need the engine (exit 3,
`exec` 125) and the names must be declared in config.yaml (exit 1).
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from pyiii.cli import output
from pyiii.cli.output import EXIT_TIMEOUT, CliError, UsageError
from pyiii.cli.worker_common import add_common, check_name, confirm, opt, project_of, read_config
from pyiii.engine.firstparty import ALWAYS_ON

EXIT_EXEC_FAILED = 125
_ACTION_TIMEOUT_S = 120.0


def add_parser(sub: Any, run_wrapped: Any) -> None:
    for verb, text in (("start", "start declared workers"), ("restart", "stop then start workers")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("names", nargs="+", metavar="NAME")
        p.add_argument("--no-wait", action="store_true", help="do not wait for the workers to connect")
        p.add_argument("--wait-timeout", type=float, default=60.0, metavar="S")
        add_common(p, runtime=True)
        p.set_defaults(run=run_wrapped(run_start), verb=verb)
    s = sub.add_parser("stop", help="stop running workers (until start, restart or the next engine start)")
    s.add_argument("names", nargs="+", metavar="NAME")
    s.add_argument("-y", "--yes", action="store_true", help="do not ask")
    add_common(s, runtime=True)
    s.set_defaults(run=run_wrapped(run_stop), verb="stop")

    e = sub.add_parser("exec", help="run a command inside a worker's sandbox",
                       usage="iii worker exec NAME [-e KEY=VALUE]... [-w DIR] [--timeout DURATION] -- COMMAND [ARGS...]")
    _exec_options(e)
    e.add_argument("name")
    e.add_argument("command", nargs=argparse.REMAINDER)
    add_common(e, runtime=True)
    e.set_defaults(run=run_wrapped(run_exec))


def _exec_options(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """exec's own options; also parsed from the words between NAME and `--`."""
    S = argparse.SUPPRESS
    p.add_argument("-e", "--env", action="append", default=S if suppress else [], metavar="KEY=VALUE")
    p.add_argument("-w", "--workdir", metavar="DIR", default=S if suppress else None)
    p.add_argument("--timeout", metavar="DURATION", default=S if suppress else "60s")


def _split_exec(args: argparse.Namespace) -> list[str]:
    """argparse hands everything after NAME to `command`: options written between NAME and
    `--` are parsed here, the words after `--` are the command."""
    words = list(args.command)
    if "--" not in words:
        return words
    cut = words.index("--")
    head, argv = words[:cut], words[cut + 1:]
    if head:
        from pyiii.cli.main import Parser

        extra = Parser(prog="iii worker exec", add_help=False)
        _exec_options(extra, suppress=True)
        add_common(extra, runtime=True)
        extra.parse_args(head, namespace=args)
    return argv


def _declared(args: argparse.Namespace, names: list[str]) -> tuple[Any, list[str]]:
    project = project_of(args)
    cfg = read_config(project, required=False)
    canon = [check_name(n) for n in names]
    for name in canon:
        # No config file: the engine (a --use-default-config one, §1.2) decides which names
        # exist, and answers W110 (exit 1) for the others.
        if cfg is not None and cfg.worker(name) is None:
            raise CliError(f"no worker named '{name}' in config.yaml", wcode="W110", hint="run `iii worker list`")
    return (project, cfg), list(dict.fromkeys(canon))


def _states(session: Any) -> dict[str, dict[str, Any]]:
    listing = session.call("worker::list", {}, 15.0) or {}
    return {str(w.get("name")): w for w in listing.get("workers") or [] if isinstance(w, dict)}


def run_start(args: argparse.Namespace) -> int:
    from pyiii.cli.worker_engine import connect, wait_ready

    (project, cfg), names = _declared(args, args.names)
    session = connect(project, opt(args, "engine"), required=True)
    assert session is not None
    try:
        states = _states(session)
        waiting, results = [], {}
        for name in names:
            if args.verb == "start" and states.get(name, {}).get("state") == "running":
                output.plain(f"{name} is already running")
                results[name] = "running"
                continue
            entry = cfg.worker(name) if cfg is not None else None
            if entry is not None and not entry.enabled:
                output.note(f"{name} is disabled in config.yaml; started for this engine run only")
            status = session.call(f"worker::{args.verb}", {"name": name}, _ACTION_TIMEOUT_S)
            results[name] = str((status or {}).get("state"))
            waiting.append(name)
        if waiting and not opt(args, "no_wait"):
            results.update(wait_ready(session, waiting, float(args.wait_timeout)))
        elif waiting:
            for name in waiting:
                output.ok(f"{'restarted' if args.verb == 'restart' else 'started'} {name}")
    finally:
        session.close()
    if opt(args, "json"):
        output.emit_json({"ok": True, "workers": results})
    return 1 if any(v == "failed" for v in results.values()) else 0


def run_stop(args: argparse.Namespace) -> int:
    from pyiii.cli.worker_engine import connect

    (project, _cfg), names = _declared(args, args.names)
    for name in names:
        if name == "iii-worker-manager":
            raise CliError("iii-worker-manager is the engine's listener and cannot be stopped", 1, wcode="W105")
        if name in ALWAYS_ON:
            raise CliError(f"{name} is always on and cannot be stopped", 1, wcode="W105")
    confirm(args, "stop", f"it stops {', '.join(names)}",
            f"Stop worker{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)}?")
    session = connect(project, opt(args, "engine"), required=True)
    assert session is not None
    results = {}
    try:
        states = _states(session)
        for name in names:
            if states.get(name, {}).get("state") in ("stopped", "disabled", "failed", None):
                output.plain(f"{name} is already stopped")
                results[name] = "stopped"
                continue
            status = session.call("worker::stop", {"name": name}, _ACTION_TIMEOUT_S)
            results[name] = str((status or {}).get("state"))
            output.ok(f"stopped {name}")
    finally:
        session.close()
    if opt(args, "json"):
        output.emit_json({"ok": True, "workers": results})
    return 0


# --------------------------------------------------------------------------- exec

def run_exec(args: argparse.Namespace) -> int:
    from pyiii.cli.payload import resolve_timeout
    from pyiii.cli.worker_engine import connect

    argv = _split_exec(args)
    if not argv:
        raise UsageError("no command given", hint="iii worker exec <name> -- <command> [args...]")
    env: dict[str, str] = {}
    for item in args.env:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"expected KEY=VALUE after -e, got '{item}'")
        env[key] = value
    timeout_ms = resolve_timeout(args.timeout, None)
    name = check_name(args.name)
    project = project_of(args)
    try:
        cfg = read_config(project, required=False)
        if cfg is None or cfg.worker(name) is None:
            raise CliError(f"no worker named '{name}' in config.yaml", EXIT_EXEC_FAILED, wcode="W110",
                           hint="run `iii worker list`")
        session = connect(project, opt(args, "engine"), required=True)
    except CliError as exc:
        exc.code = EXIT_EXEC_FAILED if exc.code in (1, 3) else exc.code
        raise
    assert session is not None
    request: dict[str, Any] = {"name": name, "argv": argv, "timeout_ms": timeout_ms}
    if env:
        request["env"] = env
    if args.workdir:
        request["cwd"] = args.workdir
    try:
        answer = session.call("worker::exec", request, timeout_ms / 1000 + 15)
    except CliError as exc:
        exc.code = EXIT_EXEC_FAILED
        if exc.message.endswith("is not running") and not exc.hint:
            exc.hint = f"iii worker start {name}"
        raise
    finally:
        session.close()
    answer = answer if isinstance(answer, dict) else {}
    if answer.get("joined") is False:
        output.note(f"ran in a fresh sandbox identical to {name}'s (could not join its namespaces)")
    for key, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        data = answer.get(key) or ""
        raw = base64.b64decode(data) if data else b""
        stream.flush()
        stream.buffer.write(raw)
        stream.flush()
    if answer.get("truncated"):
        output.warning("output was truncated (8 MiB per stream)")
    if answer.get("timed_out"):
        output.error(f"the command timed out after {args.timeout}")
        return EXIT_TIMEOUT
    if answer.get("signal"):
        return 128 + int(answer["signal"])
    return int(answer.get("exit_code") or 0)
