"""Adding from registries, then `iii worker sync | sync --frozen | verify | update` on real
projects (spec/cli.md §4.9-4.11, §10 scenarios 9-17, 34-37): installs reproduced from
iii.lock alone, drift refused without touching anything, and every failure leaving
config.yaml, iii.lock and the install folders exactly as they were."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyiii.cli.main import main
from pyiii.engine.config import load_config
from pyiii.manager.lockfile import read_lock
from pyiii.manager.registry import httpget as rhttp
from pyiii.manager.registry.cache import Cache
from pyiii.manager.registry.errors import ManagerError
from pyiii.manager.registry.firstparty import shipped_version
from pyiii.manager.registry.model import host_platform
from pyiii.manager.registry.plan import plan_registry_add
from pyiii.manager.registry.progress import Progress
from pyiii.manager.registry.resolver import Request
from pyiii.manager.registry.sources import Registries, registry_list
from pyiii.manager.transaction import Transaction
from tests.test_registry_build import build_reg, publish_worker
from tests.test_registry_fetch import LyingServer, Served, served

SHIPPED = shipped_version()
START = "workers:\n  - name: iii-state\n"


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return build_reg(root / "REG", root / "work")


@pytest.fixture
def project(tmp_path: Path, master: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """P: config.yaml declaring iii-state and a REG folder inside it; a private cache."""
    p = tmp_path / "P"
    p.mkdir()
    (p / "config.yaml").write_text(START)
    shutil.copytree(master, p / "REG")
    monkeypatch.setenv("III_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("III_REGISTRY_URL", raising=False)
    monkeypatch.delenv("III_MAX_DOWNLOAD_BYTES", raising=False)
    monkeypatch.setattr(rhttp, "RETRY_DELAYS", (0.05, 0.1))
    monkeypatch.chdir(p)
    return p


@pytest.fixture
def http_reg(project: Path) -> Iterator[Served]:
    with served(project / "REG") as s:
        yield s


def add(project: Path, *specs: str, registry: str = "./REG", exact: bool = False) -> Any:
    """What `iii worker add <registry sources>` does: one transaction, plan, commit."""
    config = load_config(project / "config.yaml")
    with Transaction(project / "config.yaml", lock_timeout=5) as txn:
        regs = Registries(registry_list([registry], config.registries, cwd=project, project_dir=project),
                          Cache(Path(os.environ["III_CACHE_DIR"])))
        requests = [Request(*s.split("@", 1)) if "@" in s else Request(s) for s in specs]
        plan = plan_registry_add(requests, config=config, lock=read_lock(project), registries=regs,
                                 project_dir=project, cache=regs.cache, progress=Progress(), stager=txn, exact=exact)
        plan.commit(txn)
    return plan


def snapshot(project: Path) -> dict[str, Any]:
    """Everything a failed command must leave alone."""
    files = {n: (project / n).read_bytes() if (project / n).exists() else None for n in ("config.yaml", "iii.lock")}
    install = project / ".iii" / "install"
    files["installs"] = sorted(str(p.relative_to(install)) for p in install.rglob("*")) if install.exists() else []
    return files


def cli(*args: str) -> int:
    return main(["worker", *args])


# --------------------------------------------------------------------------- add

def test_add_from_a_folder_registry(project: Path, capsys: Any) -> None:
    plan = add(project, "hello")
    blob = (project / "REG/packages/hello/hello-1.2.0.tar.gz").read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    assert (project / "config.yaml").read_text() == START + "  - name: hello\n    version: ^1.2.0\n"
    lock = (project / "iii.lock").read_text()
    assert f"""  hello:
    version: 1.2.0
    type: package
    dependencies:
      iii-state: "*"
    source:
      url: ./REG/packages/hello/hello-1.2.0.tar.gz
      sha256: {sha}
      size: {len(blob)}
  iii-state:
    version: {SHIPPED}
    type: builtin
    dependencies: {{}}
