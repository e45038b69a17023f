"""Pulling an image into the shared cache (spec/cli.md §9.6, §0.5).

Manifests, config and layers land in ``blobs/sha256/`` after their digest is checked; the
layers are applied into ``oci/rootfs/<hex>.partial/`` and renamed to ``oci/rootfs/<hex>/`` when
complete, with the image config kept beside it as ``<hex>.json``. ``<hex>`` is the top-level
digest (the one iii.lock pins), so an engine finds a locked image's root without the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..registry.cache import Cache, sha256_file
from ..registry.errors import ManagerError
from ..registry.progress import Progress
from . import manifests
from .client import RegistryClient
from .layers import apply_layers
from .reference import Reference
from .run import add_mount_points

BLOB_LIMIT = 4 * 1024 ** 3


def blob_limit(env: Mapping[str, str] | None = None) -> int:
    """Per-blob cap; ``III_MAX_DOWNLOAD_BYTES`` overrides it as it does for packages."""
    value = (os.environ if env is None else env).get("III_MAX_DOWNLOAD_BYTES", "").strip()
    return int(value) if value.isdigit() else BLOB_LIMIT


@dataclass(frozen=True)
class PulledImage:
    """An unpacked image: ``root`` is read-only from now on; ``config`` the image config JSON."""

    reference: str
    digest: str  # top-level index or manifest: what iii.lock pins
    manifest_digest: str
    platform: str
    config: dict[str, Any]
    root: Path

    @property
    def run(self) -> dict[str, Any]:
        """The image config's ``config`` object (Entrypoint, Cmd, Env, WorkingDir, User, Labels)."""
        found = self.config.get("config")
        return found if isinstance(found, dict) else {}

    def version(self, tag: str | None) -> str:
        """iii.lock's version of a direct image (§6.1): the version label, the tag, or the digest."""
        labels = self.run.get("Labels") or {}
        label = labels.get("org.opencontainers.image.version") if isinstance(labels, dict) else None
        if isinstance(label, str) and label.strip():
            return label.strip()
        return tag or f"sha256:{self.digest[7:19]}"


def rootfs_dir(cache: Cache) -> Path:
    return cache.root / "oci" / "rootfs"


def cached_image(cache: Cache, digest: str) -> PulledImage | None:
    """The complete cached root of ``digest``, or None (then it must be pulled)."""
    hexd = digest.split(":", 1)[-1]
    root, meta = rootfs_dir(cache) / hexd, rootfs_dir(cache) / f"{hexd}.json"
    if not root.is_dir():
        return None
    try:
        doc = json.loads(meta.read_text())
        return PulledImage(doc["reference"], doc["digest"], doc["manifest_digest"], doc["platform"],
                           doc["config"], root)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mismatch(ref: str, expected: str, got: str) -> ManagerError:
    return ManagerError("W143", f"digest mismatch for {ref}: expected {expected}, got {got}",
                        hint="the registry served different bytes than the digest names; do not trust it")


def _not_found(ref: Reference) -> ManagerError:
    return ManagerError("W110", f"{ref.text} was not found on {ref.host}",
                        hint="check the repository and tag; images are pulled from the registry, "
                             "never from a local Docker daemon")


