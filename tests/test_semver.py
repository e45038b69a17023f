"""npm range semantics of spec/cli.md §7.3: the normative table, strict versions, dist-tags,
ordering and pyiii's PEP 440 → semver mapping."""

from __future__ import annotations

import pytest

from pyiii.manager.registry import semver

# (range, version, satisfies?) — the §7.3 table, row by row, with the edges on both sides.
TABLE = [
    ("1.2.0", "1.2.0", True), ("1.2.0", "1.2.1", False), ("1.2.0", "1.2.0-rc.1", False),
    ("^1.2.3", "1.2.3", True), ("^1.2.3", "1.9.9", True), ("^1.2.3", "2.0.0", False), ("^1.2.3", "1.2.2", False),
    ("^0.2.3", "0.2.3", True), ("^0.2.3", "0.2.9", True), ("^0.2.3", "0.3.0", False), ("^0.2.3", "0.2.2", False),
    ("^0.0.3", "0.0.3", True), ("^0.0.3", "0.0.4", False),
    ("^0.2", "0.2.0", True), ("^0.2", "0.2.99", True), ("^0.2", "0.3.0", False),
    ("^0.0", "0.0.0", True), ("^0.0", "0.0.9", True), ("^0.0", "0.1.0", False),
    ("^0", "0.0.0", True), ("^0", "0.99.0", True), ("^0", "1.0.0", False),
    ("~1.2.3", "1.2.9", True), ("~1.2.3", "1.3.0", False), ("~1.2.3", "1.2.2", False),
    ("~1.2", "1.2.0", True), ("~1.2", "1.3.0", False), ("~1", "1.9.0", True), ("~1", "2.0.0", False),
    ("1.2.x", "1.2.7", True), ("1.2.x", "1.3.0", False), ("1.x", "1.9.0", True), ("1.x", "2.0.0", False),
    ("*", "3.0.0", True), ("", "3.0.0", True), ("*", "3.0.0-rc.1", False),
    (">=1.2 <2", "1.2.0", True), (">=1.2 <2", "1.99.0", True), (">=1.2 <2", "2.0.0", False), (">=1.2 <2", "1.1.9", False),
    ("1.2.3 - 2.0.0", "1.2.3", True), ("1.2.3 - 2.0.0", "2.0.0", True), ("1.2.3 - 2.0.0", "2.0.1", False),
    ("^1 || ^2", "1.0.0", True), ("^1 || ^2", "2.5.0", True), ("^1 || ^2", "3.0.0", False),
    ("^1.2.3-beta.2", "1.2.3-beta.4", True), ("^1.2.3-beta.2", "1.2.5", True),
    ("^1.2.3-beta.2", "1.2.4-beta.1", False), ("^1.2.3-beta.2", "1.2.3-beta.1", False),
    (">=1.0.0", "2.0.0-rc.1", False), (">=1.0.0", "2.0.0", True),
    ("^1.3.0-rc.1", "1.3.0-rc.1", True), ("^1.3.0-rc.1", "1.3.0", True), ("^1.3.0-rc.1", "2.0.0", False),
    ("^1.2.0", "1.2.0+build.7", True),  # build metadata never matters
]


@pytest.mark.parametrize("spec,version,expected", TABLE)
def test_range_table(spec: str, version: str, expected: bool) -> None:
    assert semver.satisfies(version, spec) is expected


def test_first_party_prereleases_count_when_asked() -> None:
    assert not semver.satisfies("0.5.0-dev.3", "*")
    assert semver.satisfies("0.5.0-dev.3", "*", include_prerelease=True)
    assert semver.satisfies("0.5.1-rc.1", "^0.5.0", include_prerelease=True)
    assert not semver.satisfies("0.6.0-rc.1", "^0.5.0", include_prerelease=True)


@pytest.mark.parametrize("text,ok", [
    ("1.2.3", True), ("0.0.0", True), ("1.3.0-rc.1", True), ("1.0.0+build.1", True), ("1.0.0-alpha.beta+exp.sha.5", True),
    ("v1.2.3", False), ("=1.2.3", False), ("1.2", False), ("01.2.3", False), ("1.2.3-", False), (" 1.2.3", False),
    ("1.2.3-01", False), ("latest", False),
])
def test_strict_versions(text: str, ok: bool) -> None:
    assert semver.is_version(text) is ok


@pytest.mark.parametrize("text,tag", [("latest", True), ("next", True), ("beta-2", True),
                                      ("x", False), ("1.2.3", False), ("^1", False), ("Latest", False), ("", False)])
def test_dist_tags(text: str, tag: bool) -> None:
    # `x` is an x-range (any version), so it is a range and never a tag name
    assert semver.is_dist_tag(text) is tag


def test_order_newest_first_ignores_build() -> None:
    versions = ["1.0.0", "1.10.0", "1.2.0", "1.3.0-rc.1", "1.3.0-rc.10", "1.3.0-rc.2", "1.3.0", "0.9.9"]
    assert semver.newest_first(versions) == ["1.10.0", "1.3.0", "1.3.0-rc.10", "1.3.0-rc.2", "1.3.0-rc.1",
                                             "1.2.0", "1.0.0", "0.9.9"]
    assert semver.compare("1.0.0+a", "1.0.0+b") == 0


@pytest.mark.parametrize("pep,expected", [
    ("0.4.0", "0.4.0"), ("0.5.0rc1", "0.5.0-rc.1"), ("0.5.0.dev3", "0.5.0-dev.3"), ("1.0", "1.0.0"),
    ("2.0.0b2", "2.0.0-beta.2"), ("1.0.0.post1", "1.0.0+post.1"), ("1.0.0+local.7", "1.0.0+local.7"),
    ("0.5.0rc1.dev2", "0.5.0-rc.1.dev.2"),
])
def test_pep440_to_semver(pep: str, expected: str) -> None:
    assert semver.from_pep440(pep) == expected
    assert semver.is_version(expected)


def test_exact_and_range_recognition() -> None:
    assert semver.is_exact("1.2.0") and semver.is_exact("=1.2.0")
    assert not semver.is_exact("^1.2.0") and not semver.is_exact("1.x")
    assert semver.is_range("^1 || ^2") and semver.is_range(">=1.2 <2") and not semver.is_range("^1.x.bad")