""" in lock
    folder = project / f".iii/install/hello/1.2.0-{sha[:12]}"
    assert json.loads((folder / ".complete").read_text()) == {"type": "package", "version": "1.2.0", "sha256": sha}
    assert (folder / "installed.txt").read_text() == "installed\n"  # the install script ran there
    assert plan.tree == ["  hello 1.2.0 (package, ./REG)", f"  └─ iii-state {SHIPPED} (first-party) for *"]
    err = capsys.readouterr().err
    assert f"downloading hello 1.2.0 ({len(blob)} B)\nok: downloaded hello 1.2.0 ({len(blob)} B)\n" in err
    assert "installing hello 1.2.0: install\n" in err
    assert [p.name for p in (project / ".iii/install/hello").iterdir()] == [folder.name]  # no staging left
    # the same request again: the pin satisfies it, nothing is written
    mtimes = [(project / n).stat().st_mtime_ns for n in ("config.yaml", "iii.lock")]
    again = add(project, "hello")
    assert again.unchanged == ["hello"] and not again.config_changes and not again.lock_changed
    assert [(project / n).stat().st_mtime_ns for n in ("config.yaml", "iii.lock")] == mtimes
    # a request the pin does not satisfy moves the worker, as npm does
    add(project, "hello@1.0.0")
    assert "    version: 1.0.0\n" in (project / "config.yaml").read_text()
    assert read_lock(project).workers["hello"].version == "1.0.0"


@pytest.mark.parametrize("spec,exact,saved,version", [
    ("hello@^1.0.0", False, "^1.0.0", "1.2.0"), ("hello@~1.0", False, "~1.0", "1.0.0"),
    ("hello@next", False, "^1.3.0-rc.1", "1.3.0-rc.1"), ("hello", True, "1.2.0", "1.2.0"),
    ("zero@^0.2.3", False, "^0.2.3", "0.2.9"), ("zero", False, "^0.3.0", "0.3.0"),
])
def test_saved_version_follows_npm(project: Path, spec: str, exact: bool, saved: str, version: str) -> None:
    add(project, spec, exact=exact)
    name = spec.split("@")[0]
    assert (project / "config.yaml").read_text().endswith(f"  - name: {name}\n    version: {saved}\n")
    assert read_lock(project).workers[name].version == version


def test_add_dependencies_are_declared(project: Path) -> None:
    add(project, "d")
    assert (project / "config.yaml").read_text() == START + (
        "  - name: d\n    version: ^1.0.0\n  - name: c  # dependency of d\n  - name: e  # dependency of d\n")
    lock = read_lock(project)
    assert {n: e.version for n, e in lock.workers.items()} == {"c": "1.3.0", "d": "1.0.0", "e": "1.1.0"}
    assert cli("verify") == 0


def test_binary_worker(project: Path) -> None:
    if host_platform() not in ("linux-x86_64", "linux-aarch64"):
        pytest.skip("the fixture publishes linux binaries")
    add(project, "ticker")
    entry = read_lock(project).workers["ticker"]
    assert entry.type == "binary" and sorted(entry.artifacts) == ["darwin-arm64", "linux-aarch64", "linux-x86_64"]
    assert entry.artifacts["darwin-arm64"].entry == "ticker" and entry.artifacts["linux-x86_64"].entry is None
    binary = project / ".iii/install/ticker" / entry.install_id(host_platform()) / "bin/ticker"
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    assert binary.read_text().startswith(f"#!/bin/sh\necho ticker {host_platform()}\n")
    assert "ticker:\n    version: 1.0.0\n    type: binary\n" in (project / "iii.lock").read_text()


def _fails(project: Path, *specs: str, registry: str = "./REG") -> ManagerError:
    before = snapshot(project)
    with pytest.raises(Exception) as info:
        add(project, *specs, registry=registry)
    assert snapshot(project) == before, "a failed add changed the project"
    assert not list((project / ".iii" / "install").glob("*/.staging-*")) if (project / ".iii/install").exists() else True
    return info.value


def test_failures_leave_everything_unchanged(project: Path, capsys: Any) -> None:
    add(project, "zero")
    err = _fails(project, "nosuch")
    assert (err.code, str(err)) == ("W110", "worker 'nosuch' was not found in any registry (searched: first-party, ./REG)")
    err = _fails(project, "hello@^3")
    assert str(err) == "no version of 'hello' satisfies '^3' (available: 1.3.0-rc.1, 1.2.0, 1.0.0)"
    err = _fails(project, "a", "b")
    assert err.code == "W112" and err.details[:2] == ["a 1.0.0 requires c ^1.0.0", "b 1.0.0 requires c ^2.0.0"]
    err = _fails(project, "zero", "nosuch")
    assert err.code == "W110"
    err = _fails(project, "iii-state@99.0.0")
    assert err.code == "W111" and f"this pyiii ships {SHIPPED}" in str(err)
    err = _fails(project, "failinst")
    assert (err.code, str(err)) == ("W160", "install script of failinst 1.0.0 failed (exit 3)")
    assert err.details == ["install-output-line"]
    err = _fails(project, "hello", registry="http://registry.example.invalid/")
    assert str(err) == "refusing http://registry.example.invalid/: plain HTTP is only allowed for loopback addresses"


def _edit_meta(project: Path, name: str, version: str, **changes: Any) -> None:
    path = project / "REG/meta" / f"{name}.json"
    meta = json.loads(path.read_text())
    target = meta["versions"][version]
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            target[section][field] = value
        else:
            target[section] = value
    path.write_text(json.dumps(meta))


def test_integrity_failures(project: Path) -> None:
    cache = Path(os.environ["III_CACHE_DIR"])
    _edit_meta(project, "hello", "1.2.0", package__sha256="0" * 64)
    err = _fails(project, "hello")
    assert err.code == "W143" and str(err).startswith("sha256 mismatch for hello 1.2.0 (")
    assert not (cache / "blobs/sha256" / ("0" * 64)).exists()
    blob = (project / "REG/packages/hello/hello-1.2.0.tar.gz").read_bytes()
    _edit_meta(project, "hello", "1.2.0", package__sha256=hashlib.sha256(blob).hexdigest(), package__size=len(blob) - 1)
    err = _fails(project, "hello")
    assert err.code == "W142" and str(err) == f"hello 1.2.0: download is larger than its declared size ({len(blob) - 1} bytes)"
    _edit_meta(project, "hello", "1.2.0", package__size=len(blob))
    os.environ["III_MAX_DOWNLOAD_BYTES"] = "100"
    try:
        err = _fails(project, "hello")
    finally:
        del os.environ["III_MAX_DOWNLOAD_BYTES"]
    assert err.code == "W142" and "over the 100 byte download limit" in str(err)
    liar = LyingServer(blob[:50], len(blob))
    _edit_meta(project, "hello", "1.2.0", package__url=liar.url)
    err = _fails(project, "hello")
    assert err.code == "W142" and str(err) == f"hello 1.2.0: download from {liar.url} was truncated (50 of {len(blob)} bytes)"
    _edit_meta(project, "hello", "1.2.0", package__url="../../outside.tar.gz")
    err = _fails(project, "hello")
    assert err.code == "W140" and str(err) == "../../outside.tar.gz points outside the registry folder"
    (project / "REG/meta/zero.json").write_text("{not json")
    err = _fails(project, "zero")
    assert err.code == "W140" and "is not valid JSON" in str(err)


def test_http_registry_failures(project: Path, http_reg: Served) -> None:
    _edit_meta(project, "hello", "1.2.0", package__url=(project / "REG/packages/hello/hello-1.2.0.tar.gz").as_uri())
    err = _fails(project, "hello", registry=http_reg.url)
    assert err.code == "W140" and "a document served over HTTP may only point to http(s):// artifacts" in str(err)
    port = http_reg.url.rsplit(":", 1)[1].strip("/")
    http_reg.proc.terminate()
    http_reg.proc.wait(10)
    err = _fails(project, "zero", registry=http_reg.url)
    assert (err.code, str(err)) == ("W140", f"cannot reach http://127.0.0.1:{port}/meta/zero.json: connection refused")


# --------------------------------------------------------------------------- sync

def _tamper(path: Path) -> None:
    """Other bytes of the same size behind a locked URL."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _clone(project: Path, name: str) -> Path:
    """A fresh folder holding only the project's config.yaml and iii.lock (a fresh clone)."""
    other = project.parent / name
    other.mkdir()
    for n in ("config.yaml", "iii.lock"):
        shutil.copy(project / n, other / n)
    return other


