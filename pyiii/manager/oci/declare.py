"""The image half of ``iii worker add`` (spec/cli.md §4.1 "OCI", §6.2): pull the image, read
its optional ``/iii/iii.worker.yaml``, and compute the iii.lock entry pinning the digest.

Nothing here touches config.yaml or iii.lock: the command folds the result into its
transaction, so a failed pull leaves both files as they were. The root filesystem goes to the
content-addressed cache, which any command may fill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...engine.firstparty import canonical_name
from ..lockfile import LockEntry
from ..manifest import Manifest, load_manifest
from ..registry.cache import Cache, cache_dir
from ..registry.errors import ManagerError
from ..registry.progress import Progress
from ..sandbox import probe
from .reference import Reference
from .run import manifest_folder
from .store import PulledImage, cached_image, pull


@dataclass(frozen=True)
class ImageAdd:
    """What adding one image produced; ``unchanged`` when the lock already pinned it."""

    name: str
    image: PulledImage
    entry: LockEntry
    manifest: Manifest | None
    unchanged: bool


def check_isolation(name: str, wanted: str | None) -> None:
    """Image workers run only in a namespace sandbox: ``--isolation process`` is refused, and
    ``--isolation namespace`` is checked up front (§9.5), both W161."""
    if wanted == "process":
        raise ManagerError("W161", f"{name} cannot run with isolation: process: OCI image workers "
                           "need namespace isolation", hint="drop --isolation process")
    if wanted == "namespace":
        found = probe()
        if not found.available:
            raise ManagerError("W161", f"{name} cannot run with isolation: namespace: {found.reason}",
                               hint="install bubblewrap and enable user namespaces")


def image_manifest(image: PulledImage) -> Manifest | None:
    """The validated ``/iii/iii.worker.yaml`` of an unpacked image, if it has one (W180 if invalid)."""
    folder = manifest_folder(image.root)
    return load_manifest(folder) if folder is not None else None


def add_image(ref: Reference, name: str, locked: Any, *, force: bool = False,
              cache: Cache | None = None, progress: Progress | None = None) -> ImageAdd:
    """Pull ``ref`` for the worker ``name``; ``locked`` is its current iii.lock entry, if any.

    An entry already locked for this very reference keeps its digest (``--force`` re-fetches
    that digest, never a newer tag); otherwise the reference is resolved afresh."""
    cache = cache or Cache(cache_dir())
    progress = progress or Progress(quiet=True)
    keep = locked is not None and locked.type == "image" and locked.image == ref.text and locked.digest
    if keep:
        image = None if force else cached_image(cache, locked.digest)
        if image is None:
            progress.info(f"pulling {ref.text}@{locked.digest}...")
            image = pull(ref, cache, progress, expected=locked.digest, force=force)
    else:
        progress.info(f"pulling {ref.text}...")
        image = pull(ref, cache, progress, force=force)
    manifest = image_manifest(image)
    deps = dict(sorted((canonical_name(d), spec) for d, spec in manifest.dependencies.items())) \
        if manifest is not None else {}
    entry = LockEntry(image.version(ref.tag), "image", deps, image=ref.text, digest=image.digest)
    unchanged = bool(keep) and locked == entry
    return ImageAdd(name, image, entry, manifest, unchanged)
