"""npm version and range semantics (spec/cli.md §7.3), on top of the `node-semver` package.

`node-semver` (module `nodesemver`) is a port of npm's own implementation, so carets on 0.x,
x-ranges, hyphen ranges and the "prereleases only on the same x.y.z" rule behave as npm users
expect. This module adds what the spec needs on top: strict version strings (no `v`, no
surrounding spaces), dist-tag recognition, a total order that ignores build metadata, and the
PEP 440 → semver mapping used for pyiii's own version.
"""

from __future__ import annotations

import functools
import re

import nodesemver

# semver.org's official grammar: npm's parser also accepts a leading `v` or `=`, which registry
# version keys must not have (§7.1).
_STRICT = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
DIST_TAG = re.compile(r"^[a-z][a-z0-9-]*$")
_PEP440 = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?(?:\+(.+))?$")


def is_version(text: str) -> bool:
    """True for a strict semver string such as `1.2.3` or `1.3.0-rc.1+build.5`."""
    return isinstance(text, str) and _STRICT.match(text) is not None


def without_build(version: str) -> str:
    """The version with build metadata removed (it never orders versions, §7.3)."""
    return version.split("+", 1)[0]


def is_prerelease(version: str) -> bool:
    return "-" in without_build(version)


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 by semver precedence (build metadata ignored)."""
    return nodesemver.compare(without_build(a), without_build(b), False)


sort_key = functools.cmp_to_key(compare)


def newest_first(versions: list[str]) -> list[str]:
    return sorted(versions, key=sort_key, reverse=True)


def is_range(text: str) -> bool:
    """True when npm accepts `text` as a range (a plain version is a range too)."""
    if not isinstance(text, str):
        return False
    try:
        return nodesemver.valid_range(text, False) is not None
    except (ValueError, TypeError):
        return False


def is_dist_tag(text: str) -> bool:
    """A dist-tag name: lowercase word that does not also parse as a range (§7.1)."""
    return DIST_TAG.match(text) is not None and not is_range(text)


def satisfies(version: str, spec: str, *, include_prerelease: bool = False) -> bool:
    """Does `version` satisfy the npm range `spec`? An invalid range satisfies nothing."""
    try:
        return bool(nodesemver.satisfies(without_build(version), spec, False,
                                         include_prerelease=include_prerelease))
    except (ValueError, TypeError):
        return False


def is_exact(spec: str) -> bool:
    """True when the range is a single pinned version (`1.2.0`, `=1.2.0`)."""
    return is_version(spec.strip().lstrip("="))


def from_pep440(version: str) -> str:
    """pyiii's own (PEP 440) version as semver (§7.2): `0.5.0rc1` → `0.5.0-rc.1`,
    `0.5.0.dev3` → `0.5.0-dev.3`; post and local segments become build metadata."""
    m = _PEP440.match(version.strip().lower())
    if not m:
        raise ValueError(f"cannot express version {version!r} as semver")
    major, minor, patch, pre, pre_n, post, dev, local = m.groups()
    text = f"{int(major)}.{int(minor or 0)}.{int(patch or 0)}"
    pre_parts = []
    if pre:
        pre_parts += [{"a": "alpha", "b": "beta"}.get(pre, pre), str(int(pre_n))]
    if dev is not None:
        pre_parts += ["dev", str(int(dev))]
    if pre_parts:
        text += "-" + ".".join(pre_parts)
    build = []
    if post is not None:
        build += ["post", str(int(post))]
    if local:
        build += [re.sub(r"[^0-9A-Za-z-]", "-", part) for part in re.split(r"[._-]", local)]
    if build:
        text += "+" + ".".join(build)
    return text
