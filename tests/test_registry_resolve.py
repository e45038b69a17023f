"""Resolution against a registry folder (spec/cli.md §7.2-7.4): exact picks for ranges, tags,
0.x carets and prereleases; transitive dependencies; conflicts; first-party workers offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pyiii.manager.lockfile import Lock, LockEntry
from pyiii.manager.registry.cache import Cache
from pyiii.manager.registry.errors import ManagerError
from pyiii.manager.registry.firstparty import shipped_version
from pyiii.manager.registry.model import Artifact
from pyiii.manager.registry.publish import publish
from pyiii.manager.registry.resolver import Declared, Request, Resolver
from pyiii.manager.registry.sources import Registries, registry_list
from pyiii.manager.registry.urls import registry_source
from tests.test_registry_build import build_reg, publish_worker, write_worker

SHIPPED = shipped_version()


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resolve")
    return build_reg(root / "REG", root / "work")


def registries(tmp: Path, *folders: Path) -> Registries:
    return Registries([registry_source(str(f), tmp) for f in folders], Cache(tmp / "cache"))


def pick(regs: Registries, name: str, spec: str | None, *, declared: list[Declared] = (), lock: Lock | None = None,
         update: set[str] = frozenset()) -> dict[str, str]:
    res = Resolver(regs, lock or Lock(), list(declared), update=update).resolve([Request(name, spec)])
    return {n: c.version for n, c in res.choices.items()}


TABLE = [
    ("hello", None, "1.2.0"), ("hello", "1.0.0", "1.0.0"), ("hello", "^1.0.0", "1.2.0"), ("hello", "~1.0", "1.0.0"),
    ("hello", "next", "1.3.0-rc.1"), ("hello", "latest", "1.2.0"), ("hello", "^1.3.0-rc.1", "1.3.0-rc.1"),
    ("hello", ">=1.0.0", "1.2.0"), ("hello", "1.x", "1.2.0"), ("hello", "*", "1.2.0"), ("hello", "<1.2.0", "1.0.0"),
    ("hello", "1.3.0-rc.1", "1.3.0-rc.1"), ("hello", "^1 || ^2", "1.2.0"),
    ("zero", None, "0.3.0"), ("zero", "^0.2.3", "0.2.9"), ("zero", "~0.2", "0.2.9"), ("zero", "0.2.x", "0.2.9"),
    ("zero", "^0.3", "0.3.0"), ("zero", "<0.2.9", "0.2.3"), ("zero", "^0", "0.3.0"), ("zero", "0.2.3 - 0.2.8", "0.2.3"),
    ("c", "^1", "1.3.0"), ("c", ">=1", "2.0.1"), ("c", None, "2.0.1"),
]


@pytest.mark.parametrize("name,spec,expected", TABLE)
def test_resolution_table(tmp_path: Path, reg: Path, name: str, spec: str | None, expected: str) -> None:
    assert pick(registries(tmp_path, reg), name, spec)[name] == expected


def test_latest_tag_wins_over_higher_versions(tmp_path: Path) -> None:
    r, w = tmp_path / "R", tmp_path / "w"
    for v in ("1.0.0", "2.0.0"):
        publish_worker(r, w, "x", v)
    publish(write_worker(w / "x15", "x", "1.5.0"), r, tag="latest")  # publishers keep latest behind 2.x
    regs = registries(tmp_path, r)
    assert pick(regs, "x", None)["x"] == "1.5.0"
    assert pick(regs, "x", "*")["x"] == "1.5.0"
    assert pick(regs, "x", ">=1.6")["x"] == "2.0.0"
    assert pick(regs, "x", "^1")["x"] == "1.5.0"


def test_yanked_deprecated_and_prerelease_only(tmp_path: Path, reg: Path) -> None:
    r = tmp_path / "R"
    shutil.copytree(reg, r)
    meta = json.loads((r / "meta/hello.json").read_text())
    meta["versions"]["1.2.0"]["yanked"] = "broken install script"
    meta["versions"]["1.0.0"]["deprecated"] = "use 1.2.0"
    (r / "meta/hello.json").write_text(json.dumps(meta))
    resolver = Resolver(registries(tmp_path, r), Lock(), [])
    res = resolver.resolve([Request("hello")])
    assert res.choices["hello"].version == "1.0.0"  # latest is yanked: highest stable non-yanked
    assert res.warnings == ["hello 1.0.0 is deprecated: use 1.2.0"]
    resolver = Resolver(registries(tmp_path, r), Lock(), [])
    res = resolver.resolve([Request("hello", "1.2.0")])
    assert res.choices["hello"].version == "1.2.0" and res.warnings == ["hello 1.2.0 is yanked: broken install script"]
    with pytest.raises(ManagerError) as info:
        pick(registries(tmp_path, r), "hello", "~1.2.0")
    assert info.value.code == "W111" and str(info.value) == \
        "no version of 'hello' satisfies '~1.2.0' (available: 1.3.0-rc.1, 1.2.0, 1.0.0)"
    publish(write_worker(tmp_path / "p", "pre", "1.0.0-rc.1"), r)
    with pytest.raises(ManagerError) as info:
        pick(registries(tmp_path, r), "pre", None)
    assert info.value.code == "W111" and info.value.hint == "ask for one explicitly, e.g. pre@next"
    assert pick(registries(tmp_path, r), "pre", "next")["pre"] == "1.0.0-rc.1"


def test_transitive_dependencies(tmp_path: Path, reg: Path) -> None:
    regs = registries(tmp_path, reg)
    res = Resolver(regs, Lock(), [Declared("iii-state", "builtin")]).resolve([Request("d")])
    assert {n: c.version for n, c in res.choices.items()} == {"c": "1.3.0", "d": "1.0.0", "e": "1.1.0",
                                                              "iii-state": SHIPPED}
    assert res.required_by("c") == ["d", "e"]
    assert pick(regs, "hello", None) == {"hello": "1.2.0", "iii-state": SHIPPED}
    # only the documents of names actually needed are read, never index.json
    assert sorted(Path(p).name for p in regs.fetched) == ["c.json", "d.json", "e.json", "hello.json"]


def test_conflict_names_every_constraint(tmp_path: Path, reg: Path) -> None:
    res = Resolver(registries(tmp_path, reg), Lock(), [])
    with pytest.raises(ManagerError) as info:
        res.resolve([Request("a"), Request("b")])
    err = info.value
    assert err.code == "W112"
    assert str(err) == "no single version of 'c' satisfies every worker that needs it:"
    assert err.details == ["a 1.0.0 requires c ^1.0.0", "b 1.0.0 requires c ^2.0.0", "available: 2.0.1, 1.3.0"]
    assert err.hint == "pin one of them to a version with a compatible dependency, e.g. iii worker add a@<version>"
    # a declared range conflicting with a dependency is a conflict too, with its origin
    with pytest.raises(ManagerError) as info:
        Resolver(registries(tmp_path, reg), Lock(), [Declared("c", "registry", "^2")]).resolve([Request("d")])
    assert info.value.details[:2] == ["config.yaml declares c ^2", "d 1.0.0 requires c ^1.0.0"]


def test_unknown_unsatisfiable_and_no_registry(tmp_path: Path, reg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(reg.parent)
    regs = Registries(registry_list(["./REG"], None, cwd=reg.parent, project_dir=tmp_path), Cache(tmp_path / "c"))
    with pytest.raises(ManagerError) as info:
        pick(regs, "nosuch", None)
    assert info.value.code == "W110"
    assert str(info.value) == "worker 'nosuch' was not found in any registry (searched: first-party, ./REG)"
    with pytest.raises(ManagerError) as info:
        pick(regs, "hello", "^3")
    assert (info.value.code, str(info.value)) == \
        ("W111", "no version of 'hello' satisfies '^3' (available: 1.3.0-rc.1, 1.2.0, 1.0.0)")
    with pytest.raises(ManagerError) as info:
        pick(regs, "hello", "nosuchtag")
    assert str(info.value) == "'hello' has no dist-tag 'nosuchtag' (tags: latest, next)"
    with pytest.raises(ManagerError) as info:
        pick(Registries([], Cache(tmp_path / "c")), "hello", None)
    assert info.value.code == "W140" and str(info.value) == \
        "'hello' is not a first-party worker and no registry is configured"
    assert info.value.hint == "pass --registry URL or set III_REGISTRY_URL"


def test_first_party_offline(tmp_path: Path) -> None:
    regs = Registries([], Cache(tmp_path / "never"))
    assert pick(regs, "iii-state", None) == {"iii-state": SHIPPED}
    assert pick(regs, "state", "*") == {"iii-state": SHIPPED}
    assert pick(regs, "iii-http", f"^{SHIPPED}") == {"iii-http": SHIPPED}
    with pytest.raises(ManagerError) as info:
        pick(regs, "iii-state", "99.0.0")
    assert info.value.code == "W111" and str(info.value) == \
        f"'iii-state' is a first-party worker; this pyiii ships {SHIPPED}, which does not satisfy '99.0.0'"
    assert regs.fetched == [] and not (tmp_path / "never").exists()


def test_reserved_names_never_come_from_a_registry(tmp_path: Path, reg: Path) -> None:
    r = tmp_path / "R"
    shutil.copytree(reg, r)
    (r / "meta/iii-state.json").write_text(json.dumps({"name": "iii-state", "versions": {}}))
    regs = registries(tmp_path, r)
    assert pick(regs, "hello", None)["iii-state"] == SHIPPED
    assert not any("iii-state" in p for p in regs.fetched)


def test_registry_order_first_holder_wins(tmp_path: Path, reg: Path) -> None:
    r2 = tmp_path / "REG2"
    for v in ("9.0.0",):
        publish_worker(r2, tmp_path / "w", "zero", v)
    regs = registries(tmp_path, r2, reg)
    assert pick(regs, "zero", None)["zero"] == "9.0.0"  # REG2 has zero: all its versions, no merging
    with pytest.raises(ManagerError, match=r"satisfies '\^0.2.3' \(available: 9.0.0\)"):
        pick(registries(tmp_path, r2, reg), "zero", "^0.2.3")
    assert pick(regs, "hello", None)["hello"] == "1.2.0"  # not in REG2: from REG


def test_lock_pins_kept_unless_updated(tmp_path: Path, reg: Path) -> None:
    pinned = LockEntry("1.0.0", "package", {"iii-state": "*"}, package=Artifact("./x.tar.gz", "a" * 64, 1))
    lock = Lock({"hello": pinned})
    declared = [Declared("hello", "registry", "^1.0.0")]
    regs = registries(tmp_path, reg)
    res = Resolver(regs, lock, declared).resolve()
    assert res.choices["hello"].version == "1.0.0" and res.choices["hello"].locked is pinned
    assert regs.fetched == []  # a satisfying pin needs no document
    res = Resolver(regs, lock, declared, update={"hello"}).resolve()
    assert res.choices["hello"].version == "1.2.0" and res.choices["hello"].locked is None
    # a request the pin does not satisfy re-resolves it
    res = Resolver(regs, lock, declared).resolve([Request("hello", "1.2.0")])
    assert res.choices["hello"].version == "1.2.0"


def test_dependencies_on_local_and_oci_workers(tmp_path: Path, reg: Path) -> None:
    ok = Resolver(registries(tmp_path, reg), Lock(), [Declared("c", "local", version="1.4.0")]).resolve([Request("a")])
    assert ok.choices["c"].kind == "local" and ok.choices["c"].version == "1.4.0"
    with pytest.raises(ManagerError) as info:
        Resolver(registries(tmp_path, reg), Lock(), [Declared("c", "oci", version="3.0.0")]).resolve([Request("a")])
    assert info.value.code == "W112"
    assert info.value.details == ["a 1.0.0 requires c ^1.0.0", "c is declared as a oci worker at 3.0.0",
                                  "available: 3.0.0"]
    # a local worker's manifest dependencies are constraints like any other
    res = Resolver(registries(tmp_path, reg), Lock(),
                   [Declared("svc", "local", version="0.1.0", dependencies={"zero": "~0.2.3", "state": "*"})]).resolve()
    assert {n: c.version for n, c in res.choices.items()} == {"zero": "0.2.9", "iii-state": SHIPPED}


def test_binary_needs_this_platform(tmp_path: Path, reg: Path) -> None:
    regs = registries(tmp_path, reg)
    res = Resolver(regs, Lock(), [], platform="linux-x86_64").resolve([Request("ticker")])
    assert res.choices["ticker"].info.type == "binary"
    with pytest.raises(ManagerError) as info:
        Resolver(regs, Lock(), [], platform="windows-x86_64").resolve([Request("ticker")])
    assert (info.value.code, str(info.value)) == ("W110", "'ticker' 1.0.0 has no binary for windows-x86_64 "
                                                          "(available: darwin-arm64, linux-aarch64, linux-x86_64)")
