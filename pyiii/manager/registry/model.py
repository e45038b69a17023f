"""Registry documents: `meta/<name>.json` and `index.json` (spec/cli.md §7.1).

A document is checked completely when it is read, so the resolver and the installer work with
well-formed values only; anything malformed is W140 naming the document and the bad field,
never a crash deep inside resolution.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ManagerError
from .semver import DIST_TAG, is_dist_tag, is_range, is_version, without_build

FORMAT = "pyiii-registry"
FORMAT_VERSION = 1
TYPES = ("package", "binary", "image")
BINARY_FORMATS = ("raw", "tar.gz")
PLATFORM = re.compile(r"^(linux|darwin|windows)-(x86_64|aarch64|arm64)$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")  # an OCI content digest, as iii.lock pins it
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
IMAGE_DIGEST = re.compile(r"^.+@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Artifact:
    """One downloadable file: a package archive or one platform's binary."""

    url: str
    sha256: str
    size: int
    format: str | None = None  # binaries only: raw | tar.gz
    entry: str | None = None   # tar.gz binaries only: the executable inside


@dataclass(frozen=True)
class Pin:
    """What one version of a worker installs: a package archive, per-platform binaries or an
    image. A registry document publishes it (``VersionInfo``) and iii.lock keeps it
    (``LockEntry``), so both read the same fields."""

    version: str
    type: str
    dependencies: dict[str, str] = field(default_factory=dict)
    package: Artifact | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    image: str | None = None

    def artifact_for(self, platform: str) -> Artifact | None:
        """The artifact this machine installs (the package, or the platform's binary)."""
        return self.package if self.type == "package" else self.artifacts.get(platform)


@dataclass(frozen=True)
class VersionInfo(Pin):
    """One published version of a worker."""

    yanked: str | None = None
    deprecated: str | None = None
    published: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerDocument:
    """`meta/<name>.json`: every version of one worker. `url` is where it was read from, the
    base for relative artifact URLs."""

    name: str
    url: str
    description: str = ""
    dist_tags: dict[str, str] = field(default_factory=dict)
    versions: dict[str, VersionInfo] = field(default_factory=dict)


class _Invalid(Exception):
    pass


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise _Invalid(why)


def _artifact(raw: Any, where: str, binary: bool) -> Artifact:
    _need(isinstance(raw, dict), f"{where} must be an object")
    url, sha, size = raw.get("url"), raw.get("sha256"), raw.get("size")
    _need(isinstance(url, str) and url != "", f"{where}.url must be a non-empty string")
    _need(isinstance(sha, str) and HEX64.match(sha) is not None, f"{where}.sha256 must be 64 lowercase hex digits")
    _need(isinstance(size, int) and not isinstance(size, bool) and size >= 0, f"{where}.size must be a non-negative integer")
    fmt = entry = None
    if binary:
        fmt = raw.get("format", "raw")
        _need(fmt in BINARY_FORMATS, f"{where}.format must be raw or tar.gz")
        entry = raw.get("entry")
        _need(entry is None or (isinstance(entry, str) and entry != ""), f"{where}.entry must be a string")
    return Artifact(url, sha, size, fmt, entry)