def test_sync_reproduces_the_install_from_the_lock(project: Path, http_reg: Served, capsys: Any) -> None:
    add(project, "hello", registry=http_reg.url)
    assert f"url: {http_reg.url}packages/hello/hello-1.2.0.tar.gz" in (project / "iii.lock").read_text()
    entry = read_lock(project).workers["hello"]
    # a second machine: another cache, only the two files; the registry has lost its documents
    other = _clone(project, "P2")
    os.environ["III_CACHE_DIR"] = str(project.parent / "cache2")
    shutil.rmtree(project / "REG/meta")
    (project / "REG/index.json").unlink()
    capsys.readouterr()
    assert cli("sync", "--offline", "-c", str(other / "config.yaml")) == 1
    assert "error: hello 1.2.0 is not in the cache and --offline forbids downloading it" in capsys.readouterr().err
    assert not (other / ".iii/install/hello").exists()
    before = len(http_reg.log)
    assert cli("sync", "-c", str(other / "config.yaml")) == 0
    err = capsys.readouterr().err
    assert "ok: synced from iii.lock: installed 1, already current 0, skipped 0" in err
    installed = other / ".iii/install/hello" / entry.install_id(host_platform())
    assert (installed / ".complete").is_file() and (installed / "installed.txt").is_file()
    assert (other / "config.yaml").read_bytes() == (project / "config.yaml").read_bytes()
    assert (other / "iii.lock").read_bytes() == (project / "iii.lock").read_bytes()
    assert [line for line in http_reg.log[before:] if "/meta/" in line or "index" in line] == []
    assert cli("sync", "-c", str(other / "config.yaml")) == 0
    assert "installed 0, already current 1" in capsys.readouterr().err
    # other bytes behind the locked URL: refused, nothing activated
    shutil.rmtree(other / ".iii/install/hello")
    shutil.rmtree(project.parent / "cache2")
    _tamper(project / "REG/packages/hello/hello-1.2.0.tar.gz")
    assert cli("sync", "-c", str(other / "config.yaml")) == 1
    assert "error: sha256 mismatch for hello 1.2.0" in capsys.readouterr().err
    assert not (other / ".iii/install/hello" / entry.install_id(host_platform())).exists()


