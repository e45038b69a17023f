"""`iii worker remove` (alias `rm`) and `iii worker clear` (spec/cli.md §4.2, §4.3).

`remove` is a transaction on config.yaml and iii.lock; the running engine stops the worker
through hot reload. `clear` deletes installed and downloaded artifacts and never edits either
file. Both ask before touching a running worker (§3.4).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from pyiii.cli import output
from pyiii.cli.locate import Project
from pyiii.cli.output import CliError
from pyiii.cli.worker_common import (
    add_common, check_name, confirm, load_config_text, opt, project_of, transaction, validate_lock,
)

# States in which a worker has (or is about to have) a process.
ACTIVE_STATES = ("running", "starting", "backoff", "installing", "stopping")
_REMOVE_WAIT_S = 15.0


def add_parser(sub: Any, run_wrapped: Any) -> None:
    p = sub.add_parser("remove", aliases=["rm"], help="remove workers from config.yaml and iii.lock",
                       description="Remove declared workers; the engine stops them.")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask, even if a worker is running")
    p.add_argument("--force", action="store_true", help="remove even if another worker depends on it")
    add_common(p, runtime=True, mutating=True)
    p.set_defaults(run=run_wrapped(run_remove))

    c = sub.add_parser("clear", help="delete installed and downloaded artifacts",
                       description="Delete installed artifacts (never edits config.yaml or iii.lock).")
    c.add_argument("names", nargs="*", metavar="NAME")
    c.add_argument("-y", "--yes", action="store_true", help="do not ask")
    c.add_argument("--data", action="store_true", help="also delete data/managed/<name>/")
    add_common(c, runtime=True, mutating=True)
    c.set_defaults(run=run_wrapped(run_clear))


def running_states(project: Project, args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """(engine session or None, name -> state) from `worker::list`; empty without an engine."""
    from pyiii.cli.worker_engine import connect

    session = connect(project, opt(args, "engine"), required=False)
    if session is None or session.listing is None:
        return session, {}
    states = {str(w.get("name")): str(w.get("state")) for w in session.listing.get("workers") or []
              if isinstance(w, dict)}
    return session, states


# --------------------------------------------------------------------------- remove

def _dependencies(cfg: Any, lock: Any) -> dict[str, dict[str, str]]:
    """name -> {dependency: range} for every declared worker (lock entry, else local manifest)."""
    from pyiii.engine.firstparty import canonical_name
    from pyiii.manager.manifest import ManifestError, load_manifest

    deps: dict[str, dict[str, str]] = {}
    for entry in cfg.workers:
        locked = lock.workers.get(entry.name) if lock is not None else None
        if entry.kind == "local":
            try:
                manifest = load_manifest(cfg.worker_dir(entry))
                deps[entry.name] = {canonical_name(k): v for k, v in manifest.dependencies.items()}
            except ManifestError:
                deps[entry.name] = {}
        elif locked is not None:
            deps[entry.name] = dict(locked.dependencies)
        else:
            deps[entry.name] = {}
    return deps


def _reachable(roots: list[str], lock: Any, deps: dict[str, dict[str, str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(deps.get(name, {}))
        if name in lock.workers:
            todo.extend(lock.workers[name].dependencies)
    return seen


def run_remove(args: argparse.Namespace) -> int:
    from pyiii.engine.firstparty import canonical_name
    from pyiii.manager.config_edit import remove_entry
    from pyiii.manager.lockfile import Lock, dump_lock

    names = list(dict.fromkeys(canonical_name(check_name(n)) for n in args.names))
    project = project_of(args)
    session, states = running_states(project, args)
    try:
        with transaction(args, project) as txn:
            cfg = load_config_text(project, txn.config_bytes)
            lock = validate_lock(project, txn.lock_bytes) or Lock()
            declared = {e.name for e in cfg.workers} if cfg is not None else set()
            for name in names:
                if name not in declared:
                    raise CliError(f"no worker named '{name}' in config.yaml", wcode="W110",
                                   hint="run `iii worker list`")
            running = [n for n in names if states.get(n) in ACTIVE_STATES]
            if running:
                confirm(args, "remove", f"{', '.join(running)} {'is' if len(running) == 1 else 'are'} running",
                        f"Remove running worker{'s' if len(running) > 1 else ''} "
                        f"{', '.join(repr(n) for n in running)}?")
            deps = _dependencies(cfg, lock)
            if not opt(args, "force"):
                for other, needs in deps.items():
                    if other in names:
                        continue
                    for name in names:
                        if name in needs:
                            raise CliError(f"{other} depends on {name} ({needs[name]})", wcode="W112",
                                           hint=f"remove {other} first, or pass --force")
            text = txn.config_bytes.decode("utf-8-sig")
            for name in names:
                text = remove_entry(text, name)
            remaining = [e.name for e in cfg.workers if e.name not in names]
            reachable = _reachable(remaining, lock, deps)
            new_lock = Lock({n: e for n, e in lock.workers.items() if n in reachable})
            lock_bytes = None
            if txn.lock_bytes is not None or new_lock.workers:
                lock_bytes = dump_lock(new_lock).encode() if new_lock.workers != lock.workers else None
            bom = b"\xef\xbb\xbf" if txn.config_bytes.startswith(b"\xef\xbb\xbf") else b""
            txn.commit(config=bom + text.encode("utf-8"), lock=lock_bytes)
        for name in names:
            for dep in deps.get(name, {}):
                dep = canonical_name(dep)
                needed = any(dep in needs for other, needs in deps.items() if other not in names)
                if dep in remaining and not needed:
                    output.note(f"no remaining worker depends on {dep}; remove it with "
                                f"`iii worker remove -y {dep}`")
        if session is not None and session.listing is not None and not session.listing.get("config_path"):
            output.note(f"the engine at {session.url} runs the default configuration and does not read "
                        f"config.yaml; restart it with `iii` to apply the change")
            session.close()
            session = None
        stopped = _wait_removed(session, names) if session is not None else set()
        for name in names:
            output.ok(f"removed {name} (stopped)" if name in stopped else f"removed {name}")
        if opt(args, "json"):
            output.emit_json({"ok": True, "removed": names, "stopped": sorted(stopped)})
        return 0
    finally:
        if session is not None:
            session.close()


def _wait_removed(session: Any, names: list[str]) -> set[str]:
    """Wait up to 15 s for the engine's reload to stop the removed workers."""
    deadline = time.monotonic() + _REMOVE_WAIT_S
    pending = set(names)
    while pending and time.monotonic() < deadline:
        listing = session.call("worker::list", {}, 10.0)
        present = {str(w.get("name")): str(w.get("state")) for w in (listing or {}).get("workers") or []}
        for name in list(pending):
            if name not in present or present[name] not in ACTIVE_STATES:
                pending.discard(name)
        if pending:
            time.sleep(0.2)
    return set(names) - pending


