"""Planning `iii worker add` (registry and first-party requests) and `iii worker update`.

A plan is everything a command will change, computed before anything the engine looks at
changes (spec/cli.md §3.2 step 3): the complete new iii.lock, the config.yaml edits, and the
install folders already built in staging. The caller commits it through its transaction,
or drops it (the transaction deletes the staging folders).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from pyiii.engine.firstparty import canonical_name

from ..lockfile import Lock, LockEntry
from ..manifest import load_manifest
from .cache import Cache
from .download import download_limit, fetch_artifact
from .errors import ManagerError
from .install import build_install, install_path, install_root, is_current
from .model import Artifact, host_platform
from .progress import Progress
from .resolver import Choice, Declared, Request, Resolution, Resolver
from .semver import is_range
from .sources import Registries
from .urls import artifact_location, lock_url, locked_location


class Stager(Protocol):
    """What a plan needs from the transaction (pyiii.manager.transaction.Transaction)."""

    def staging_dir(self, name: str) -> Path: ...
    def stage_install(self, name: str, staging: Path, identity: str) -> None: ...


@dataclass(frozen=True)
class ConfigChange:
    """One config.yaml edit: a new entry (`new`) or a rewritten `version:` of an existing one.
    `version` None means no `version:` key; `comment` is the end-of-line `dependency of <x>`."""

    name: str
    version: str | None
    new: bool
    comment: str | None = None


@dataclass
class Plan:
    lock: Lock
    old_lock: Lock
    config_changes: list[ConfigChange] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)     # names staged for install
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)       # "hello 1.2.0 → 1.4.0"
    tree: list[str] = field(default_factory=list)          # the `resolving` lines
    warnings: list[str] = field(default_factory=list)
    resolution: Resolution | None = None

    @property
    def lock_changed(self) -> bool:
        return self.lock.workers != self.old_lock.workers

    def commit(self, txn: Any) -> list[str]:
        """Commit through a `Transaction`: staged installs, iii.lock, then config.yaml; a file
        whose content does not change is not rewritten. Returns the names of files written."""
        from ..lockfile import dump_lock

        config = None
        if self.config_changes:
            config = self.apply_to_config((txn.config_bytes or b"").decode("utf-8")).encode("utf-8")
        write_lock = self.lock_changed or (txn.lock_bytes is None and bool(self.lock.workers))
        lock = dump_lock(self.lock).encode() if write_lock else None
        return txn.commit(config=config, lock=lock)

    def apply_to_config(self, text: str) -> str:
        """config.yaml's text with this plan's edits, made round-trip (comments, layout kept)."""
        from ..config_edit import add_entry, set_fields

        for change in self.config_changes:
            if change.new:
                fields: dict[str, Any] = {"name": change.name}
                if change.version is not None:
                    fields["version"] = change.version
                text = add_entry(text, fields, change.comment)
            else:
                text = set_fields(text, change.name, {"version": change.version})
        return text


def declared_workers(config: Any, lock: Lock) -> list[Declared]:
    """config.yaml's entries as the resolver sees them (local manifests are read for their
    version and dependencies; OCI workers carry their locked version, else their tag)."""
    out: list[Declared] = []
    for entry in config.workers if config is not None else []:
        if entry.kind in ("builtin", "registry"):
            out.append(Declared(entry.name, entry.kind, entry.version))
        elif entry.kind == "oci":
            locked = lock.workers.get(entry.name)
            tag = entry.image.rsplit("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2] or "latest"
            out.append(Declared(entry.name, "oci", version=locked.version if locked else tag))
        else:
            manifest = load_manifest(config.worker_dir(entry))
            out.append(Declared(entry.name, "local", version=manifest.version,
                                dependencies=dict(manifest.dependencies)))
    return out


def _entry_for(choice: Choice, project_dir: Path) -> LockEntry:
    """The lock entry of a choice made from a registry document."""
    info, registry = choice.info, choice.registry
    assert info is not None and registry is not None
    doc_location = registry.document(f"meta/{choice.name}.json")

    def pin(art: Artifact) -> Artifact:
        where = artifact_location(registry, doc_location, art.url)
        return Artifact(lock_url(where, project_dir), art.sha256, art.size, art.format,
                        art.entry if art.format == "tar.gz" else None)

    deps = dict(sorted(choice.dependencies.items()))
    if info.type == "package":
        assert info.package is not None
        return LockEntry(choice.version, "package", deps, package=pin(info.package))
    if info.type == "binary":
        return LockEntry(choice.version, "binary", deps, artifacts={p: pin(a) for p, a in sorted(info.artifacts.items())})
    assert info.image is not None
    return LockEntry(choice.version, "image", deps, image=info.image, digest=info.image.rsplit("@", 1)[1])


def build_lock(resolution: Resolution, old: Lock, declared: list[Declared], project_dir: Path) -> Lock:
    """The new lock: every chosen registry worker, first-party workers that are requested,
    already locked or depended upon, and the existing pins of declared OCI workers."""
    needed = {dep for c in resolution.choices.values() for dep in c.dependencies}
    needed |= {dep for d in declared if d.kind == "local" for dep in map(canonical_name, d.dependencies)}
    needed |= set(resolution.requested)
    lock = Lock()
    for name, choice in sorted(resolution.choices.items()):
        if choice.kind == "builtin":
            if name in needed or name in old.workers:
                lock.workers[name] = LockEntry(choice.version, "builtin", dict(sorted(choice.dependencies.items())))
        elif choice.kind == "registry":
            lock.workers[name] = choice.locked or _entry_for(choice, project_dir)
    for d in declared:
        if d.kind == "oci" and d.name in old.workers:
            lock.workers[d.name] = old.workers[d.name]
    return lock


def _source_label(choice: Choice, entry: LockEntry | None) -> str:
    if choice.kind == "builtin":
        return "first-party"
    kind = entry.type if entry else "package"
    where = "iii.lock" if choice.locked else (choice.registry.display if choice.registry else "?")
    return f"{kind}, {where}"


def _tree(resolution: Resolution, lock: Lock) -> list[str]:
    lines: list[str] = []
    for name in resolution.requested:
        choice = resolution.choices[name]
        lines.append(f"  {name} {choice.version} ({_source_label(choice, lock.workers.get(name))})")
        for dep, spec in sorted(choice.dependencies.items()):
            dep_choice = resolution.choices.get(dep)
            if dep_choice is not None:
                lines.append(f"  └─ {dep} {dep_choice.version} "
                             f"({_source_label(dep_choice, lock.workers.get(dep))}) for {spec}")
    return lines


def _describe_change(name: str, old: LockEntry, new: LockEntry) -> str:
    if old.version != new.version:
        return f"{name} {old.version} → {new.version}"
    if old.digest != new.digest:
        return f"{name} {(old.digest or '')[:11]}… → {(new.digest or '')[:11]}…"
    return f"{name} {old.version} (new artifacts)"


def stage_installs(plan: Plan, names: set[str], *, project_dir: Path, cache: Cache, progress: Progress,
                   stager: Stager, platform: str, force: bool = False, offline: bool = False,
                   output: Callable[[str], None] | None = None) -> None:
    """Download, verify and build in staging the install of each named lock entry that is
    new, changed, missing, or (with `force`) any of them. On any failure the
    `.iii/install/<name>/` folders this call created are removed again: nothing is activated
    before commit, so they hold only staging."""
    install_dir = Path(project_dir) / ".iii" / "install"
    new_dir = not install_dir.exists()
    created = [root for root in (install_root(project_dir, n) for n in sorted(names)) if not root.exists()]
    try:
        for name in sorted(names):
            _stage_one(plan, name, project_dir=project_dir, cache=cache, progress=progress, stager=stager,
                       platform=platform, force=force, offline=offline, output=output)
    except BaseException:
        for root in created:
            shutil.rmtree(root, ignore_errors=True)
        if new_dir:
            with contextlib.suppress(OSError):
                install_dir.rmdir()
        raise


def _stage_one(plan: Plan, name: str, *, project_dir: Path, cache: Cache, progress: Progress, stager: Stager,
               platform: str, force: bool, offline: bool, output: Callable[[str], None] | None) -> None:
    entry = plan.lock.workers.get(name)
    if entry is None or entry.type not in ("package", "binary"):
        return
    if not force and is_current(project_dir, name, entry, platform):
        return
    art = entry.artifact_for(platform)
    assert art is not None
    location = locked_location(art.url, project_dir)
    if offline and location.url is not None and cache.find_blob(art.sha256) is None:
        raise ManagerError("W142", f"{name} {entry.version} is not in the cache and --offline forbids downloading it",
                           hint="run again without --offline")
    blob = fetch_artifact(name, entry.version, location, art, cache, progress,
                          limit=download_limit(entry.type), reuse=not force)
    staging = stager.staging_dir(name)
    build_install(name, entry, blob, staging, project_dir, platform, output=output)
    folder = install_path(project_dir, name, entry, platform)
    assert folder is not None
    stager.stage_install(name, staging, folder.name)
    plan.installed.append(name)


def _diff(plan: Plan) -> None:
    for name, entry in sorted(plan.lock.workers.items()):
        old = plan.old_lock.workers.get(name)
        if old is None:
            continue
        if old.identity() != entry.identity():
            plan.changes.append(_describe_change(name, old, entry))


def plan_registry_add(requests: list[Request], *, config: Any, lock: Lock, registries: Registries,
                      project_dir: Path, cache: Cache, progress: Progress, stager: Stager,
                      exact: bool = False, force: bool = False, platform: str | None = None,
                      output: Callable[[str], None] | None = None,
                      on_resolved: Callable[[Plan], None] | None = None) -> Plan:
    """Resolve `requests` (registry or first-party names) with everything declared, stage the
    installs of new or changed pins, and return the plan to commit (see `Plan`).

    `on_resolved(plan)` runs once versions are chosen and before anything is downloaded (to
    print `plan.tree` and `plan.warnings` in the order of §4.1's output); `output` receives
    setup/install script lines (default: stderr)."""
    platform = platform or host_platform()
    project_dir = Path(project_dir)
    declared = declared_workers(config, lock)
    by_name = {d.name: d for d in declared}
    resolution = Resolver(registries, lock, declared, platform=platform).resolve(requests)
    new_lock = build_lock(resolution, lock, declared, project_dir)
    plan = Plan(new_lock, lock, resolution=resolution, warnings=list(resolution.warnings))
    plan.tree = _tree(resolution, new_lock)
    for req in requests:
        name = canonical_name(req.name)
        choice = resolution.choices[name]
        typed = req.spec is not None and is_range(req.spec) and name not in resolution.tagged
        if choice.kind == "builtin":
            saved = req.spec if typed else None
        else:
            saved = (choice.version if exact else req.spec if typed else f"^{choice.version}")
        current = by_name.get(name)
        kept = choice.locked is not None or (choice.kind == "builtin" and lock.workers.get(name) == new_lock.workers.get(name))
        if current is None:
            plan.config_changes.append(ConfigChange(name, saved, True))
            plan.added.append(name)
        elif kept:
            plan.unchanged.append(name)  # the locked version already satisfies the request
        else:
            if req.spec is not None and current.spec != saved:
                plan.config_changes.append(ConfigChange(name, saved, False))
            plan.updated.append(name)
    for name in sorted(resolution.choices):
        if name not in by_name and name not in resolution.requested:
            requirer = resolution.required_by(name)
            plan.config_changes.append(ConfigChange(name, None, True, f"dependency of {requirer[0]}"
                                                    if requirer else None))
    _diff(plan)
    if on_resolved is not None:
        on_resolved(plan)
    changed = {n for n, e in new_lock.workers.items() if lock.workers.get(n) != e}
    targets = changed | ({canonical_name(r.name) for r in requests} if force else set())
    stage_installs(plan, targets | {canonical_name(r.name) for r in requests}, project_dir=project_dir,
                   cache=cache, progress=progress, stager=stager, platform=platform, force=force, output=output)
    return plan


def _update_images(lock: Lock, entries: list[Any], cache: Cache, progress: Progress) -> None:
    """Re-resolve the tags of declared image workers (§4.9): a tag that moved gets its new
    digest pinned (pulled into the cache now); a reference pinned by digest never moves."""
    from ..oci.declare import add_image
    from ..oci.reference import parse_reference

    for entry in entries:
        lock.workers[entry.name] = add_image(parse_reference(entry.image), entry.name, None,
                                             cache=cache, progress=progress).entry


def plan_update(targets: set[str], *, config: Any, lock: Lock, registries: Registries, project_dir: Path,
                cache: Cache, progress: Progress, stager: Stager, latest: bool = False,
                platform: str | None = None, output: Callable[[str], None] | None = None,
                on_resolved: Callable[[Plan], None] | None = None) -> Plan:
    """Re-resolve `targets` to the newest versions their ranges allow (§4.9); `latest` takes
    their `latest` dist-tag and rewrites their `version:` to `^<new>`. `on_resolved` and
    `output` as for `plan_registry_add`."""
    platform = platform or host_platform()
    project_dir = Path(project_dir)
    declared = declared_workers(config, lock)
    by_name = {d.name: d for d in declared}
    latest_names = {t for t in targets if by_name.get(t) and by_name[t].kind == "registry"} if latest else set()
    resolution = Resolver(registries, lock, declared, update=targets, platform=platform).resolve(latest=latest_names)
    new_lock = build_lock(resolution, lock, declared, project_dir)
    plan = Plan(new_lock, lock, resolution=resolution, warnings=list(resolution.warnings))
    images = [e for e in (config.workers if config is not None else []) if e.kind == "oci" and e.name in targets]
    if images and registries.offline:
        plan.warnings += [f"{e.name}: image tag not checked (offline)" for e in images]
    elif images:
        _update_images(new_lock, images, cache, progress)
    for name in sorted(latest_names):
        saved = f"^{resolution.choices[name].version}"
        if by_name[name].spec != saved:
            plan.config_changes.append(ConfigChange(name, saved, False))
    for name in sorted(resolution.choices):
        if name not in by_name:
            requirer = resolution.required_by(name)
            plan.config_changes.append(ConfigChange(name, None, True, f"dependency of {requirer[0]}"
                                                    if requirer else None))
    _diff(plan)
    for name, entry in new_lock.workers.items():
        old = lock.workers.get(name)
        (plan.unchanged if old == entry else plan.updated if old else plan.added).append(name)
    if on_resolved is not None:
        on_resolved(plan)
    changed = {n for n, e in new_lock.workers.items() if lock.workers.get(n) != e}
    stage_installs(plan, changed, project_dir=project_dir, cache=cache, progress=progress, stager=stager,
                   platform=platform, output=output)
    return plan


__all__ = ["ConfigChange", "Plan", "Request", "Stager", "build_lock", "declared_workers",
           "plan_registry_add", "plan_update", "stage_installs"]
