"""The first-party index: every worker shipped inside pyiii, resolvable offline (spec/cli.md §7.2).

Built on first use from the first-party table (`pyiii.engine.firstparty`) and the manifests in
`pyiii/workers/*/iii.worker.yaml`. Each worker has exactly one version, pyiii's own expressed
as semver, and type `builtin`: nothing to download, which is why `iii worker add iii-state`
works without a network.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ruamel.yaml import YAML

from pyiii import __version__
from pyiii.engine.firstparty import FIRST_PARTY, canonical_name

from .model import VersionInfo, WorkerDocument
from .semver import from_pep440, satisfies

WORKERS_DIR = Path(__file__).resolve().parents[2] / "workers"
FIRST_PARTY_URL = "first-party"


def shipped_version() -> str:
    """pyiii's version as semver (`0.5.0rc1` → `0.5.0-rc.1`)."""
    return from_pep440(__version__)


@functools.lru_cache(maxsize=1)
def _manifests() -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in sorted(WORKERS_DIR.glob("*/iii.worker.yaml")):
        try:
            doc = YAML(typ="safe", pure=True).load(path.read_text())
        except Exception:  # noqa: BLE001 - a broken shipped manifest only loses its description
            continue
        if isinstance(doc, dict) and isinstance(doc.get("name"), str):
            found[doc["name"]] = doc
    return found


@functools.lru_cache(maxsize=None)
def first_party_document(name: str) -> WorkerDocument | None:
    """The one-version document of a first-party worker (aliases accepted), else None."""
    canon = canonical_name(name)
    if canon not in FIRST_PARTY:
        return None
    manifest = _manifests().get(canon, {})
    deps = manifest.get("dependencies") or {}
    version = shipped_version()
    info = VersionInfo(version, "builtin", {canonical_name(k): str(v) for k, v in sorted(deps.items())},
                       manifest={"description": manifest.get("description", "")})
    return WorkerDocument(canon, FIRST_PARTY_URL, str(manifest.get("description", "")),
                          {"latest": version}, {version: info})


def builtin_satisfies(spec: str) -> bool:
    """Does the shipped version satisfy `spec`? Prereleases count (a development build still
    satisfies `^0.5.0` and `*`)."""
    return satisfies(shipped_version(), spec, include_prerelease=True)