class Puller:
    """One pull of one reference, sharing a token across its requests."""

    def __init__(self, ref: Reference, cache: Cache, progress: Progress, *, force: bool = False) -> None:
        self.ref, self.cache, self.progress, self.force = ref, cache, progress, force
        self.client = RegistryClient(ref)

    def _store(self, data: bytes, digest: str) -> None:
        fd, temp = self.cache.temp_file()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.cache.adopt(temp, digest.split(":", 1)[1])

    def manifest(self, target: str, expected: str | None) -> tuple[str, bytes, str | None]:
        """(digest, body, content type) of ``manifests/<target>``, verified; a pinned one is
        read from the cache when it is there."""
        if expected is not None and not self.force:
            cached = self.cache.blob_path(expected.split(":", 1)[1])
            if cached.is_file():
                body = cached.read_bytes()
                if "sha256:" + hashlib.sha256(body).hexdigest() == expected:
                    return expected, body, None
        resp = self.client.open(f"manifests/{target}", manifests.ACCEPT)
        try:
            if resp.status == 404:
                raise _not_found(self.ref)
            body = resp.read_all(manifests.MANIFEST_LIMIT, "manifest")
            content_type = resp.headers.get("Content-Type")
            announced = resp.headers.get("Docker-Content-Digest")
        finally:
            resp.close()
        got = "sha256:" + hashlib.sha256(body).hexdigest()
        if expected is None and announced and announced.startswith("sha256:"):
            expected = announced.strip()
        if expected is not None and got != expected:
            raise _mismatch(self.ref.text, expected, got)
        self._store(body, got)
        return got, body, content_type

    def blob(self, desc: manifests.Descriptor, label: tuple[str, str]) -> Path:
        """The verified cached blob of ``desc``, downloaded if missing (or forced)."""
        hexd = desc.digest.split(":", 1)[1]
        path = self.cache.blob_path(hexd)
        if path.is_file() and not self.force and sha256_file(path) == hexd:
            return path
        limit = blob_limit()
        if desc.size > limit:
            raise ManagerError("W142", f"{self.ref.text}: blob {desc.digest} is {desc.size} bytes, over "
                               f"the {limit} byte limit", hint="raise III_MAX_DOWNLOAD_BYTES if you trust it")
        resp = self.client.open(f"blobs/{desc.digest}")
        fd, temp = self.cache.temp_file()
        try:
            if resp.status == 404:
                raise ManagerError("W110", f"{self.ref.text}: blob {desc.digest} was not found on {self.ref.host}")
            digest, received = hashlib.sha256(), 0
            self.progress.start(label[0], label[1], desc.size)
            with os.fdopen(fd, "wb") as out:
                fd = -1
                for chunk in resp.chunks():
                    received += len(chunk)
                    if received > limit:  # other sizes than declared end as a digest mismatch
                        raise ManagerError("W142", f"{self.ref.text}: blob {desc.digest} exceeds the "
                                           f"{limit} byte limit")
                    digest.update(chunk)
                    out.write(chunk)
                    self.progress.advance(len(chunk))
            got = "sha256:" + digest.hexdigest()
            if got != desc.digest:
                raise _mismatch(self.ref.text, desc.digest, got)
            stored = self.cache.adopt(temp, hexd)
            self.progress.finish()
            return stored
        except BaseException:
            self.progress.abort()
            if fd >= 0:
                os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        finally:
            resp.close()

    def pull(self, expected: str | None = None) -> PulledImage:
        """Resolve, fetch, verify and unpack; ``expected`` pins the top-level digest (a locked
        image), else the reference's own digest or tag decides."""
        ref = self.ref
        expected = expected or ref.digest
        if expected and not self.force:
            found = cached_image(self.cache, expected)
            if found is not None:
                return found
        top, body, ctype = self.manifest(expected or ref.target, expected)
        if not self.force:
            found = cached_image(self.cache, top)
            if found is not None:
                return found
        kind, parsed = manifests.parse(body, ctype, ref.text)
        arch = manifests.host_arch()
        platform, manifest_digest = f"linux/{arch}", top
        if kind == "index":
            chosen = manifests.select_platform(parsed, ref.text, arch)
            platform = chosen.platform or platform
            manifest_digest, body, ctype = self.manifest(chosen.digest, chosen.digest)
            kind, parsed = manifests.parse(body, ctype, ref.text)
            if kind != "manifest":
                raise ManagerError("W141", f"{ref.text}: the linux/{arch} entry is not an image manifest")
        image: manifests.ImageManifest = parsed
        config_path = self.blob(image.config, (ref.text, "config"))
        try:
            config = json.loads(config_path.read_bytes())
        except ValueError:
            raise ManagerError("W141", f"{ref.text}: the image config is not JSON") from None
        if not isinstance(config, dict):
            raise ManagerError("W141", f"{ref.text}: the image config is not a JSON object")
        count = len(image.layers)
        layers = [self.blob(layer, (ref.text, f"layer {i}/{count}"))
                  for i, layer in enumerate(image.layers, 1)]
        root = unpack_root(self.cache, top, layers, ref.text, force=self.force, meta={
            "reference": ref.text, "digest": top, "manifest_digest": manifest_digest,
            "platform": platform, "config": config})
        return PulledImage(ref.text, top, manifest_digest, platform, config, root)


def unpack_root(cache: Cache, digest: str, layers: list[Path], label: str, *, meta: dict[str, Any],
                force: bool = False) -> Path:
    """Apply ``layers`` into ``<hex>.partial/`` under a lock, rename it into place, and write
    ``<hex>.json`` last (a root without it is incomplete and rebuilt)."""
    folder = rootfs_dir(cache)
    folder.mkdir(parents=True, exist_ok=True)
    hexd = digest.split(":", 1)[1]
    final, partial, meta_path = folder / hexd, folder / f"{hexd}.partial", folder / f"{hexd}.json"
    with open(folder / f"{hexd}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir() and meta_path.is_file() and not force:
            return final  # another command finished it while this one waited
        meta_path.unlink(missing_ok=True)
        for stale in (partial, final):
            if stale.exists():
                shutil.rmtree(stale)
        partial.mkdir()
        try:
            apply_layers(layers, partial, label)
            add_mount_points(partial)
            partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        temp = folder / f".{hexd}.json.tmp"
        temp.write_text(json.dumps(meta, sort_keys=True) + "\n")
        os.replace(temp, meta_path)
    return final


def pull(ref: Reference, cache: Cache, progress: Progress, *, expected: str | None = None,
         force: bool = False) -> PulledImage:
    """Pull ``ref`` (pinned to ``expected`` when given) into ``cache``."""
    return Puller(ref, cache, progress, force=force).pull(expected)


def cache_entries(cache: Cache, digest: str) -> list[Path]:
    """Every cache path a locked image owns (for ``clear``): its unpacked root and image.json,
    and the manifest, config and layer blobs reachable from the cached top-level digest."""
    hexd = digest.split(":", 1)[-1]
    folder = rootfs_dir(cache)
    paths = [folder / hexd, folder / f"{hexd}.json", folder / f"{hexd}.lock"]
    todo, seen = [digest], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        blob = cache.blob_path(current.split(":", 1)[-1])
        paths.append(blob)
        try:
            kind, parsed = manifests.parse(blob.read_bytes(), None, current)
        except (OSError, ManagerError):
            continue  # not cached, or a config/layer blob
        if kind == "index":
            todo += [d.digest for d in parsed]
        else:
            paths += [cache.blob_path(d.digest.split(":", 1)[1]) for d in (parsed.config, *parsed.layers)]
    return [p for p in dict.fromkeys(paths) if p.exists()]


def check_locked(entry: Any, cache: Cache) -> None:
    """``sync --frozen``: the registry still serves the locked top-level manifest with its
    digest (W110 / W143 otherwise); ``cache`` is a private, throw-away one."""
    from .reference import parse_reference

    Puller(parse_reference(entry.image), cache, Progress(quiet=True)).manifest(entry.digest, entry.digest)
