"""`iii worker list`, `status` and `logs` (spec/cli.md §4.4, §4.6, §4.7).

Read-only views: the declared part comes from config.yaml and iii.lock, the live part from the
engine's `worker::list` / `worker::status` / `worker::logs`. Without an engine they still
answer with what the files (and the log files) say.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.locate import Project
from pyiii.cli.output import EXIT_NO_ENGINE, CliError
from pyiii.cli.worker_common import add_common, check_name, opt, project_of, read_config

_FOLLOW_WAIT_MS = 5000


def add_parser(sub: Any, run_wrapped: Any) -> None:
    p = sub.add_parser("list", aliases=["ls"], help="list declared workers and their state",
                       description="One row per declared worker, in file order.")
    add_common(p, runtime=True)
    p.set_defaults(run=run_wrapped(run_list))

    s = sub.add_parser("status", help="show one worker's state and recent log")
    s.add_argument("name")
    s.add_argument("-n", "--lines", type=int, default=10, metavar="LINES")
    add_common(s, runtime=True)
    s.set_defaults(run=run_wrapped(run_status))

    g = sub.add_parser("logs", help="print (and follow) a worker's log")
    g.add_argument("name")
    g.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    g.add_argument("-n", "--lines", type=int, default=100, metavar="LINES")
    add_common(g, runtime=True)
    g.set_defaults(run=run_wrapped(run_logs))


def _lock(project: Project) -> Any:
    try:
        from pyiii.manager.lockfile import read_lock

        return read_lock(project.project_dir)
    except Exception:  # noqa: BLE001 - a view shows what it can; verify reports lock errors
        return None


def declared_view(project: Project, cfg: Any, lock: Any, entry: Any) -> dict[str, Any]:
    """KIND and VERSION of a declared worker from the files alone (locked, else manifest)."""
    locked = lock.workers.get(entry.name) if lock is not None else None
    kind = {"builtin": "builtin", "local": "local", "oci": "oci", "registry": "package"}[entry.kind]
    if locked is not None and entry.kind in ("registry", "oci"):
        kind = locked.type
    version = locked.version if locked is not None else None
    if version is None and entry.kind == "local":
        try:
            from pyiii.manager.manifest import load_manifest

            version = load_manifest(cfg.worker_dir(entry)).version
        except Exception:  # noqa: BLE001 - a broken manifest shows as "-"
            version = None
    if version is None and entry.kind == "builtin":
        from pyiii.manager.registry.firstparty import shipped_version

        version = shipped_version()
    return {"name": entry.name, "kind": kind, "version": version, "declared_version": entry.version,
            "registry": _registry_of(locked), "project_dir": str(project.project_dir), "locked": locked is not None,
            "isolation": entry.isolation, "enabled": entry.enabled, "worker_path": entry.worker_path,
            "image": entry.image}


def _registry_of(locked: Any) -> str | None:
    """The registry a pin came from, read off its locked URL (`./reg/packages/...` → `./reg`)."""
    if locked is None:
        return None
    arts = [locked.package] if locked.package is not None else list(locked.artifacts.values())
    for art in arts:
        url = str(getattr(art, "url", "") or "")
        for marker in ("/packages/", "/binaries/"):
            if marker in url:
                return url.split(marker, 1)[0] or None
    return None


def _offline_status(view: dict[str, Any]) -> dict[str, Any]:
    return {"name": view["name"], "kind": view["kind"], "type": view["kind"], "version": view["version"],
            "state": "stopped", "connected": False, "pid": None, "isolation": None}


def _config_or_note(project: Project, args: argparse.Namespace) -> Any:
    """config.yaml, or its error plus the engine's last-valid-version note (§4.4)."""
    try:
        return read_config(project, required=False)
    except CliError:
        from pyiii.cli.worker_engine import connect

        session = connect(project, opt(args, "engine"), required=False)
        if session is not None:
            problem = (session.listing or {}).get("config_error")
            session.close()
            if problem:
                message = problem.get("message") if isinstance(problem, dict) else str(problem)
                output.warning(f"config.yaml has errors; the engine keeps running the last valid version: {message}")
        raise