def test_sync_refuses_drift_before_any_request(project: Path, http_reg: Served, capsys: Any) -> None:
    add(project, "hello", registry=http_reg.url)
    shutil.rmtree(project / ".iii/install")
    with open(project / "config.yaml", "a") as f:
        f.write("  - name: zero\n")
    before, snap = len(http_reg.log), snapshot(project)
    capsys.readouterr()
    assert cli("sync") == 4
    err = capsys.readouterr().err
    assert "error: config.yaml and iii.lock disagree:\n  - zero is declared in config.yaml but not locked\n" in err
    assert http_reg.log[before:] == [] and snapshot(project) == snap


def test_sync_frozen_changes_nothing(project: Path, http_reg: Served, capsys: Any) -> None:
    add(project, "hello", registry=http_reg.url)
    cache = Path(os.environ["III_CACHE_DIR"])
    other = _clone(project, "P3")
    cached = sorted(str(p) for p in cache.rglob("*"))
    capsys.readouterr()
    assert cli("sync", "--frozen", "-c", str(other / "config.yaml")) == 0
    assert "ok: iii.lock is complete and consistent with config.yaml (1 workers verified)" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml", "iii.lock"]
    assert sorted(str(p) for p in cache.rglob("*")) == cached
    assert cli("sync", "--frozen", "--offline", "-c", str(other / "config.yaml")) == 0
    assert "note: hello: not checked (offline)" in capsys.readouterr().err
    # hand-edited config.yaml: drift, exit 4, still nothing written
    config = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(config.replace("^1.2.0", "^2.0.0"))
    assert cli("sync", "--frozen", "-c", str(other / "config.yaml")) == 4
    assert "  - hello: locked 1.2.0 does not satisfy ^2.0.0" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml", "iii.lock"]
    (other / "config.yaml").write_text(config)
    _tamper(project / "REG/packages/hello/hello-1.2.0.tar.gz")
    assert cli("sync", "--frozen", "-c", str(other / "config.yaml")) == 1
    assert "sha256 mismatch for hello 1.2.0" in capsys.readouterr().err
    lock_text = (other / "iii.lock").read_text()
    (other / "iii.lock").write_text(lock_text[: lock_text.index("    source:")])
    assert cli("sync", "--frozen", "-c", str(other / "config.yaml")) == 1
    assert "error: iii.lock:5:5: workers.hello is missing 'source'" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml", "iii.lock"]
    assert sorted(str(p) for p in cache.rglob("*")) == cached