# --------------------------------------------------------------------------- clear

def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def _image_paths(lock: Any, names: set[str]) -> set[Path]:
    """The cache paths of the locked images of ``names`` (manifests, config, layers, root)."""
    from pyiii.manager.oci.store import cache_entries
    from pyiii.manager.registry.cache import Cache, cache_dir

    cache = Cache(cache_dir())
    return {p for n, e in (lock.workers.items() if lock is not None else ()) if n in names and e.digest
            for p in cache_entries(cache, e.digest)}


def _artifacts(project: Project, name: str, lock: Any, data: bool, shared: set[Path] = frozenset()) -> list[Path]:
    """Everything `clear` deletes for one worker: its install folder, the cache entries its lock
    entry names (an image's blobs only where no image that stays uses them: ``shared``), and
    with --data its work folder."""
    from pyiii.manager.registry.cache import Cache, cache_dir

    paths = [project.state_dir / "install" / name]
    entry = lock.workers.get(name) if lock is not None else None
    if entry is not None:
        cache = Cache(cache_dir())
        hashes = [a.sha256 for a in entry.artifacts.values()]
        if entry.package is not None:
            hashes.append(entry.package.sha256)
        paths += [cache.blob_path(h) for h in hashes]
        if entry.digest:
            paths += [p for p in sorted(_image_paths(lock, {name})) if p not in shared]
    if data:
        paths.append(project.project_dir / "data" / "managed" / name)
    return [p for p in paths if p.exists()]


def run_clear(args: argparse.Namespace) -> int:
    from pyiii.engine.firstparty import canonical_name

    names = list(dict.fromkeys(canonical_name(check_name(n)) for n in args.names))
    project = project_of(args)
    what = ", ".join(repr(n) for n in names) if names else "every worker not running"
    confirm(args, "clear", "it deletes installed artifacts", f"Delete installed artifacts of {what}?")
    session, states = running_states(project, args)
    if session is not None:
        session.close()
    freed_total, cleared = 0, 0
    with transaction(args, project) as txn:
        cfg = load_config_text(project, txn.config_bytes)
        lock = validate_lock(project, txn.lock_bytes)
        declared = {e.name for e in cfg.workers} if cfg is not None else set()
        targets = names
        if not names:
            install = project.state_dir / "install"
            targets = sorted(p.name for p in install.iterdir() if p.is_dir()) if install.is_dir() else []
        for name in names:
            if states.get(name) in ACTIVE_STATES:
                raise CliError(f"{name} is running", wcode="W112",
                               hint=f"stop it first with `iii worker stop -y {name}`")
            if name not in declared and not _artifacts(project, name, lock, opt(args, "data")):
                raise CliError(f"no worker named '{name}' and nothing installed for it", wcode="W110")
        clearing = {n for n in targets if states.get(n) not in ACTIVE_STATES}
        shared = _image_paths(lock, set(lock.workers) - clearing) if lock is not None else set()
        for name in targets:
            if states.get(name) in ACTIVE_STATES:
                output.warning(f"skipped {name} (running)")
                continue
            paths = _artifacts(project, name, lock, opt(args, "data"), shared)
            freed = sum(_size(p) for p in paths)
            for path in paths:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            if names:
                output.ok(f"cleared {name} ({human_size(freed)} freed)" if paths else f"nothing to clear for {name}")
            freed_total += freed
            cleared += 1 if paths else 0
    if not names:
        output.ok(f"cleared {cleared} worker{'s' if cleared != 1 else ''} ({human_size(freed_total)} freed)")
    if opt(args, "json"):
        output.emit_json({"ok": True, "cleared": cleared, "freed_bytes": freed_total})
    return 0
