"""Image manifests and indexes (spec/cli.md §9.6 "Manifests"): media types, parsing, and
narrowing an index to this machine's ``linux/<arch>``.

Both the OCI and the Docker v2 formats are accepted; Docker schema 1 is refused, it has no
content-addressed config. Pure functions on bytes, so they are tested without a registry.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass
from typing import Any

from ..registry.errors import ManagerError
from ..registry.model import DIGEST

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
MANIFEST_LIMIT = 4 * 1024 * 1024
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def host_arch(machine: str | None = None) -> str:
    """This machine's architecture in OCI terms (``amd64``, ``arm64``)."""
    machine = (machine or _platform.machine()).lower()
    return _ARCH.get(machine, machine)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str | None = None  # "os/arch[/variant]" for index entries


@dataclass(frozen=True)
class ImageManifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _bad(ref: str, why: str) -> ManagerError:
    return ManagerError("W141", f"{ref}: invalid manifest: {why}")


def _descriptor(raw: Any, ref: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise _bad(ref, "a descriptor is not an object")
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise _bad(ref, f"unsupported digest {digest!r} (sha256 only)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(ref, "a descriptor has no valid size")
    plat = raw.get("platform")
    text = None
    if isinstance(plat, dict):
        text = f"{plat.get('os')}/{plat.get('architecture')}" + (
            f"/{plat['variant']}" if plat.get("variant") else "")
    return Descriptor(str(raw.get("mediaType") or ""), digest, size, text)


def parse(body: bytes, content_type: str | None, ref: str) -> tuple[str, Any]:
    """("index", [Descriptor]) or ("manifest", ImageManifest) from a manifest body."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise _bad(ref, "not JSON") from None
    if not isinstance(doc, dict):
        raise _bad(ref, "not a JSON object")
    media = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if doc.get("schemaVersion") == 1 or media.startswith(DOCKER_V1):
        raise ManagerError("W141", f"{ref} uses the Docker schema 1 manifest format, which pyiii "
                           "does not support", hint="push the image again with a current Docker")
    if media in INDEX_TYPES or (not media and "manifests" in doc):
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _bad(ref, "an index without manifests")
        return "index", [_descriptor(e, ref) for e in entries]
    if media in MANIFEST_TYPES or (not media and "layers" in doc):
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise _bad(ref, "a manifest without layers")
        return "manifest", ImageManifest(_descriptor(doc.get("config"), ref),
                                         tuple(_descriptor(layer, ref) for layer in layers))
    raise ManagerError("W141", f"{ref}: unsupported manifest type '{media or 'unknown'}'")


def select_platform(entries: list[Descriptor], ref: str, arch: str | None = None) -> Descriptor:
    """The ``linux/<arch>`` entry of an index; attestation entries (``unknown/unknown``) are
    skipped; none is W141 with the platforms on offer."""
    arch = arch or host_arch()
    available: list[str] = []
    for entry in entries:
        plat = entry.platform or "unknown/unknown"
        if plat.startswith("unknown/"):
            continue
        os_name, _, rest = plat.partition("/")
        if os_name == "linux" and rest.split("/")[0] == arch:
            return entry
        if plat not in available:
            available.append(plat)
    raise ManagerError("W141", f"{ref} has no image for linux/{arch} "
                       f"(available: {', '.join(available) or 'none'})")
