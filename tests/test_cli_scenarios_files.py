"""Acceptance scenarios of spec/cli.md §10 about files and registries, checked through the `iii
worker` command itself (exit codes, quoted messages, byte-identical files): 10-17, 24, 34, 35,
38, 39. The registry-level behaviour behind them is tested in tests/test_registry_*.py; here the
command line is the unit: `main([...])` in-process where no engine is involved (fast), real
processes where two commands race.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pyiii.cli.main import main
from pyiii.manager.lockfile import read_lock
from pyiii.manager.registry.firstparty import shipped_version
from pyiii.manager.registry.model import host_platform
from tests.iii_process import III_CMD, base_env, wait_for
from tests.test_registry_build import publish_ticker, publish_worker
from tests.test_registry_cli import START, _edit_meta, _tamper, http_reg, master, project, snapshot  # noqa: F401
from tests.test_registry_fetch import Served, served, wait_log

SHIPPED = shipped_version()


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(["worker", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def unchanged(project: Path, before: dict[str, Any], name: str | None = None) -> None:
    assert snapshot(project) == before
    if name:
        assert not (project / ".iii/install" / name).exists()


# --------------------------------------------------------------------------- 10

@pytest.mark.parametrize("spec,flags,saved,version", [
    ("hello@1.0.0", (), "1.0.0", "1.0.0"), ("hello@^1.0.0", (), "^1.0.0", "1.2.0"),
    ("hello@~1.0", (), "~1.0", "1.0.0"), ("hello@next", (), "^1.3.0-rc.1", "1.3.0-rc.1"),
    ("hello", ("--exact",), "1.2.0", "1.2.0"), ("zero@^0.2.3", (), "^0.2.3", "0.2.9"),
])
def test_scenario_10_saved_versions_through_the_cli(project: Path, capsys: Any, spec: str, flags: tuple,
                                                    saved: str, version: str) -> None:
    code, _, err = cli(capsys, "add", spec, *flags, "--registry", "./REG")
    assert code == 0, err
    name = spec.split("@")[0]
    assert (project / "config.yaml").read_text() == START + f"  - name: {name}\n    version: {saved}\n"
    assert read_lock(project).workers[name].version == version


def test_scenario_10_empty_spec_and_zero_updates(project: Path, tmp_path: Path, capsys: Any) -> None:
    before = snapshot(project)
    code, _, err = cli(capsys, "add", "hello@", "--registry", "./REG")
    assert code == 2 and "error:" in err
    unchanged(project, before)
    assert cli(capsys, "add", "zero", "--registry", "./REG")[0] == 0
    assert (project / "config.yaml").read_text().endswith("  - name: zero\n    version: ^0.3.0\n")
    assert read_lock(project).workers["zero"].version == "0.3.0"
    for v in ("0.3.5", "0.4.0"):
        publish_worker(project / "REG", tmp_path / "more", "zero", v)
    code, _, err = cli(capsys, "update", "zero", "--registry", "./REG")
    assert code == 0 and "zero 0.3.0 → 0.3.5" in err
    assert read_lock(project).workers["zero"].version == "0.3.5"
    code, _, err = cli(capsys, "update", "zero", "--latest", "--registry", "./REG")
    assert code == 0 and "zero 0.3.5 → 0.4.0" in err
    assert read_lock(project).workers["zero"].version == "0.4.0"
    assert (project / "config.yaml").read_text().endswith("  - name: zero\n    version: ^0.4.0\n")


# --------------------------------------------------------------------------- 11, 12, 16

def test_scenarios_11_12_16_failures_exit_1_and_change_nothing(project: Path, capsys: Any) -> None:
    code, _, err = cli(capsys, "add", "d", "--registry", "./REG")
    assert code == 0, err
    assert (project / "config.yaml").read_text() == START + (
        "  - name: d\n    version: ^1.0.0\n  - name: c  # dependency of d\n  - name: e  # dependency of d\n")
    lock = read_lock(project)
    assert (lock.workers["c"].version, lock.workers["e"].version) == ("1.3.0", "1.1.0")
    before = snapshot(project)
    cases = [
        (("a", "b"), ["error: no single version of 'c' satisfies every worker that needs it:",
                      "  a 1.0.0 requires c ^1.0.0", "  b 1.0.0 requires c ^2.0.0"], "a"),
        (("zero", "nosuch"), ["worker 'nosuch' was not found in any registry"], "zero"),
        (("nosuch",), ["error: worker 'nosuch' was not found in any registry (searched: first-party, ./REG)"], None),
        (("hello@^3",), ["error: no version of 'hello' satisfies '^3' (available: 1.3.0-rc.1, 1.2.0, 1.0.0)"], "hello"),
        (("iii-state@99.0.0",), [f"error: 'iii-state' is a first-party worker; this pyiii ships {SHIPPED}, "
                                 "which does not satisfy '99.0.0'"], None),
        (("failinst",), ["error: install script of failinst 1.0.0 failed (exit 3)", "install-output-line"],
         "failinst"),
    ]
    for specs, messages, name in cases:
        code, out, err = cli(capsys, "add", *specs, "--registry", "./REG")
        assert code == 1, (specs, err)
        for message in messages:
            assert message in err, (specs, err)
        unchanged(project, before, name)
        assert not list((project / ".iii").rglob(".staging-*"))
    code, _, err = cli(capsys, "add", "hello")
    assert code == 1 and "error: 'hello' is not a first-party worker and no registry is configured" in err
    unchanged(project, before, "hello")


# --------------------------------------------------------------------------- 13, 14

def test_scenarios_13_14_integrity_and_url_refusals(project: Path, capsys: Any, monkeypatch: Any) -> None:
    before = snapshot(project)
    cache = Path(os.environ["III_CACHE_DIR"])
    blob = (project / "REG/packages/hello/hello-1.2.0.tar.gz").read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    _edit_meta(project, "hello", "1.2.0", package__sha256="1" * 64)
    code, _, err = cli(capsys, "add", "hello", "--registry", "./REG")
    assert code == 1 and "error: sha256 mismatch for hello 1.2.0" in err
    assert not (cache / "blobs/sha256" / ("1" * 64)).exists() and not (cache / "blobs/sha256" / sha).exists()
    unchanged(project, before, "hello")
    _edit_meta(project, "hello", "1.2.0", package__sha256=sha, package__size=len(blob) - 10)
    code, _, err = cli(capsys, "add", "hello", "--registry", "./REG")
    assert code == 1 and "larger than its declared size" in err
    unchanged(project, before, "hello")
    _edit_meta(project, "hello", "1.2.0", package__size=len(blob))
    # a package of about 2 kB (incompressible padding) against a 1000-byte limit
    publish_worker(project / "REG", project.parent / "big", "big", "1.0.0", files={"pad.txt": os.urandom(1400).hex()})
    assert 1500 < (project / "REG/packages/big/big-1.0.0.tar.gz").stat().st_size < 4000
    monkeypatch.setenv("III_MAX_DOWNLOAD_BYTES", "1000")
    code, _, err = cli(capsys, "add", "big", "--registry", "./REG")
    assert code == 1 and "over the 1000 byte download limit" in err, err
    unchanged(project, before, "big")
    monkeypatch.delenv("III_MAX_DOWNLOAD_BYTES")

    # 14: plain HTTP to a non-loopback host is refused before any name lookup
    looked_up: list[Any] = []
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: looked_up.append(a) or real(*a, **k))
    code, _, err = cli(capsys, "add", "hello", "--registry", "http://registry.example.invalid/")
    assert code == 1
    assert "error: refusing http://registry.example.invalid/: plain HTTP is only allowed for loopback addresses" in err
    assert not any("example.invalid" in str(a) for a in looked_up)
    monkeypatch.setattr(socket, "getaddrinfo", real)
    _edit_meta(project, "hello", "1.2.0", package__url="../../outside.tar.gz")
    code, _, err = cli(capsys, "add", "hello", "--registry", "./REG")
    assert code == 1 and "error: ../../outside.tar.gz points outside the registry folder" in err
    unchanged(project, before, "hello")


def test_scenario_14_http_document_pointing_to_file(project: Path, http_reg: Served, capsys: Any) -> None:
    before = snapshot(project)
    _edit_meta(project, "hello", "1.2.0", package__url=(project / "REG/packages/hello/hello-1.2.0.tar.gz").as_uri())
    code, _, err = cli(capsys, "add", "hello", "--registry", http_reg.url)
    assert code == 1 and "error:" in err
    unchanged(project, before, "hello")


# --------------------------------------------------------------------------- 15

def test_scenario_15_registry_search_order_from_the_environment(project: Path, tmp_path: Path, capsys: Any,
                                                                monkeypatch: Any) -> None:
    publish_worker(tmp_path / "REG2", tmp_path / "w2", "zero", "0.2.3")
    with served(tmp_path / "REG2") as reg2, served(project / "REG") as reg:
        monkeypatch.setenv("III_REGISTRY_URL", f"{reg2.url} {reg.url}")
        code, _, err = cli(capsys, "add", "hello", "--no-wait")
        assert code == 0, err
        assert f"url: {reg.url}packages/hello/hello-1.2.0.tar.gz" in (project / "iii.lock").read_text()
        code, _, err = cli(capsys, "add", "zero", "--no-wait")
        assert code == 0, err
        assert f"url: {reg2.url}packages/zero/zero-0.2.3.tar.gz" in (project / "iii.lock").read_text()
        wait_log(reg2, "GET /meta/hello.json 404")
        wait_log(reg, "GET /meta/hello.json 200")
        wait_log(reg2, "GET /meta/zero.json 200")
        assert not any("index.json" in line for line in reg.log + reg2.log)


# --------------------------------------------------------------------------- 17

def test_scenario_17_binary_without_this_platform(project: Path, tmp_path: Path, capsys: Any) -> None:
    plat = host_platform()
    if not plat.startswith("linux-"):
        pytest.skip("the fixture publishes linux binaries")
    code, _, err = cli(capsys, "add", "ticker", "--registry", "./REG")
    assert code == 0, err
    entry = read_lock(project).workers["ticker"]
    binary = project / ".iii/install/ticker" / entry.install_id(plat) / "bin/ticker"
    assert binary.stat().st_mode & 0o777 == 0o755
    assert sorted(entry.artifacts) == ["darwin-arm64", "linux-aarch64", "linux-x86_64"]
    other = tmp_path / "OTHER"
    publish_ticker(other, tmp_path / "tw", platforms=tuple(p for p in ("linux-x86_64", "linux-aarch64") if p != plat))
    (project / "config.yaml").write_text(START)
    (project / "iii.lock").unlink()
    before = snapshot(project)
    code, _, err = cli(capsys, "add", "ticker", "--registry", str(other))
    assert code == 1 and f"has no binary for {plat}" in err
    assert snapshot(project) == before


# --------------------------------------------------------------------------- 24

@pytest.mark.parametrize("crlf", [False, True])
def test_scenario_24_add_then_remove_restores_the_bytes(project: Path, capsys: Any, crlf: bool) -> None:
    text = ("# my project\n\nworkers:\n  - name: iii-http   # HTTP triggers\n    config:\n"
            "      port: ${HTTP_PORT:0}\n      host: \"127.0.0.1\"\n\n"
            "  - name: iii-state\n    config: {adapter: memory}\n")
    original = text.replace("\n", "\r\n") if crlf else text
    (project / "config.yaml").write_bytes(original.encode())
    code, _, err = cli(capsys, "add", "zero", "--registry", "./REG")
    assert code == 0, err
    added = (project / "config.yaml").read_bytes()
    nl = "\r\n" if crlf else "\n"
    assert added == original.encode() + f"  - name: zero{nl}    version: ^0.3.0{nl}".encode()
    code, _, err = cli(capsys, "remove", "-y", "zero")
    assert code == 0, err
    assert (project / "config.yaml").read_bytes() == original.encode()


# --------------------------------------------------------------------------- 34

def test_scenario_34_verify_only_first_party_and_local(project: Path, capsys: Any) -> None:
    (project / "svc").mkdir()
    (project / "svc/iii.worker.yaml").write_text("name: svc\nversion: 0.1.0\nscripts: {start: run}\n")
    (project / "config.yaml").write_text(START + "  - name: svc\n    worker_path: ./svc\n")
    assert not (project / "iii.lock").exists()
    code, _, err = cli(capsys, "verify")
    assert (code, err) == (0, "ok: config.yaml matches iii.lock\n")
    assert not (project / "iii.lock").exists()


# --------------------------------------------------------------------------- 35

def test_scenario_35_sync_in_place_after_clear(project: Path, http_reg: Served, capsys: Any) -> None:
    code, _, err = cli(capsys, "add", "hello", "--registry", http_reg.url)
    assert code == 0, err
    files = {n: (project / n).read_bytes() for n in ("config.yaml", "iii.lock")}
    assert cli(capsys, "clear", "-y", "hello")[0] == 0
    shutil.rmtree(project / "REG/meta")
    (project / "REG/index.json").unlink()
    code, _, err = cli(capsys, "sync")
    assert code == 0 and "ok: synced from iii.lock: installed 1, already current 0" in err, err
    # the server's request log arrives through a pipe: let the add's and this sync's GETs land first
    wait_for(lambda: sum("GET /packages/hello/" in line for line in http_reg.log) >= 2, 5, what="the GETs")
    seen = len(http_reg.log)
    code, _, err = cli(capsys, "sync")
    assert code == 0 and "installed 0, already current 1" in err
    time.sleep(0.3)  # a request would reach the log through the pipe by now
    assert http_reg.log[seen:] == []  # no request at all
    _tamper(project / "REG/packages/hello/hello-1.2.0.tar.gz")
    assert cli(capsys, "clear", "-y", "hello")[0] == 0
    code, _, err = cli(capsys, "sync")
    assert code == 1 and "error: sha256 mismatch for hello 1.2.0" in err
    with open(project / "config.yaml", "a") as f:
        f.write("  - name: zero\n")
    wait_for(lambda: sum("GET /packages/hello/" in line for line in http_reg.log) >= 3, 5, what="the GETs")
    seen = len(http_reg.log)
    code, _, err = cli(capsys, "sync")
    assert code == 4 and "zero is declared in config.yaml but not locked" in err
    assert http_reg.log[seen:] == []
    (project / "config.yaml").write_bytes(files["config.yaml"])
    assert {n: (project / n).read_bytes() for n in ("config.yaml", "iii.lock")} == files


# --------------------------------------------------------------------------- 38

def test_scenario_38_tab_indented_config(project: Path, capsys: Any) -> None:
    (project / "config.yaml").write_text("workers:\n  - name: iii-state\n\t  - name: zero\n")
    before = snapshot(project)
    code, _, err = cli(capsys, "add", "zero", "--registry", "./REG")
    assert code == 1 and "error: config.yaml:3:1:" in err, err
    unchanged(project, before, "zero")
    assert not (project / "iii.lock").exists()
    code, _, err = cli(capsys, "remove", "-y", "iii-state")
    assert code == 1 and "error: config.yaml:3:1:" in err
    unchanged(project, before)
    env = base_env(project.parent / "home")
    done = subprocess.run(III_CMD, cwd=project, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1 and "error: config.yaml:3:1:" in done.stderr
    unchanged(project, before)


# --------------------------------------------------------------------------- 39

def test_scenario_39_concurrent_registry_adds(project: Path) -> None:
    env = {**base_env(project.parent / "home"), "III_CACHE_DIR": os.environ["III_CACHE_DIR"]}
    procs = [subprocess.Popen([*III_CMD, "worker", "add", name, "--registry", "./REG"], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
             for name in ("zero", "ticker")]
    try:
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], results
    text = (project / "config.yaml").read_text()
    assert text.count("- name: zero\n") == 1 and text.count("- name: ticker\n") == 1
    lock = read_lock(project)
    assert {"zero", "ticker"} <= set(lock.workers)


# --------------------------------------------------------------------------- 8, 18, 40

def test_scenario_8_first_party_add_opens_no_connection(project: Path, capsys: Any, monkeypatch: Any) -> None:
    (project / "config.yaml").write_text("workers: []\n")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network use: {args}")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    code, _, err = cli(capsys, "add", "iii-state", "--no-wait")
    assert code == 0, err
    assert (project / "config.yaml").read_text() == "workers:\n  - name: iii-state\n"
    assert (project / "iii.lock").read_text() == (
        "# Generated by `iii worker`. Do not edit by hand; commit it with config.yaml.\nversion: 1\nworkers:\n"
        f"  iii-state:\n    version: {SHIPPED}\n    type: builtin\n    dependencies: {{}}\n")


def test_scenario_18_force_with_an_invalid_manifest(project: Path, capsys: Any) -> None:
    assert main(["worker", "init", "svc", "--language", "python"]) == 0
    manifest = project / "svc/iii.worker.yaml"
    manifest.write_text("\n".join(line for line in manifest.read_text().splitlines() if "install:" not in line) + "\n")
    code, _, err = cli(capsys, "add", "./svc")
    assert code == 0, err
    before = snapshot(project)
    code, _, err = cli(capsys, "add", "./svc")
    assert code == 0 and snapshot(project) == before
    manifest.write_text(manifest.read_text() + "foo: 1\n")
    code, _, err = cli(capsys, "add", "./svc", "--force")
    assert code == 1 and "unknown key 'foo'" in err, err
    assert snapshot(project) == before
    (project / "empty").mkdir()
    code, _, err = cli(capsys, "add", "./empty")
    assert code == 1 and "error: no iii.worker.yaml in ./empty" in err
    assert snapshot(project) == before


def test_scenario_40_recovery_then_add_zero(project: Path, capsys: Any) -> None:
    original_lock = None
    txn = project / ".iii/txn"
    txn.mkdir(parents=True)
    (txn / "config.yaml.orig").write_text(START)
    (project / "config.yaml").write_text("workers:\n  - name: half-written\n")
    (project / "iii.lock").write_text("version: 1\nworkers: {}\n")
    pid = int(subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout)
    (txn / "journal.json").write_text(json.dumps({"pid": pid, "files": [
        {"path": str(project / "config.yaml"), "backup": "config.yaml.orig"},
        {"path": str(project / "iii.lock"), "backup": original_lock}]}))
    code, _, err = cli(capsys, "add", "zero", "--registry", "./REG")
    assert code == 0, err
    assert (f"warning: restored config.yaml and iii.lock from an interrupted iii worker command (pid {pid})"
            in err)
    assert (project / "config.yaml").read_text() == START + "  - name: zero\n    version: ^0.3.0\n"
    assert set(read_lock(project).workers) == {"zero"}


def test_failed_add_in_an_empty_folder_leaves_it_empty(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    """§4.1: a missing config file is created by add, but a failed add leaves no file behind."""
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("III_REGISTRY_URL", raising=False)
    monkeypatch.setenv("III_CACHE_DIR", str(tmp_path / "cache"))
    for source in ("nosuch", "iii-state@99.0.0", "./missing"):
        code, _, err = cli(capsys, "add", source)
        assert code == 1 and "error:" in err, (source, err)
        assert list(folder.iterdir()) == [], source