def run_list(args: argparse.Namespace) -> int:
    from pyiii.cli.worker_engine import connect

    project = project_of(args)
    cfg = _config_or_note(project, args)
    lock = _lock(project)
    entries = list(cfg.workers) if cfg is not None else []
    session = connect(project, opt(args, "engine"), required=False)
    live: dict[str, dict[str, Any]] = {}
    config_error = None
    if session is not None:
        listing = session.listing or {}
        session.close()
        live = {str(w.get("name")): w for w in listing.get("workers") or [] if isinstance(w, dict)}
        config_error = listing.get("config_error")
        if config_error:
            message = config_error.get("message") if isinstance(config_error, dict) else str(config_error)
            output.warning(f"config.yaml has errors; the engine keeps running the last valid version: {message}")
    rows, docs = [], []
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            continue  # iii-worker-manager: one row however many listeners
        seen.add(entry.name)
        view = declared_view(project, cfg, lock, entry)
        status = live.get(entry.name) if session is not None else None
        doc = dict(status) if status else _offline_status(view)
        doc.setdefault("kind", view["kind"])
        state = str(doc.get("state") or "stopped") if session is not None else "stopped"
        rows.append([entry.name, view["kind"], view["version"] or "-", state,
                     str(doc.get("pid")) if doc.get("pid") and session is not None else "-",
                     str(doc.get("isolation") or "-") if session is not None else "-"])
        docs.append(doc)
    for name, status in live.items():
        if cfg is None and session is not None:
            # no config file here: an engine running the default configuration (§1.2) shows its own set
            rows.append([name, str(status.get("type") or status.get("kind") or "-"), str(status.get("version") or "-"),
                         str(status.get("state") or "stopped"), str(status.get("pid") or "-"),
                         str(status.get("isolation") or "-")])
            docs.append(status)
            continue
        if name not in seen and status.get("state") not in (None, "stopped") and status.get("managed", True):
            if status.get("kind") is None and status.get("declared") is None:
                continue
            rows.append([name, str(status.get("type") or status.get("kind") or "-"), str(status.get("version") or "-"),
                         "stopping", str(status.get("pid") or "-"), str(status.get("isolation") or "-")])
            docs.append({**status, "state": "stopping"})
    if session is None:
        output.note("the engine is not running")
    if opt(args, "json"):
        output.emit_json({"ok": True, "engine": session.url if session is not None else None,
                          "config_error": config_error, "workers": docs})
        return 0
    if not rows:
        output.plain("No workers declared. Add one with `iii worker add <name>`.")
        return 0
    sys.stdout.write(table(["NAME", "KIND", "VERSION", "STATE", "PID", "ISOLATION"], rows))
    sys.stdout.flush()
    return 0


