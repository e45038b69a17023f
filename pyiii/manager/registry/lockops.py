"""`verify`, `sync` and `sync --frozen`: checking and reproducing installs from iii.lock alone
(spec/cli.md §4.10, §4.11).

None of these resolve: they never read a registry's index or documents, only the artifacts the
lock names, so a project installs identically on every machine that has its two files.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pyiii.engine.firstparty import canonical_name, is_first_party

from ..lockfile import Lock, LockEntry
from ..manifest import load_manifest
from .cache import Cache
from .download import download_limit, fetch_artifact
from .errors import ManagerError
from .firstparty import builtin_satisfies, shipped_version
from .install import is_current
from .model import host_platform
from .plan import Plan, Stager, stage_installs
from .progress import Progress
from .semver import satisfies
from .urls import locked_location


@dataclass
class VerifyReport:
    findings: list[str] = field(default_factory=list)  # drift (exit 4)
    warnings: list[str] = field(default_factory=list)

    def raise_drift(self) -> None:
        if self.findings:
            raise ManagerError("W150", "config.yaml and iii.lock disagree:",
                               details=[f"- {f}" for f in self.findings],
                               hint="`iii worker add <name>` locks a new worker; `iii worker update` re-pins")


def _image_ref(image: str | None) -> str:
    return image or "?"


def verify(config: Any, lock: Lock, *, platform: str | None = None) -> VerifyReport:
    """The offline consistency checks of §4.11 between a loaded config and lock."""
    platform = platform or host_platform()
    report = VerifyReport()
    shipped = shipped_version()
    versions: dict[str, str | None] = {}   # declared name -> its version (for dependency checks)
    requirers: list[tuple[str, str, dict[str, str]]] = []
    entries = config.workers if config is not None else []
    for e in entries:
        locked = lock.workers.get(e.name)
        if e.kind == "builtin":
            versions[e.name] = shipped
            if e.version and not builtin_satisfies(e.version):
                report.findings.append(f"{e.name}: this pyiii ships {shipped}, which does not satisfy {e.version}")
            if locked is not None and locked.version != shipped:
                report.warnings.append(f"{e.name} is locked at {locked.version} but this pyiii ships {shipped}; "
                                       f"`iii worker update {e.name}` records it")
        elif e.kind == "registry":
            if locked is None:
                report.findings.append(f"{e.name} is declared in config.yaml but not locked")
                continue
            versions[e.name] = locked.version
            if e.version and not satisfies(locked.version, e.version):
                report.findings.append(f"{e.name}: locked {locked.version} does not satisfy {e.version}")
            if locked.type == "binary" and platform not in locked.artifacts:
                report.findings.append(f"{e.name} {locked.version}: no binary for {platform}")
            requirers.append((e.name, locked.version, locked.dependencies))
        elif e.kind == "oci":
            if locked is None or locked.type != "image":
                report.findings.append(f"{e.name} is declared in config.yaml but not locked")
                continue
            versions[e.name] = locked.version
            if locked.image != e.image:
                report.findings.append(f"{e.name}: image {e.image} is not the locked {_image_ref(locked.image)}")
        else:
            manifest = load_manifest(config.worker_dir(e))
            versions[e.name] = manifest.version
            requirers.append((e.name, manifest.version or "(local)", dict(manifest.dependencies)))
    declared = set(versions)
    reachable = set(declared)
    for name, version, deps in requirers:
        for dep_raw, spec in sorted(deps.items()):
            dep = canonical_name(dep_raw)
            reachable.add(dep)
            why = _unmet(dep, spec, declared, versions, lock)
            if why:
                report.findings.append(f"{name} {version} requires {dep} {spec}, but {why}")
    unreachable = sorted(set(lock.workers) - reachable - _lock_closure(lock, reachable))
    if unreachable:
        report.warnings.append(f"iii.lock has entries nothing declares: {', '.join(unreachable)}; "
                               "the next add, remove or update prunes them")
    return report


def _lock_closure(lock: Lock, roots: set[str]) -> set[str]:
    seen, todo = set(), [r for r in roots if r in lock.workers]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [canonical_name(d) for d in lock.workers[name].dependencies if canonical_name(d) in lock.workers]
    return seen


def _unmet(dep: str, spec: str, declared: set[str], versions: dict[str, str | None], lock: Lock) -> str | None:
    if dep not in declared:
        return f"{dep} is not declared in config.yaml"
    if is_first_party(dep):
        return None if builtin_satisfies(spec) else f"this pyiii ships {shipped_version()}"
    version = versions.get(dep)
    if version is None:
        return f"{dep} is not locked"
    if not satisfies(version, spec):
        return f"{dep} is locked at {version}" if dep in lock.workers else f"{dep} is at {version}"
    return None


# -- sync ------------------------------------------------------------------------------------
@dataclass
class SyncReport:
    installed: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why (local, image, ...)
    verified: int = 0
    not_checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = sorted(set(self.skipped.values()))
        skipped = f"skipped {len(self.skipped)}" + (f" ({', '.join(kinds)})" if kinds else "")
        return (f"synced from iii.lock: installed {len(self.installed)}, "
                f"already current {len(self.current)}, {skipped}")


def _locked_workers(config: Any, lock: Lock) -> list[tuple[str, LockEntry | None, str]]:
    out = []
    for e in config.workers if config is not None else []:
        out.append((e.name, lock.workers.get(e.name), e.kind))
    return out


def sync(config: Any, lock: Lock, *, project_dir: Path, cache: Cache, progress: Progress, stager: Stager,
         platform: str | None = None, offline: bool = False,
         output: Callable[[str], None] | None = None) -> SyncReport:
    """Install every declared, locked worker whose install folder is not current (§4.10)."""
    platform = platform or host_platform()
    check = verify(config, lock, platform=platform)
    check.raise_drift()
    report = SyncReport(warnings=check.warnings)
    todo: set[str] = set()
    images: list[tuple[str, LockEntry]] = []
    for name, entry, kind in _locked_workers(config, lock):
        if kind == "local":
            report.skipped[name] = "local"
        elif kind == "builtin" or entry is None:
            continue
        elif entry.type == "image":
            images.append((name, entry))
        elif is_current(project_dir, name, entry, platform):
            report.current.append(name)
        else:
            todo.add(name)
    plan = Plan(lock, lock)
    stage_installs(plan, todo, project_dir=project_dir, cache=cache, progress=progress, stager=stager,
                   platform=platform, offline=offline, output=output)
    pulled = _sync_images(images, cache, progress, offline, report)
    report.installed = sorted({*plan.installed, *pulled})
    return report


def _sync_images(images: list[tuple[str, LockEntry]], cache: Cache, progress: Progress, offline: bool,
                 report: SyncReport) -> list[str]:
    """Locked images whose cached root is missing are pulled by their digest (§9.7)."""
    from ..oci.starter import ensure_image
    from ..oci.store import cached_image

    pulled = []
    for name, entry in images:
        if cached_image(cache, entry.digest or "") is not None:
            report.current.append(name)
        elif offline:
            report.skipped[name] = "image (offline)"
        else:
            ensure_image(entry, cache, progress)
            pulled.append(name)
    return pulled


def sync_frozen(config: Any, lock: Lock, *, project_dir: Path, progress: Progress, offline: bool = False,
                platform: str | None = None) -> SyncReport:
    """Check, without writing anything anywhere, that the lock is consistent with config.yaml
    and that every locked artifact exists with its sha256 (§4.10 `--frozen`)."""
    platform = platform or host_platform()
    check = verify(config, lock, platform=platform)
    check.raise_drift()
    report = SyncReport(warnings=check.warnings)
    scratch = Path(tempfile.mkdtemp(prefix="pyiii-frozen-"))
    try:
        private = Cache(scratch)
        for name, entry in sorted(lock.workers.items()):
            if entry.type == "builtin":
                continue
            if entry.type == "image":  # the pinned manifest must still be served, unchanged
                if offline:
                    report.not_checked.append(name)
                else:
                    from ..oci.store import check_locked

                    check_locked(entry, private)
                    report.verified += 1
                continue
            installed = is_current(project_dir, name, entry, platform)
            arts = [entry.package] if entry.type == "package" else list(entry.artifacts.values())
            to_fetch = [a for a in arts if a is not None and not (installed and a == entry.artifact_for(platform))]
            if offline and to_fetch:
                report.not_checked.append(name)
                continue
            for art in to_fetch:
                fetch_artifact(name, entry.version, locked_location(art.url, project_dir), art, private,
                               progress, limit=download_limit(entry.type), reuse=False)
                private.blob_path(art.sha256).unlink(missing_ok=True)
            report.verified += 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def ensure_installed(project_dir: Path, name: str, entry: LockEntry, *, cache: Cache | None = None,
                     progress: Progress | None = None, platform: str | None = None,
                     output: Callable[[str], None] | None = None) -> Path | None:
    """Install one locked worker if its identity folder is missing, as `sync` would (§9.7:
    the engine starting a worker after a fresh clone or `clear`). Returns the install folder
    (None for builtin and image entries). Raises ManagerError / ManifestError on failure,
    leaving no partial folder behind."""
    from .cache import cache_dir
    from .install import build_install, install_path, install_root

    platform = platform or host_platform()
    folder = install_path(project_dir, name, entry, platform)
    if folder is None:
        if entry.type == "binary":
            raise ManagerError("W110", f"'{name}' {entry.version} has no binary for {platform} "
                               f"(available: {', '.join(sorted(entry.artifacts))})")
        return None
    if is_current(project_dir, name, entry, platform):
        return folder
    art = entry.artifact_for(platform)
    assert art is not None
    blob = fetch_artifact(name, entry.version, locked_location(art.url, project_dir), art,
                          cache or Cache(cache_dir()), progress or Progress(quiet=True),
                          limit=download_limit(entry.type))
    root = install_root(project_dir, name)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    try:
        build_install(name, entry, blob, staging, project_dir, platform, output=output)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
