"""Starting a locked image worker (spec/cli.md §9.6 "Run", §9.7): the engine side of OCI.

The root comes from the cache, pulled again by the locked digest when it is missing (fresh
clone, deleted cache); then the Launch runs ``Entrypoint`` + ``Cmd`` in ``WorkingDir`` inside a
bubblewrap sandbox whose root is the image. Image workers need namespace isolation: without it
the worker fails with W161 rather than running the image's programs on the host.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ...engine.config import ProjectConfig, WorkerEntry
from ..child import Launch, StartError
from ..envbuild import EnvInputs, worker_environment
from ..logfile import WorkerLog
from ..manifest import ManifestError
from ..registry.cache import Cache, cache_dir
from ..registry.errors import ManagerError
from ..registry.progress import Progress
from .declare import image_manifest
from .reference import parse_reference
from .run import DATA_DIR, bwrap_image_args, command_of, image_env, image_install_dir, working_dir
from .store import PulledImage, cached_image, pull


def ensure_image(locked: Any, cache: Cache | None = None, progress: Progress | None = None) -> tuple[PulledImage, bool]:
    """The cached root of a locked image, pulled by its digest when missing; the flag says
    whether it had to be pulled. Raises ManagerError."""
    cache = cache or Cache(cache_dir())
    found = cached_image(cache, locked.digest)
    if found is not None:
        return found, False
    ref = parse_reference(locked.image)
    return pull(ref, cache, progress or Progress(quiet=True), expected=locked.digest), True


async def prepare_image(launcher: Any, entry: WorkerEntry, project: ProjectConfig, worker_log: WorkerLog,
                        choice: Any, locked: Any) -> Launch:
    """The Launch of an image worker (``launcher`` is the engine's :class:`Launcher`)."""
    if choice.isolation != "namespace" or choice.impossible:
        why = choice.reason or f"isolation: {choice.isolation} is set"
        raise StartError("W161", f"OCI image workers need namespace isolation: {why}")
    if locked is None or locked.type != "image":
        raise StartError("W110", f"not locked: run `iii worker add {entry.image or entry.name}`")
    if entry.kind == "oci" and locked.image != entry.image:
        raise StartError("W150", f"config.yaml and iii.lock disagree: image {entry.image} is not "
                                 f"the locked {locked.image}")
    try:
        image = cached_image(Cache(cache_dir()), locked.digest)
        if image is None:
            worker_log.event(f"installing {entry.name} {locked.version}")
            image, _ = await asyncio.to_thread(ensure_image, locked)
        manifest = image_manifest(image)
        command = command_of(image.run)
    except (ManagerError, ManifestError) as exc:
        raise StartError(getattr(exc, "code", "W160"), str(exc)) from None
    user = image.run.get("User")
    if user and str(user) not in ("0", "root", "0:0"):
        worker_log.event(f"note: the image's User '{user}' is not applied; the worker runs as the engine's user")
    work_dir = project.project_dir / "data" / "managed" / entry.name
    install = image_install_dir(project.project_dir, entry.name, locked.digest)
    if not launcher.ephemeral:
        work_dir.mkdir(parents=True, exist_ok=True)
        install.mkdir(parents=True, exist_ok=True)
    folder = working_dir(image.run)
    env = worker_environment(EnvInputs(
        name=entry.name, engine_url=launcher.engine_url, project_dir=project.project_dir,
        worker_dir=Path(folder), work_dir=Path(DATA_DIR), isolation="namespace",
        config=dict(entry.config), entry_env=dict(entry.env),
        manifest_env=dict(manifest.env) if manifest is not None else {}, version=locked.version,
        namespace=entry.namespace, config_path=project.config_path, ephemeral=launcher.ephemeral),
        base=image_env(image.run))
    preexec, limits = launcher.planner.plan(entry.name, launcher.limits(entry, manifest))
    sandbox = bwrap_image_args(entry.name, image.root, work_dir)
    argv = [launcher.probe.bwrap, *sandbox, "--chdir", folder, "--", *command]
    # cwd is the folder inside the image's root: the supervisor spawns bwrap from "/" (§9.5)
    return Launch(argv=argv, cwd=Path(folder), env=env, isolation="namespace",
                  label=f"image {locked.version}", limits=limits, preexec=preexec,
                  sandbox_args=sandbox, bwrap=launcher.probe.bwrap)