def table(header: list[str], rows: list[list[str]]) -> str:
    """Two-space separated columns padded to the widest cell (no trailing spaces)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- status

def _declared_entry(project: Project, name: str, args: argparse.Namespace) -> tuple[Any, Any]:
    cfg = _config_or_note(project, args)  # an invalid file: its error plus the engine's note (§1.5)
    if cfg is None:
        return None, None  # no config file: the engine's own set decides (§1.2)
    entry = cfg.worker(name)
    if entry is None:
        raise CliError(f"no worker named '{name}' in config.yaml", wcode="W110", hint="run `iii worker list`")
    return cfg, entry


def _kind_text(view: dict[str, Any], entry: Any) -> str:
    if entry.kind == "local":
        return f"local ({entry.worker_path})"
    if entry.kind == "oci":
        return f"{view['kind']} ({entry.image})"
    if entry.kind == "builtin":
        return "builtin (first-party)"
    return f"{view['kind']} (registry {view['registry']})" if view.get("registry") else f"{view['kind']} (registry)"


def _version_text(view: dict[str, Any]) -> str:
    parts = []
    if view["version"]:
        origin = "manifest" if view["kind"] == "local" else "locked" if view.get("locked", True) else "shipped"
        parts.append(f"{view['version']} ({origin})")
    if view["declared_version"]:
        parts.append(f"declared {view['declared_version']}")
    return "; ".join(parts) or "-"


def _shown(path: str, project_dir: str | None) -> str:
    """A path inside the project as the user reads it in the folder (`.iii/logs/hello.log`)."""
    if project_dir:
        try:
            return str(Path(path).relative_to(project_dir))
        except ValueError:
            pass
    return path


def _status_lines(view: dict[str, Any], entry: Any, status: dict[str, Any] | None) -> list[tuple[str, str]]:
    lines = [("name", view["name"]), ("kind", _kind_text(view, entry)), ("version", _version_text(view))]
    if status is None:
        return lines + [("state", "engine not running")]
    state = str(status.get("state") or "stopped")
    if state == "running":
        bits = [f"running since {status.get('started_at') or '?'}"]
        if status.get("pid"):
            bits.append(f"pid {status['pid']}")
        bits.append(f"restarts {status.get('restarts') or 0}")
        state = ", ".join(bits)
    elif status.get("restarts"):
        state += f", restarts {status['restarts']}"
    lines.append(("state", state))
    functions = status.get("functions") or []
    lines.append(("connected", ("yes" + (f" — functions: {', '.join(functions)}" if functions else ""))
                  if status.get("connected") else "no"))
    isolation = str(status.get("isolation") or view["isolation"] or "-")
    probe = status.get("_probe") if isinstance(status.get("_probe"), dict) else {}
    if isolation == "namespace" and probe.get("version"):
        isolation += f" (bubblewrap {probe['version']})"
    if status.get("isolation_reason"):
        isolation += f" ({status['isolation_reason']})"
    limits = status.get("limits")
    if isinstance(limits, dict) and limits:
        isolation += "; limits: " + ", ".join(f"{k} {v}" for k, v in limits.items())
    lines.append(("isolation", isolation))
    if status.get("install_path"):
        lines.append(("installed", _shown(str(status["install_path"]), view.get("project_dir"))))
    if status.get("log_path"):
        lines.append(("log", _shown(str(status["log_path"]), view.get("project_dir"))))
    if status.get("reason"):
        lines.append(("reason", str(status["reason"])))
    last = status.get("last_exit")
    if isinstance(last, dict) and (last.get("code") is not None or last.get("signal") is not None):
        what = f"code {last['code']}" if last.get("code") is not None else f"signal {last.get('signal')}"
        lines.append(("last exit", what + (f" at {last['at']}" if last.get("at") else "")))
    return lines


def _fetch_status(session: Any, name: str, lines: int) -> tuple[dict[str, Any], list[str]]:
    """``worker::status`` of ``name`` with its last ``lines`` log lines; closes the session."""
    try:
        status = session.call("worker::status", {"name": name, "log_lines": max(0, lines)}, 15.0)
    finally:
        session.close()
    status = status if isinstance(status, dict) else {}
    return status, [str(line) for line in status.get("log_tail") or []]


def _engine_only_status(project: Project, name: str, args: argparse.Namespace) -> int:
    """`status` without a config file: what an engine running the default configuration says."""
    from types import SimpleNamespace

    from pyiii.cli.worker_engine import connect

    session = connect(project, opt(args, "engine"), required=True)
    assert session is not None
    status, tail = _fetch_status(session, name, args.lines)
    if opt(args, "json"):
        output.emit_json({"ok": True, **status, "log_tail": tail})
        return 0
    kind = str(status.get("kind") or "builtin")
    entry = SimpleNamespace(kind=kind, worker_path=None, image=None)
    view = {"name": name, "kind": str(status.get("type") or kind), "version": status.get("version"),
            "declared_version": None, "isolation": status.get("isolation"), "locked": False}
    _print_status(_status_lines(view, entry, status), tail)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from pyiii.cli.worker_engine import connect

    name = check_name(args.name)
    project = project_of(args)
    cfg, entry = _declared_entry(project, name, args)
    if entry is None:
        return _engine_only_status(project, name, args)
    view = declared_view(project, cfg, _lock(project), entry)
    try:
        session = connect(project, opt(args, "engine"), required=True)
    except CliError as exc:
        if exc.code != EXIT_NO_ENGINE:
            raise
        if opt(args, "json"):
            output.error(exc.message, hint=exc.hint)
            output.emit_json({"ok": False, "error": exc.document()["error"], "declared": view})
            return exc.code
        _print_status(_status_lines(view, entry, None), [])
        raise
    assert session is not None
    status, tail = _fetch_status(session, name, args.lines)
    probe = (session.listing or {}).get("isolation_probe")
    if opt(args, "json"):
        output.emit_json({"ok": True, **status, "log_tail": tail})
        return 0
    _print_status(_status_lines(view, entry, {**status, "_probe": probe}), tail)
    return 0


def _print_status(lines: list[tuple[str, str]], tail: list[str]) -> None:
    width = max(len(k) for k, _ in lines) + 1
    out = [f"{(k + ':').ljust(width)} {v}" for k, v in lines]
    if tail:
        out.append("recent log:")
        out += [f"  {line}" for line in tail]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- logs

def _emit_lines(lines: list[str], as_json: bool, name: str) -> None:
    for line in lines:
        sys.stdout.write((json.dumps({"name": name, "line": line}, ensure_ascii=False) if as_json else line) + "\n")
    sys.stdout.flush()


def run_logs(args: argparse.Namespace) -> int:
    from pyiii.cli.worker_engine import connect

    name = check_name(args.name)
    project = project_of(args)
    try:
        cfg = read_config(project, required=False)
    except CliError:
        cfg = None  # logs outlive a broken config file
    declared = cfg is not None and cfg.worker(name) is not None
    as_json = bool(opt(args, "json"))
    session = connect(project, opt(args, "engine"), required=False)
    if session is not None:
        try:
            return _engine_logs(session, name, args, declared, as_json)
        except KeyboardInterrupt:
            return 0
        finally:
            session.close()
    from pyiii.cli.worker_logfiles import follow_file, log_files, tail_lines

    files = log_files(project.state_dir / "logs", name)
    if not files:
        if not declared:
            raise CliError(f"no worker named '{name}' and no logs for it", wcode="W110")
        if not args.follow:
            output.plain(f"no logs for {name} yet")
            return 0
    _emit_lines(tail_lines(files, max(0, args.lines)), as_json, name)
    if args.follow:
        try:
            follow_file(project.state_dir / "logs" / f"{name}.log", lambda ls: _emit_lines(ls, as_json, name))
        except KeyboardInterrupt:
            return 0
    return 0


def _engine_logs(session: Any, name: str, args: argparse.Namespace, declared: bool, as_json: bool) -> int:
    try:
        answer = session.call("worker::logs", {"name": name, "lines": max(0, args.lines)}, 15.0)
    except CliError as exc:
        if exc.wcode == "W110" and not declared:
            raise CliError(f"no worker named '{name}' and no logs for it", wcode="W110") from None
        raise
    lines = [str(x) for x in (answer or {}).get("lines") or []]
    if not lines and not args.follow:
        output.plain(f"no logs for {name} yet")
        return 0
    _emit_lines(lines, as_json, name)
    cursor = (answer or {}).get("cursor")
    while args.follow:
        answer = session.call("worker::logs", {"name": name, "lines": 10000, "cursor": cursor,
                                               "wait_ms": _FOLLOW_WAIT_MS}, _FOLLOW_WAIT_MS / 1000 + 10)
        _emit_lines([str(x) for x in (answer or {}).get("lines") or []], as_json, name)
        cursor = (answer or {}).get("cursor", cursor)
        if not (answer or {}).get("lines"):
            time.sleep(0.05)
    return 0