# --------------------------------------------------------------------------- verify

def test_verify(project: Path, capsys: Any) -> None:
    assert cli("verify") == 0  # only first-party workers and no iii.lock
    assert capsys.readouterr().err == "ok: config.yaml matches iii.lock\n"
    add(project, "hello")
    capsys.readouterr()
    assert cli("verify") == 0
    assert capsys.readouterr().err == "ok: config.yaml matches iii.lock\n"
    config = (project / "config.yaml").read_text()
    (project / "config.yaml").write_text(config + "  - name: zero\n")
    assert cli("verify") == 4
    assert capsys.readouterr().err == ("error: config.yaml and iii.lock disagree:\n"
                                       "  - zero is declared in config.yaml but not locked\n"
                                       "hint: `iii worker add <name>` locks a new worker; `iii worker update` re-pins\n")
    (project / "config.yaml").write_text(config.replace("^1.2.0", "^2.0.0"))
    assert cli("verify", "--json") == 4
    out = capsys.readouterr()
    assert json.loads(out.out)["error"]["code"] == "W150"
    assert "  - hello: locked 1.2.0 does not satisfy ^2.0.0\n" in out.err
    (project / "config.yaml").write_text(config.replace("  - name: iii-state\n", ""))
    assert cli("verify") == 4
    assert "  - hello 1.2.0 requires iii-state *, but iii-state is not declared in config.yaml\n" in capsys.readouterr().err
    (project / "config.yaml").write_text("workers:\n  - name: iii-state\n")
    assert cli("verify") == 0
    assert capsys.readouterr().err == ("warning: iii.lock has entries nothing declares: hello; "
                                       "the next add, remove or update prunes them\n"
                                       "ok: config.yaml matches iii.lock\n")
    (project / "iii.lock").write_text((project / "iii.lock").read_text().replace("version: 1\n", "version: 2\n", 1))
    assert cli("verify") == 1
    assert "iii.lock version 2 is not supported by pyiii" in capsys.readouterr().err


# --------------------------------------------------------------------------- update

