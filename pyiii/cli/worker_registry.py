"""`iii worker publish | sync | verify | update` (spec/cli.md §4.9-4.11, §4.13).

Presentation only: the work is done by `pyiii.manager.registry`. `add_subcommands(sub)` adds
the four parsers to the `iii worker` subparsers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.output import CliError, UsageError
from pyiii.cli.worker_common import (
    add_common, check_name, load_config_text, opt, project_of, read_config, run_wrapped, transaction,
)
from pyiii.engine.firstparty import canonical_name
from pyiii.manager.lockfile import Lock, parse_lock, read_lock
from pyiii.manager.registry.cache import Cache, cache_dir
from pyiii.manager.registry.errors import ManagerError
from pyiii.manager.registry.lockops import sync, sync_frozen, verify
from pyiii.manager.registry.plan import plan_update
from pyiii.manager.registry.progress import Progress, human_size
from pyiii.manager.registry.semver import is_dist_tag
from pyiii.manager.registry.sources import Registries, registry_list


def add_subcommands(sub: Any) -> None:
    """Add publish, sync, verify and update to the `iii worker` subparsers."""
    p = sub.add_parser("publish", help="package a local worker into a registry folder",
                       description="Package a worker folder into a registry folder (created if missing).")
    p.add_argument("path", nargs="?", default=".", help="the worker folder (default .)")
    p.add_argument("--to", required=True, metavar="DIR", help="the registry folder")
    p.add_argument("--tag", help="point this dist-tag at the new version")
    p.add_argument("--artifact", action="append", default=[], metavar="PLATFORM=FILE",
                   help="publish a binary for a platform (repeatable)")
    p.add_argument("--image", metavar="REF@sha256:HEX", help="publish an OCI image by digest")
    p.add_argument("--dry-run", action="store_true", help="show what would be published; write nothing")
    add_common(p)
    p.set_defaults(run=run_wrapped(run_publish))

    p = sub.add_parser("sync", help="install workers exactly as iii.lock says",
                       description="Install declared workers from iii.lock; never resolves versions.")
    p.add_argument("--frozen", action="store_true", help="check only; change nothing anywhere (CI)")
    p.add_argument("--offline", action="store_true", default=argparse.SUPPRESS,
                   help="use the cache only; --frozen reports artifacts as not checked")
    add_common(p, runtime=True, mutating=True)
    p.set_defaults(run=run_wrapped(run_sync))

    p = sub.add_parser("verify", help="check that config.yaml and iii.lock agree (offline)")
    add_common(p)
    p.set_defaults(run=run_wrapped(run_verify))

    p = sub.add_parser("update", help="re-resolve locked workers to the newest allowed versions")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--latest", action="store_true", help="take the latest dist-tag, ignoring ranges")
    p.add_argument("--no-wait", action="store_true", help="do not wait for restarted workers")
    p.add_argument("--wait-timeout", type=float, default=60.0, metavar="S")
    add_common(p, runtime=True, mutating=True, resolving=True)
    p.set_defaults(run=run_wrapped(run_update))


def _progress() -> Progress:
    return Progress(sys.stderr, fancy=output.fancy(), quiet=output.Mode.quiet)


def _lock_of(data: bytes | None, project_dir: Path) -> Lock:
    if data is None:
        return Lock()
    return parse_lock(data.decode("utf-8-sig"), project_dir / "iii.lock")


def _print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        output.warning(w)


# --------------------------------------------------------------------------- publish

def run_publish(args: argparse.Namespace) -> int:
    from pyiii.manager.registry.publish import publish

    artifacts: dict[str, Path] = {}
    for item in args.artifact:
        platform, eq, file = item.partition("=")
        if not eq or not platform or not file:
            raise UsageError(f"--artifact expects PLATFORM=FILE, got '{item}'")
        if not Path(file).is_file():
            raise CliError(f"--artifact {item}: no file {file}")
        artifacts[platform] = Path(file)
    if args.tag is not None and not is_dist_tag(args.tag):
        raise UsageError(f"invalid dist-tag '{args.tag}': use lowercase letters, digits and '-', "
                         "starting with a letter, and not a version range")
    folder = Path(args.path)
    if not (folder / "iii.worker.yaml").is_file():
        raise CliError(f"no iii.worker.yaml in {args.path}", hint="create one with `iii worker init`")
    result = publish(folder, Path(args.to), tag=args.tag, artifacts=artifacts, image=args.image,
                     dry_run=args.dry_run)
    details = [f"type: {result.type}"]
    if result.sha256:
        details += [f"sha256: {result.sha256}", f"size: {human_size(result.size or 0)} ({result.size} bytes)"]
    details.append(f"tags: {', '.join(result.tags) or 'none'}")
    if opt(args, "json"):
        output.emit_json({"ok": True, "published": result.coordinate, "type": result.type, "sha256": result.sha256,
                          "size": result.size, "tags": result.tags, "dry_run": bool(args.dry_run)})
    else:
        sys.stdout.write(result.coordinate + "\n")
        sys.stdout.flush()
    for line in details:
        output.progress("  " + line)
    verb = "would publish" if args.dry_run else "published"
    output.ok(f"{verb} {result.coordinate} to {args.to}")
    return 0


# --------------------------------------------------------------------------- verify

def run_verify(args: argparse.Namespace) -> int:
    project = project_of(args)
    config = read_config(project)
    lock = read_lock(project.project_dir)
    report = verify(config, lock)
    _print_warnings(report.warnings)
    report.raise_drift()
    if opt(args, "json"):
        output.emit_json({"ok": True, "warnings": report.warnings})
    output.ok("config.yaml matches iii.lock")
    return 0


# --------------------------------------------------------------------------- sync

def run_sync(args: argparse.Namespace) -> int:
    project = project_of(args)
    progress = _progress()
    if args.frozen:
        # nothing may be written: no transaction (it creates .iii/), files read directly
        config = read_config(project)
        lock = read_lock(project.project_dir)
        report = sync_frozen(config, lock, project_dir=project.project_dir, progress=progress,
                             offline=bool(opt(args, "offline")))
        _print_warnings(report.warnings)
        for name in report.not_checked:
            output.note(f"{name}: not checked (offline)")
        if opt(args, "json"):
            output.emit_json({"ok": True, "verified": report.verified, "not_checked": report.not_checked})
        output.ok(f"iii.lock is complete and consistent with config.yaml ({report.verified} workers verified)")
        return 0
    with transaction(args, project) as txn:
        config = load_config_text(project, txn.config_bytes)
        if config is None:
            raise CliError(f"no config file at {project.config_path}", wcode="W131",
                           hint="run `iii` once to create it, or pass --config PATH")
        lock = _lock_of(txn.lock_bytes, project.project_dir)
        report = sync(config, lock, project_dir=project.project_dir, cache=Cache(cache_dir()),
                      progress=progress, stager=txn, offline=bool(opt(args, "offline")),
                      output=(lambda line: None) if output.Mode.quiet else None)
        txn.commit()
    _print_warnings(report.warnings)
    if report.installed:
        _restart_changed(project, opt(args, "engine"), report.installed)
    if opt(args, "json"):
        output.emit_json({"ok": True, "installed": report.installed, "current": report.current,
                          "skipped": report.skipped})
    output.ok(report.summary())
    return 0


# --------------------------------------------------------------------------- update

def _targets(names: list[str], config: Any, lock: Lock) -> set[str]:
    declared = {e.name: e for e in config.workers}
    if names:
        out = set()
        for raw in names:
            name = check_name(raw)
            entry = declared.get(name)
            if entry is None:
                raise CliError(f"no worker named '{raw}' in config.yaml", hint="run `iii worker list`", wcode="W110")
            if entry.kind == "local":
                raise CliError(f"{name} is a local worker; it has no pin (its dependencies are updated "
                               "by `iii worker update`)", wcode="W105", code=1)
            out.add(name)
        return out
    from pyiii.manager.manifest import load_manifest

    out = {n for n, e in declared.items() if e.kind != "local"} | set(lock.workers)
    for entry in config.workers:
        if entry.kind == "local":
            out |= {canonical_name(d) for d in load_manifest(config.worker_dir(entry)).dependencies}
    return out


def run_update(args: argparse.Namespace) -> int:
    project = project_of(args)
    progress = _progress()
    with transaction(args, project) as txn:
        config = load_config_text(project, txn.config_bytes)
        if config is None:
            raise CliError(f"no config file at {project.config_path}", wcode="W131")
        lock = _lock_of(txn.lock_bytes, project.project_dir)
        targets = _targets(list(args.names), config, lock)
        registries = Registries(registry_list(opt(args, "registry"), config.registries, cwd=Path.cwd(),
                                              project_dir=project.project_dir),
                                Cache(cache_dir(), deferred=True), offline=bool(opt(args, "offline")), deferred=True)

        def announce(resolved: Any) -> None:
            _print_warnings(resolved.warnings)
            for line in resolved.changes:
                output.progress(line)

        try:
            plan = plan_update(targets, config=config, lock=lock, registries=registries,
                               project_dir=project.project_dir, cache=registries.cache, progress=progress,
                               stager=txn, latest=bool(args.latest), on_resolved=announce,
                               output=(lambda line: None) if output.Mode.quiet else None)
            if plan.lock_changed or plan.config_changes:
                plan.commit(txn)
        except BaseException:
            registries.cache.discard()  # a failed update leaves the cache as it found it
            raise
        registries.save_documents()
        registries.cache.keep()
        if not plan.lock_changed and not plan.config_changes:
            if opt(args, "json"):
                output.emit_json({"ok": True, "updated": [], "unchanged": sorted(plan.lock.workers)})
            output.ok("everything is up to date")
            return 0
    output.ok(f"updated iii.lock ({len(plan.changes) or len(plan.updated)} changed)")
    ready: dict[str, str] = {}
    declared = {e.name for e in config.workers}
    changed = [n for n in plan.updated if n in declared]
    if changed and not args.no_wait:
        ready = _wait(project, opt(args, "engine"), changed, args.wait_timeout)
    if opt(args, "json"):
        output.emit_json({"ok": True, "updated": plan.updated, "added": plan.added, "changes": plan.changes,
                          "unchanged": plan.unchanged, "ready": ready})
    return 0


def _wait(project: Any, engine: str | None, names: list[str], timeout: float) -> dict[str, str]:
    """§3.5 after a committed update: the engine restarts changed workers through hot reload."""
    from pyiii.cli.worker_engine import connect, wait_ready

    session = connect(project, engine, required=False)
    if session is None:
        for name in names:
            output.note(f"the engine is not running; `iii` will start {name}")
        return {name: "no-engine" for name in names}
    try:
        from pyiii.manager.lockfile import read_lock

        pins = read_lock(project.project_dir).workers
        expect = {n: pins[n].version for n in names if n in pins}
        return wait_ready(session, names, timeout, expect)
    finally:
        session.close()


def _restart_changed(project: Any, engine: str | None, names: list[str]) -> None:
    """sync activated new install folders: a running engine restarts those workers."""
    from pyiii.cli.worker_engine import connect

    session = connect(project, engine, required=False)
    if session is None:
        return
    try:
        for name in names:
            try:
                session.call("worker::restart", {"name": name}, 30.0)
            except CliError as exc:
                output.warning(f"could not restart {name}: {exc.message}")
    finally:
        session.close()


__all__ = ["add_subcommands", "ManagerError"]
