"""`iii worker publish`: putting a local worker into a registry folder (spec/cli.md §4.13).

The package archive is reproducible (see `archive.pack`), versions are immutable, and the two
documents (`meta/<name>.json`, `index.json`) are rewritten atomically under `<dir>/.lock`, so
a registry folder served while someone publishes never shows half an update.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pyiii.engine.firstparty import is_first_party

from ..manifest import load_manifest
from .archive import pack
from .download import download_limit
from .errors import ManagerError
from .model import FORMAT, FORMAT_VERSION, IMAGE_DIGEST, PLATFORM, document_json, parse_document
from .semver import compare, is_prerelease, is_version


@dataclass
class Published:
    name: str
    version: str
    type: str
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content (written)
    sha256: str | None = None
    size: int | None = None
    tags: list[str] = field(default_factory=list)

    @property
    def coordinate(self) -> str:
        return f"{self.name}@{self.version}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _registry_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_targz(path: Path) -> bool:
    if path.name.endswith((".tar.gz", ".tgz")):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(data)


def publish(folder: Path, registry: Path, *, tag: str | None = None, artifacts: dict[str, Path] | None = None,
            image: str | None = None, dry_run: bool = False) -> Published:
    """Publish the worker in `folder` into the registry folder `registry` (see module doc)."""
    folder, registry = Path(folder).resolve(), Path(registry).resolve()
    manifest = load_manifest(folder)
    name, version = manifest.name, manifest.version
    if is_first_party(name):
        raise ManagerError("W100", f"'{name}' is the name of a first-party worker and cannot be published",
                           hint="rename the worker in iii.worker.yaml")
    if not version or not is_version(version):
        raise ManagerError("W180", f"{manifest.path}: publish needs a semver 'version' (e.g. version: 0.1.0)")
    if artifacts and image:
        raise ManagerError("W105", "--artifact and --image cannot be used together")
    if image is not None and not IMAGE_DIGEST.match(image):
        raise ManagerError("W105", f"--image {image} must name a digest: <reference>@sha256:<hex>")
    for platform in artifacts or {}:
        if not PLATFORM.match(platform):
            raise ManagerError("W105", f"unknown platform '{platform}' (expected <os>-<arch>, e.g. linux-x86_64)")
    if not dry_run:
        registry.mkdir(parents=True, exist_ok=True)
    with (_registry_lock(registry) if not dry_run else contextlib.nullcontext()):
        return _publish_locked(manifest, registry, tag, artifacts or {}, image, dry_run)


def _publish_locked(manifest: Any, registry: Path, tag: str | None, artifacts: dict[str, Path],
                    image: str | None, dry_run: bool) -> Published:
    name, version = manifest.name, manifest.version
    meta_path = registry / "meta" / f"{name}.json"
    meta = _read_json(meta_path) or {"format_version": FORMAT_VERSION, "name": name, "description": "",
                                      "dist-tags": {}, "versions": {}}
    if meta_path.exists():
        parse_document(meta_path.read_bytes(), str(meta_path), name)  # refuse to extend a broken document
    if version in meta["versions"]:
        raise ManagerError("W140", f"{name}@{version} is already published in {registry}",
                           hint="bump version in iii.worker.yaml")
    out = Published(name, version, "package")
    entry: dict[str, Any] = {"published": _now(), "dependencies": dict(sorted(manifest.dependencies.items()))}
    if artifacts:
        out.type = "binary"
        arts = {}
        for platform, path in sorted(artifacts.items()):
            data = Path(path).read_bytes()
            targz = _is_targz(Path(path))
            file = f"{name}-{platform}" + (".tar.gz" if targz else "")
            rel = f"binaries/{name}/{version}/{file}"
            out.files[rel] = data
            art = {"url": f"../{rel}", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                   "format": "tar.gz" if targz else "raw"}
            if targz:
                art["entry"] = name
            arts[platform] = art
        entry.update(type="binary", artifacts=arts)
    elif image:
        out.type = "image"
        entry.update(type="image", image=image)
    else:
        blob = pack(manifest.folder, download_limit("package"))
        rel = f"packages/{name}/{name}-{version}.tar.gz"
        out.files[rel] = blob
        out.sha256, out.size = hashlib.sha256(blob).hexdigest(), len(blob)
        entry.update(type="package", package={"url": f"../{rel}", "sha256": out.sha256, "size": out.size})
    described = {"description": manifest.description or "", "runtime": {"language": manifest.language or "other"},
                 "resources": {k: v for k, v in (("memory", manifest.memory), ("cpus", manifest.cpus),
                                                 ("pids", manifest.pids)) if v is not None},
                 "skills": list(manifest.skills)}
    entry["manifest"] = described
    meta["versions"][version] = entry
    meta["description"] = manifest.description or meta.get("description", "")
    tags = meta.setdefault("dist-tags", {})
    if tag:
        tags[tag] = version
        out.tags.append(tag)
    elif is_prerelease(version):
        tags["next"] = version
        out.tags.append("next")
    elif "latest" not in tags or compare(version, tags["latest"]) > 0:
        tags["latest"] = version
        out.tags.append("latest")
    meta_bytes = document_json(meta)
    parse_document(meta_bytes, str(meta_path), name)  # what we write must be what we read
    out.files[f"meta/{name}.json"] = meta_bytes
    index = _read_json(registry / "index.json") or {}
    index.update(format=FORMAT, format_version=FORMAT_VERSION, updated=entry["published"])
    index.setdefault("workers", {})[name] = {"description": meta["description"], "latest": tags.get("latest"),
                                             "type": out.type, "updated": entry["published"]}
    out.files["index.json"] = document_json(index)
    if not dry_run:
        # artifacts first, documents last: a reader never sees a version whose file is missing
        for rel in sorted(out.files, key=lambda r: (r in ("index.json", f"meta/{name}.json"), r)):
            _write(registry / rel, out.files[rel])
    return out


__all__ = ["Published", "publish"]
