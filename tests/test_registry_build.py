"""Registry folders built by `publish` (spec/cli.md §4.13, §7.1), plus the builders the other
registry tests use: a REG like the acceptance fixture of §10 (hello, zero, a/b/c/d/e, ticker,
failinst), made by publishing real worker folders."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pyiii.cli.main import main
from pyiii.manager.manifest import ManifestError
from pyiii.manager.registry.errors import ManagerError
from pyiii.manager.registry.model import parse_document
from pyiii.manager.registry.publish import publish

PLATFORMS = ("linux-x86_64", "linux-aarch64")


def write_worker(folder: Path, name: str, version: str, *, deps: dict[str, str] | None = None,
                 install: str | None = None, files: dict[str, str] | None = None) -> Path:
    """A worker folder with a valid iii.worker.yaml (python runtime)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", f"description: the {name} worker", f"version: {version}", "runtime: python",
             "scripts:", "  start: '\"$III_PYTHON\" main.py'"]
    if install:
        lines.append(f"  install: {json.dumps(install)}")
    if deps:
        lines.append("dependencies:")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in deps.items()]
    (folder / "iii.worker.yaml").write_text("\n".join(lines) + "\n")
    (folder / "main.py").write_text(f"print('{name} {version}')\n")
    for rel, text in (files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def publish_worker(reg: Path, work: Path, name: str, version: str, **kw: Any) -> Any:
    return publish(write_worker(work / f"{name}-{version}", name, version, **kw), reg)


def ticker_tarball(path: Path) -> Path:
    data = b"#!/bin/sh\necho ticker-darwin\n"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("ticker")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(raw.getvalue())
    return path


def publish_ticker(reg: Path, work: Path, platforms: tuple[str, ...] = PLATFORMS) -> Any:
    folder = write_worker(work / "ticker", "ticker", "1.0.0")
    arts = {}
    for p in platforms:
        script = work / f"ticker-{p}"
        script.write_text(f"#!/bin/sh\necho ticker {p}\nenv\n")
        arts[p] = script
    arts["darwin-arm64"] = ticker_tarball(work / "ticker-darwin.tar.gz")
    return publish(folder, reg, artifacts=arts)


def build_reg(reg: Path, work: Path) -> Path:
    """The §10 REG: hello 1.0.0/1.2.0/1.3.0-rc.1 (latest 1.2.0, next 1.3.0-rc.1), zero 0.2.3/0.2.9/0.3.0,
    a → c ^1, b → c ^2, c 1.3.0/2.0.1, d → c ^1 + e ^1, e 1.1.0 → c >=1.2.0 <2, ticker, failinst."""
    for v in ("1.0.0", "1.2.0", "1.3.0-rc.1"):
        publish_worker(reg, work, "hello", v, deps={"iii-state": "*"}, install="echo installed > installed.txt")
    for v in ("0.2.3", "0.2.9", "0.3.0"):
        publish_worker(reg, work, "zero", v)
    publish_worker(reg, work, "a", "1.0.0", deps={"c": "^1.0.0"})
    publish_worker(reg, work, "b", "1.0.0", deps={"c": "^2.0.0"})
    for v in ("1.3.0", "2.0.1"):
        publish_worker(reg, work, "c", v)
    publish_worker(reg, work, "d", "1.0.0", deps={"c": "^1.0.0", "e": "^1"})
    publish_worker(reg, work, "e", "1.1.0", deps={"c": ">=1.2.0 <2"})
    publish_worker(reg, work, "failinst", "1.0.0", install="echo install-output-line; exit 3")
    publish_ticker(reg, work)
    return reg


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reg")
    return build_reg(root / "REG", root / "work")


# --------------------------------------------------------------------------- tests

def test_published_documents(reg: Path) -> None:
    index = json.loads((reg / "index.json").read_text())
    assert index["format"] == "pyiii-registry" and index["format_version"] == 1
    assert sorted(index["workers"]) == ["a", "b", "c", "d", "e", "failinst", "hello", "ticker", "zero"]
    assert index["workers"]["hello"]["latest"] == "1.2.0" and index["workers"]["ticker"]["type"] == "binary"
    meta = json.loads((reg / "meta" / "hello.json").read_text())
    assert meta["dist-tags"] == {"latest": "1.2.0", "next": "1.3.0-rc.1"}
    v = meta["versions"]["1.2.0"]
    assert v["type"] == "package" and v["dependencies"] == {"iii-state": "*"}
    assert v["package"]["url"] == "../packages/hello/hello-1.2.0.tar.gz"
    blob = (reg / "packages" / "hello" / "hello-1.2.0.tar.gz").read_bytes()
    assert v["package"]["sha256"] == hashlib.sha256(blob).hexdigest() and v["package"]["size"] == len(blob)
    assert v["manifest"]["description"] == "the hello worker" and v["manifest"]["runtime"] == {"language": "python"}
    doc = parse_document((reg / "meta" / "ticker.json").read_bytes(), "ticker.json", "ticker")
    arts = doc.versions["1.0.0"].artifacts
    assert sorted(arts) == ["darwin-arm64", "linux-aarch64", "linux-x86_64"]
    assert arts["darwin-arm64"].format == "tar.gz" and arts["darwin-arm64"].entry == "ticker"
    assert arts["linux-x86_64"].url == "../binaries/ticker/1.0.0/ticker-linux-x86_64" and arts["linux-x86_64"].format == "raw"
    assert (reg / "binaries/ticker/1.0.0/ticker-darwin-arm64.tar.gz").is_file()
    assert not (reg / ".lock").read_bytes()  # the publish lock file holds nothing


def test_package_is_reproducible_and_filtered(tmp_path: Path) -> None:
    folder = write_worker(tmp_path / "w", "pub", "0.1.0", files={
        "lib/util.py": "x = 1\n", "__pycache__/m.cpython-311.pyc": "junk", "lib/old.pyc": "junk",
        ".git/HEAD": "ref", "node_modules/x/index.js": "", "secret.env": "K=V", "logs/a.log": "a",
        ".iiiignore": "# local files\nsecret.env\nlogs/\n"})
    os.chmod(folder / "main.py", 0o755)
    first = publish(folder, tmp_path / "R1")
    os.utime(folder / "lib" / "util.py", (1, 1))  # mtimes never reach the archive
    second = publish(folder, tmp_path / "R2")
    assert first.sha256 == second.sha256 and first.size == second.size
    with tarfile.open(tmp_path / "R1/packages/pub/pub-0.1.0.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == [".iiiignore", "iii.worker.yaml", "lib/util.py", "main.py"]
    assert members["main.py"].mode == 0o755 and members["lib/util.py"].mode == 0o644
    assert {m.mtime for m in members.values()} == {0} and {m.uid for m in members.values()} == {0}
    gz = (tmp_path / "R1/packages/pub/pub-0.1.0.tar.gz").read_bytes()
    assert gz[4:8] == b"\0\0\0\0" and not gz[3] & 0x08  # gzip header: no time, no file name


def test_publish_refusals(tmp_path: Path, reg: Path) -> None:
    with pytest.raises(ManagerError) as info:
        publish(write_worker(tmp_path / "h", "hello", "1.2.0"), reg)
    assert info.value.code == "W140" and str(info.value) == f"hello@1.2.0 is already published in {reg}"
    assert info.value.hint == "bump version in iii.worker.yaml"
    with pytest.raises(ManagerError) as info:
        publish(write_worker(tmp_path / "s", "iii-state", "1.0.0"), tmp_path / "R")
    assert info.value.code == "W100"
    linked = write_worker(tmp_path / "l", "linked", "1.0.0")
    (linked / "link.py").symlink_to(linked / "main.py")
    with pytest.raises(ManagerError, match="cannot publish link.py: symbolic links are not allowed"):
        publish(linked, tmp_path / "R")
    noversion = tmp_path / "nv"
    noversion.mkdir()
    (noversion / "iii.worker.yaml").write_text("name: nv\nscripts: {start: run}\n")
    with pytest.raises(ManagerError, match="publish needs a semver 'version'"):
        publish(noversion, tmp_path / "R")
    (noversion / "iii.worker.yaml").write_text("name: nv\nversion: 1.0.0\nfoo: 1\nscripts: {start: run}\n")
    with pytest.raises(ManifestError, match="unknown key 'foo'"):
        publish(noversion, tmp_path / "R")
    assert not (tmp_path / "R" / "meta").exists()


def test_dist_tags_follow_the_rules(tmp_path: Path) -> None:
    r, w = tmp_path / "R", tmp_path / "w"
    assert publish_worker(r, w, "t", "1.0.0").tags == ["latest"]
    assert publish_worker(r, w, "t", "2.0.0-rc.1").tags == ["next"]
    assert publish_worker(r, w, "t", "0.9.0").tags == []  # older stable: latest stays
    assert publish(write_worker(w / "b", "t", "3.0.0-beta.1"), r, tag="beta").tags == ["beta"]
    tags = json.loads((r / "meta/t.json").read_text())["dist-tags"]
    assert tags == {"latest": "1.0.0", "next": "2.0.0-rc.1", "beta": "3.0.0-beta.1"}


def test_cli_publish_prints_the_coordinate(tmp_path: Path, capsys: Any) -> None:
    folder = write_worker(tmp_path / "pub", "pub", "0.1.0")
    assert main(["worker", "publish", str(folder), "--to", str(tmp_path / "REG3"), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out == "pub@0.1.0\n" and "would publish pub@0.1.0" in out.err
    assert not (tmp_path / "REG3").exists()
    assert main(["worker", "publish", str(folder), "--to", str(tmp_path / "REG3")]) == 0
    out = capsys.readouterr()
    assert out.out == "pub@0.1.0\n"
    meta = json.loads((tmp_path / "REG3/meta/pub.json").read_text())
    blob = (tmp_path / "REG3/packages/pub/pub-0.1.0.tar.gz").read_bytes()
    assert f"sha256: {hashlib.sha256(blob).hexdigest()}" in out.err and "tags: latest" in out.err
    assert meta["versions"]["0.1.0"]["package"]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert main(["worker", "publish", str(folder), "--to", str(tmp_path / "REG3")]) == 1
    assert "error: pub@0.1.0 is already published in" in capsys.readouterr().err
    assert main(["worker", "publish", str(folder), "--to", str(tmp_path / "REG4")]) == 0
    assert (tmp_path / "REG4/packages/pub/pub-0.1.0.tar.gz").read_bytes() == blob
    first_party = write_worker(tmp_path / "st", "iii-state", "1.0.0")
    assert main(["worker", "publish", str(first_party), "--to", str(tmp_path / "REG3")]) == 2
    assert main(["worker", "publish", str(tmp_path), "--to", str(tmp_path / "REG3")]) == 1
    assert "no iii.worker.yaml in" in capsys.readouterr().err