def test_update(project: Path, tmp_path: Path, capsys: Any) -> None:
    add(project, "zero")
    add(project, "hello")
    assert read_lock(project).workers["zero"].version == "0.3.0"
    for v in ("0.3.5", "0.4.0"):
        publish_worker(project / "REG", tmp_path / "more", "zero", v)
    for v in ("1.4.0", "2.0.0"):
        publish_worker(project / "REG", tmp_path / "more", "hello", v, deps={"iii-state": "*"})
    capsys.readouterr()
    config_before = (project / "config.yaml").read_bytes()
    assert cli("update", "zero", "--registry", "./REG") == 0
    assert "zero 0.3.0 → 0.3.5\n" in capsys.readouterr().err
    assert read_lock(project).workers["zero"].version == "0.3.5"
    assert read_lock(project).workers["hello"].version == "1.2.0"  # not a target: kept
    assert (project / "config.yaml").read_bytes() == config_before
    assert cli("update", "--registry", "./REG", "--no-wait") == 0
    assert "hello 1.2.0 → 1.4.0\n" in capsys.readouterr().err  # ^1.2.0 never reaches 2.0.0
    mtime = (project / "iii.lock").stat().st_mtime_ns
    assert cli("update", "--registry", "./REG", "--no-wait") == 0
    assert capsys.readouterr().err == "ok: everything is up to date\n"
    assert (project / "iii.lock").stat().st_mtime_ns == mtime
    assert cli("update", "zero", "--latest", "--registry", "./REG", "--no-wait") == 0
    assert read_lock(project).workers["zero"].version == "0.4.0"
    assert "  - name: zero\n    version: ^0.4.0\n" in (project / "config.yaml").read_text()
    assert (project / ".iii/install/zero").is_dir()
    assert cli("update", "nosuch", "--registry", "./REG") == 1
    assert "error: no worker named 'nosuch' in config.yaml" in capsys.readouterr().err
    (project / "svc").mkdir()
    (project / "svc/iii.worker.yaml").write_text("name: svc\nversion: 0.1.0\nscripts: {start: run}\n")
    with open(project / "config.yaml", "a") as f:
        f.write("  - name: svc\n    worker_path: ./svc\n")
    assert cli("update", "svc", "--registry", "./REG") == 1
    assert "error: svc is a local worker; it has no pin" in capsys.readouterr().err


def test_reinstall_and_engine_side_install(project: Path) -> None:
    from pyiii.manager.registry.lockops import ensure_installed

    add(project, "hello")
    entry = read_lock(project).workers["hello"]
    folder = project / ".iii/install/hello" / entry.install_id(host_platform())
    (folder / "main.py").unlink()
    mtimes = [(project / n).stat().st_mtime_ns for n in ("config.yaml", "iii.lock")]
    config = load_config(project / "config.yaml")
    with Transaction(project / "config.yaml") as txn:
        regs = Registries(registry_list(["./REG"], None, cwd=project, project_dir=project),
                          Cache(Path(os.environ["III_CACHE_DIR"])))
        plan = plan_registry_add([Request("hello")], config=config, lock=read_lock(project), registries=regs,
                                 project_dir=project, cache=regs.cache, progress=Progress(), stager=txn, force=True)
        assert plan.installed == ["hello"] and not plan.config_changes and not plan.lock_changed
        plan.commit(txn)
    assert (folder / "main.py").is_file()
    assert [(project / n).stat().st_mtime_ns for n in ("config.yaml", "iii.lock")] == mtimes
    # the engine's path: a missing identity folder is installed from the lock alone
    shutil.rmtree(project / ".iii/install")
    assert ensure_installed(project, "hello", entry) == folder and (folder / ".complete").is_file()
    assert ensure_installed(project, "hello", entry) == folder  # current: nothing to do
    shutil.rmtree(project / ".iii/install")
    shutil.rmtree(Path(os.environ["III_CACHE_DIR"]))
    _tamper(project / "REG/packages/hello/hello-1.2.0.tar.gz")
    with pytest.raises(ManagerError) as info:
        ensure_installed(project, "hello", entry)
    assert info.value.code == "W143"
    assert not (project / ".iii/install").exists()


def test_image_worker_is_pinned_by_digest(project: Path, tmp_path: Path) -> None:
    from pyiii.manager.registry.publish import publish
    from tests.test_registry_build import write_worker

    digest = "sha256:" + "ab" * 32
    publish(write_worker(tmp_path / "img", "pdf", "1.0.0"), project / "REG", image=f"ghcr.io/acme/pdf@{digest}")
    add(project, "pdf")
    entry = read_lock(project).workers["pdf"]
    assert (entry.type, entry.image, entry.digest) == ("image", f"ghcr.io/acme/pdf@{digest}", digest)
    assert not (project / ".iii/install/pdf").exists()  # images are pulled by the OCI layer
    err = _fails(project, "hello", registry="./NOPE")
    assert (err.code, str(err)) == ("W140", "registry folder ./NOPE does not exist")
