"""`iii worker add` / `reinstall` for first-party and local workers (spec/cli.md §4.1).

Every source of one invocation is one transaction (§3.2): the new config.yaml and iii.lock are
computed in memory from the files read under the project lock, local workers' setup/install
scripts run before anything is committed, and any failure leaves both files as they were.
Registry sources are resolved by the registry layer, OCI references by `pyiii.manager.oci`.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.locate import Project
from pyiii.cli.output import CliError, UsageError
from pyiii.cli.worker_common import (
    add_common, check_name, interactive, load_config_text, note_alias, opt, project_of, transaction,
    validate_lock,
)
from pyiii.cli.worker_add_image import add_image_worker
from pyiii.cli.worker_add_local import add_local, conflict, prepare
from pyiii.engine.firstparty import canonical_name, is_first_party

LOCAL_PREFIXES = ("./", "../", "/", "~/")


def add_parser(sub: Any, run_wrapped: Any) -> None:
    for name, aliases, force in (("add", [], False), ("reinstall", [], True)):
        p = sub.add_parser(name, aliases=aliases, help="add workers to config.yaml and iii.lock" if not force
                           else "re-fetch and re-install declared workers (add --force)",
                           description="Add workers: first-party names (iii-state), local folders "
                           "(./my-worker), registry names (hello@^1.2) or OCI images.")
        p.add_argument("sources", nargs="+", metavar="SOURCE")
        if not force:
            p.add_argument("-f", "--force", action="store_true", help="re-fetch and re-install")
        p.add_argument("--exact", action="store_true", help="save the exact resolved version")
        p.add_argument("--name", help="the name to declare (local and OCI sources)")
        p.add_argument("--isolation", choices=("process", "namespace"), help="how the worker is sandboxed")
        p.add_argument("--no-wait", action="store_true", help="do not wait for the workers to connect")
        p.add_argument("--wait-timeout", type=float, default=60.0, metavar="S")
        p.add_argument("-y", "--yes", action="store_true", help="do not ask")
        add_common(p, runtime=True, mutating=True, resolving=True)
        p.set_defaults(run=run_wrapped(run), force_default=force)


# --------------------------------------------------------------------------- sources

@dataclass
class Request:
    """One command-line source, classified (§3.3)."""

    text: str
    kind: str  # builtin | local | registry | oci
    name: str | None = None
    spec: str | None = None
    folder: Path | None = None


def classify(text: str) -> Request:
    """First match wins: local folder, OCI reference, registry `name[@spec]` (§3.3)."""
    if text.startswith(LOCAL_PREFIXES) or text in (".", ".."):
        return Request(text, "local", folder=Path(os.path.abspath(os.path.expanduser(text))))
    if "/" in text or ":" in text:
        return Request(text, "oci")
    name, at, spec = text.partition("@")
    if at and not spec:
        raise UsageError(f"invalid worker reference '{text}': nothing after '@'",
                         hint="write name@version, name@range or name@tag", wcode="W100")
    check_name(name)
    if is_first_party(name):
        return Request(text, "builtin", note_alias(name), spec or None)
    return Request(text, "registry", name, spec or None)


# --------------------------------------------------------------------------- plan

@dataclass
class Plan:
    """The new files and what to tell the user, computed before anything is written."""

    project: Project
    text: str
    lock: Any  # pyiii.manager.lockfile.Lock
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    created_files: list[Path] = field(default_factory=list)
    needs_resolution: bool = False  # a local worker depends on a registry worker
    after_commit: list[Any] = field(default_factory=list)  # run once both files are written
    on_failure: list[Any] = field(default_factory=list)  # run when nothing gets written

    def declared(self) -> dict[str, Any]:
        from pyiii.engine.config import parse_config

        cfg = parse_config(self.text, self.project.config_path)
        return {e.name: e for e in cfg.workers}


def _add_builtin(plan: Plan, name: str, spec: str | None, requirer: str | None = None) -> None:
    """Declare (if needed) and lock a first-party worker at the shipped version."""
    from pyiii.manager.config_edit import add_entry, set_fields
    from pyiii.manager.lockfile import LockEntry
    from pyiii.manager.registry.firstparty import builtin_satisfies, shipped_version

    shipped = shipped_version()
    if spec is not None and not builtin_satisfies(spec):
        raise CliError(f"'{name}' is a first-party worker; this pyiii ships {shipped}, which does not "
                       f"satisfy '{spec}'", wcode="W111")
    declared = plan.declared().get(name)
    locked = plan.lock.workers.get(name)
    if declared is not None and declared.kind != "builtin":
        raise conflict(name, declared)
    lock_ok = locked is not None and locked.type == "builtin" and locked.version == shipped
    if declared is not None and lock_ok:  # the locked (shipped) version satisfies the request
        plan.unchanged.append(name)
        if requirer is None:
            plan.messages.append(f"{name} {shipped} is already installed")
        return
    if declared is None:
        fields: dict[str, Any] = {"name": name}
        if spec is not None and requirer is None:
            fields["version"] = spec
        if name == "iii-worker-manager":
            from pyiii.engine.config import parse_config

            listener = parse_config(plan.text, plan.project.config_path).listeners()[0]
            fields["config"] = {"host": listener.host, "port": listener.port}
        plan.text = add_entry(plan.text, fields, comment=f"dependency of {requirer}" if requirer else None)
        plan.added.append(name)
    elif spec is not None and requirer is None and declared.version != spec:
        plan.text = set_fields(plan.text, name, {"version": spec})
        plan.updated.append(name)
    else:
        plan.updated.append(name)
    plan.lock.workers[name] = LockEntry(shipped, "builtin", {})
    if requirer is None:
        plan.messages.append(f"added {name} {shipped} to config.yaml and iii.lock"
                             if name in plan.added else f"locked {name} {shipped} in iii.lock")


def add_dependency(plan: Plan, dep: str, spec: str, requirer: str) -> None:
    if is_first_party(dep):
        from pyiii.manager.registry.firstparty import builtin_satisfies, shipped_version

        if not builtin_satisfies(spec):
            raise CliError(f"{requirer} requires {dep} {spec}, but this pyiii ships {shipped_version()}",
                           wcode="W112")
        _add_builtin(plan, dep, None, requirer)
        return
    if dep not in plan.declared():
        plan.needs_resolution = True  # resolved from the registries with everything declared


def _resolve(plan: Plan, registry: list[Request], args: argparse.Namespace, txn: Any) -> None:
    """Registry requests (and local workers' registry dependencies): resolve with everything
    declared, stage the installs, and fold the result into the plan (§4.1, §7.4)."""
    import sys

    from pyiii.engine.config import parse_config
    from pyiii.manager.registry.cache import Cache, cache_dir
    from pyiii.manager.registry.plan import plan_registry_add
    from pyiii.manager.registry.progress import Progress
    from pyiii.manager.registry.resolver import Request as Wanted
    from pyiii.manager.registry.sources import Registries, registry_list

    project = plan.project
    config = parse_config(plan.text, project.config_path)
    registries = Registries(registry_list(opt(args, "registry"), config.registries, cwd=Path.cwd(),
                                          project_dir=project.project_dir),
                            Cache(cache_dir(), deferred=True), offline=bool(opt(args, "offline")), deferred=True)
    # documents and downloads reach the cache only once the add commits: a failed add leaves
    # the cache as it found it
    plan.after_commit += [registries.save_documents, registries.cache.keep]
    plan.on_failure.append(registries.cache.discard)
    if registry:
        output.progress(f"resolving {', '.join(str(r.name) for r in registry)}...")
    result = plan_registry_add(
        [Wanted(str(r.name), r.spec) for r in registry], config=config, lock=plan.lock,
        registries=registries, project_dir=project.project_dir, cache=registries.cache,
        progress=Progress(sys.stderr, fancy=output.fancy(), quiet=output.Mode.quiet), stager=txn,
        exact=bool(opt(args, "exact")), force=bool(opt(args, "force") or opt(args, "force_default")),
        output=None if not output.Mode.quiet else (lambda line: None))
    for warning in result.warnings:
        output.warning(warning)
    for line in result.tree:
        output.progress(line)
    plan.text = result.apply_to_config(plan.text)
    plan.lock = result.lock
    for name in result.added:
        plan.added.append(name)
        plan.messages.append(f"added {name} {result.lock.workers[name].version} to config.yaml and iii.lock")
    for change in result.config_changes:  # dependencies declared on the way
        if change.new and change.name not in plan.added:
            plan.added.append(change.name)
    for name in result.updated:
        plan.updated.append(name)
        plan.messages.append(f"updated {name} to {result.lock.workers[name].version} in config.yaml and iii.lock")
    for name in result.unchanged:
        plan.unchanged.append(name)
        entry = result.lock.workers.get(name)
        plan.messages.append(f"{name} {entry.version if entry else ''} is already installed".replace("  ", " "))


# --------------------------------------------------------------------------- run

def run(args: argparse.Namespace) -> int:
    requests = [classify(s) for s in args.sources]
    if opt(args, "name"):
        if len(requests) != 1:
            raise UsageError("--name needs exactly one source")
        if requests[0].kind in ("builtin", "registry"):
            raise UsageError("--name is only for local folders and OCI images", wcode="W100")
    project = project_of(args)
    force = bool(opt(args, "force") or opt(args, "force_default"))
    held: list[str] = []  # running workers stopped for a reinstall, started again after commit
    session = None
    state_dir = project.project_dir / ".iii"
    fresh = not project.config_path.exists() and not state_dir.exists()  # a failed add leaves no file (§4.1)
    try:
        with transaction(args, project) as txn:
            plan = _plan(args, project, txn, requests)
            try:
                if force:
                    session, held = _stop_for_reinstall(args, project, plan)
                config_bytes = plan.text.encode("utf-8")
                if (txn.config_bytes or b"").startswith(b"\xef\xbb\xbf"):
                    config_bytes = b"\xef\xbb\xbf" + config_bytes  # keep the file's byte-order mark
                from pyiii.manager.lockfile import dump_lock

                lock_bytes = dump_lock(plan.lock).encode("utf-8")
                if txn.lock_bytes is None and not plan.lock.workers:
                    lock_bytes = None  # only local workers: no iii.lock to create
                txn.commit(config=config_bytes, lock=lock_bytes)
            except BaseException:
                for path in plan.created_files:
                    shutil.rmtree(path, ignore_errors=True)
                for hook in plan.on_failure:
                    hook()
                if session is not None:  # put back what was stopped: nothing changed
                    for name in held:
                        if not _is_local(plan, name):
                            session.call("worker::start", {"name": name}, 120.0)
                raise
        for hook in plan.after_commit:
            hook()
        for message in plan.messages:
            output.ok(message)
        if session is not None and held:
            for name in held:
                session.call("worker::restart" if _is_local(plan, name) else "worker::start", {"name": name}, 120.0)
    except BaseException:
        if fresh and not project.config_path.exists():
            shutil.rmtree(state_dir, ignore_errors=True)
        raise
    finally:
        if session is not None:
            session.close()
    plan_result = plan
    ready = _after_commit(args, project, plan_result, held)
    if opt(args, "json"):
        output.emit_json({"ok": True, "added": plan_result.added, "updated": plan_result.updated,
                          "unchanged": plan_result.unchanged, "ready": ready})
    return 0


def _plan(args: argparse.Namespace, project: Project, txn: Any, requests: list[Request]) -> Plan:
    from pyiii.engine.config import STARTER_CONFIG
    from pyiii.manager.lockfile import Lock

    load_config_text(project, txn.config_bytes)  # validated before anything else happens
    lock = validate_lock(project, txn.lock_bytes) or Lock()
    if txn.config_bytes is None:
        _confirm_create(args, project)
        text = STARTER_CONFIG
    else:
        text = txn.config_bytes.decode("utf-8-sig")
    plan = Plan(project, text, lock.copy() if hasattr(lock, "copy") else lock)
    if txn.config_bytes is None:
        plan.messages.append(f"created {project.config_path.name}")
    try:
        for req in requests:
            if req.kind == "builtin":
                assert req.name is not None
                _add_builtin(plan, req.name, req.spec)
            elif req.kind == "local":
                name, manifest = add_local(plan, req, args)
                for dep, spec in manifest.dependencies.items():
                    add_dependency(plan, canonical_name(dep), spec, name)
                prepare(plan, name, manifest, args)
                if name in plan.added:
                    version = f" {manifest.version}" if manifest.version else ""
                    plan.messages.append(f"added {name}{version} to config.yaml")
            elif req.kind == "oci":
                add_image_worker(plan, req, args)
        registry = [req for req in requests if req.kind == "registry"]
        for req in registry:  # a registry name already declared as a local or image worker
            declared = plan.declared().get(str(req.name))
            if declared is not None and declared.kind != "registry":
                raise conflict(str(req.name), declared)
        if registry or plan.needs_resolution:
            _resolve(plan, registry, args, txn)
    except BaseException:
        for path in plan.created_files:
            shutil.rmtree(path, ignore_errors=True)
        for hook in plan.on_failure:
            hook()
        raise
    return plan


def _is_local(plan: Plan, name: str) -> bool:
    entry = plan.declared().get(name)
    return entry is not None and entry.kind == "local"


def _stop_for_reinstall(args: argparse.Namespace, project: Project, plan: Plan) -> tuple[Any, list[str]]:
    """`--force`: a running worker that was re-installed is stopped before its install folder
    is swapped (local workers, which have no folder to swap, are restarted after commit)."""
    from pyiii.cli.worker_engine import connect

    names = [n for n in plan.unchanged + plan.updated if n in plan.declared()
             and plan.declared()[n].kind != "builtin"]
    if not names:
        return None, []
    session = connect(project, opt(args, "engine"), required=False)
    if session is None:
        return None, []
    states = {str(w.get("name")): w.get("state") for w in (session.listing or {}).get("workers") or []}
    held = [n for n in names if states.get(n) in ("running", "starting", "backoff")]
    for name in held:
        if not _is_local(plan, name):
            session.call("worker::stop", {"name": name}, 120.0)
    return session, held


def _confirm_create(args: argparse.Namespace, project: Project) -> None:
    """A missing config file is created, asking first on a terminal (§1.1)."""
    if opt(args, "yes") or opt(args, "json") or not interactive():
        return
    import sys

    sys.stderr.write(f"No {project.config_path.name} in {project.project_dir}. Create it? [Y/n] ")
    sys.stderr.flush()
    raw = sys.stdin.readline()
    if not raw or raw.strip().lower() not in ("", "y", "yes"):
        raise CliError("Aborted.", plain=True, wcode="W170")


def _after_commit(args: argparse.Namespace, project: Project, plan: Plan, restarted: list[str]) -> dict[str, str]:
    """Wait for the added (and reinstalled) workers when an engine serving this project
    answers (§3.5)."""
    from pyiii.cli.worker_engine import connect, wait_ready

    names = [n for n in dict.fromkeys(plan.added + plan.updated + restarted) if n != "iii-worker-manager"]
    if not names:
        return {}
    if opt(args, "no_wait"):
        return {}
    session = connect(project, opt(args, "engine"), required=False)
    if session is None:
        output.note(f"the engine is not running; `iii` will start {', '.join(names)}")
        return {n: "no-engine" for n in names}
    try:
        if session.listing is not None and not session.listing.get("config_path"):
            output.note(f"the engine at {session.url} runs the default configuration and does not read "
                        f"config.yaml; restart it with `iii` to run {', '.join(names)}")
            return {n: "no-engine" for n in names}
        enabled = plan.declared()
        waiting = [n for n in names if n in enabled and enabled[n].enabled]
        expect = {n: plan.lock.workers[n].version for n in plan.updated if n in plan.lock.workers}
        return wait_ready(session, waiting, float(opt(args, "wait_timeout", 60.0)), expect)
    finally:
        session.close()