def _dependencies(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    _need(isinstance(raw, dict), f"{where} must be an object")
    for dep, spec in raw.items():
        _need(NAME.match(dep) is not None, f"{where}: invalid worker name '{dep}'")
        _need(isinstance(spec, str) and is_range(spec), f"{where}.{dep}: invalid range {spec!r}")
    return dict(sorted(raw.items()))


def _version(version: str, raw: Any) -> VersionInfo:
    where = f"versions.{version}"
    _need(is_version(version), f"{where}: '{version}' is not a strict semver version")
    _need(isinstance(raw, dict), f"{where} must be an object")
    kind = raw.get("type", "package")
    _need(kind in TYPES, f"{where}.type must be one of {', '.join(TYPES)}")
    package, artifacts, image = None, {}, None
    if kind == "package":
        package = _artifact(raw.get("package"), f"{where}.package", False)
    elif kind == "binary":
        arts = raw.get("artifacts")
        _need(isinstance(arts, dict) and arts, f"{where}.artifacts must be a non-empty object")
        for platform, art in arts.items():
            _need(PLATFORM.match(platform) is not None, f"{where}.artifacts: unknown platform '{platform}'")
            artifacts[platform] = _artifact(art, f"{where}.artifacts.{platform}", True)
    else:
        image = raw.get("image")
        _need(isinstance(image, str) and IMAGE_DIGEST.match(image) is not None,
              f"{where}.image must be a reference with @sha256:<digest>")
    for key in ("yanked", "deprecated", "published"):
        _need(raw.get(key) is None or isinstance(raw.get(key), str), f"{where}.{key} must be a string")
    manifest = raw.get("manifest") or {}
    _need(isinstance(manifest, dict), f"{where}.manifest must be an object")
    return VersionInfo(version, kind, _dependencies(raw.get("dependencies"), f"{where}.dependencies"),
                       package, dict(sorted(artifacts.items())), image, raw.get("yanked"),
                       raw.get("deprecated"), raw.get("published"), manifest)


def _json(data: bytes, url: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManagerError("W140", f"registry document {url} is not valid JSON: {exc}",
                           hint="fix or republish the registry; nothing was changed") from None


def parse_document(data: bytes, url: str, name: str) -> WorkerDocument:
    """Parse and check `meta/<name>.json` read from `url`; W140 when anything is wrong."""
    raw = _json(data, url)
    try:
        _need(isinstance(raw, dict), "the document must be a JSON object")
        _need(raw.get("format_version", FORMAT_VERSION) == FORMAT_VERSION,
              f"format_version {raw.get('format_version')!r} is not supported (supported: 1)")
        _need(raw.get("name") == name, f"name is {raw.get('name')!r}, expected '{name}'")
        desc = raw.get("description") or ""
        _need(isinstance(desc, str), "description must be a string")
        versions_raw = raw.get("versions")
        _need(isinstance(versions_raw, dict), "versions must be an object")
        versions: dict[str, VersionInfo] = {}
        seen: dict[str, str] = {}
        for version, info in versions_raw.items():
            parsed = _version(version, info)
            core = without_build(version)
            _need(core not in seen, f"versions {seen.get(core)} and {version} differ only in build metadata")
            seen[core] = version
            versions[version] = parsed
        tags = raw.get("dist-tags") or {}
        _need(isinstance(tags, dict), "dist-tags must be an object")
        for tag, target in tags.items():
            _need(DIST_TAG.match(tag) is not None and is_dist_tag(tag), f"dist-tag '{tag}' is not a valid tag name")
            _need(target in versions, f"dist-tag '{tag}' names {target!r}, which is not a published version")
    except _Invalid as exc:
        raise ManagerError("W140", f"registry document {url} is invalid: {exc}",
                           hint="fix or republish the registry; nothing was changed") from None
    return WorkerDocument(name, url, desc, dict(tags), versions)


def parse_index(data: bytes, url: str) -> dict[str, Any]:
    """Parse `index.json` (discovery only); W140 when it is not the registry format."""
    raw = _json(data, url)
    if not (isinstance(raw, dict) and raw.get("format") == FORMAT and isinstance(raw.get("workers"), dict)):
        raise ManagerError("W140", f"registry index {url} is invalid: expected format '{FORMAT}' with a workers object")
    return raw


def document_json(doc: dict[str, Any]) -> bytes:
    """Registry JSON as written by publish: sorted keys, 2-space indent, final newline."""
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def host_platform() -> str:
    """This machine as `<os>-<arch>` (§7.1): `linux-x86_64`, `linux-aarch64`, `darwin-arm64`."""
    import platform
    import sys

    os_name = "darwin" if sys.platform == "darwin" else "windows" if sys.platform.startswith("win") else "linux"
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if os_name == "darwin" and arch == "aarch64":
        arch = "arm64"
    return f"{os_name}-{arch}"
