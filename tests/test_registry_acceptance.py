"""Acceptance of the registry work item (spec/cli.md §4.1, §4.9-4.11, §4.13-4.14, §6, §7) on
points the other registry tests leave open: the exact set of paths a client requests from a
registry of many workers served over HTTP, the progress bar on a real terminal and the plain
lines without one, per-platform binaries published through the command line, every shipped
first-party worker added offline at the shipped version, and each failure leaving config.yaml,
iii.lock, `.iii/` and the download cache exactly as they were."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pyiii.cli.main import main
from pyiii.engine.firstparty import FIRST_PARTY
from pyiii.manager.lockfile import read_lock
from pyiii.manager.registry import httpget as rhttp
from pyiii.manager.registry.firstparty import shipped_version
from pyiii.manager.registry.model import host_platform
from tests.iii_process import III_CMD, base_env, free_port
from tests.test_registry_build import build_reg, publish_worker, write_worker
from tests.test_registry_fetch import LyingServer, Served, served

SHIPPED = shipped_version()
START = "workers:\n  - name: iii-state\n"
FILLERS = 40  # a registry much larger than what any one resolution touches


@pytest.fixture(scope="module")
def big_reg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The §10 REG plus 40 unrelated workers."""
    root = tmp_path_factory.mktemp("accept")
    reg = build_reg(root / "REG", root / "work")
    for i in range(FILLERS):
        publish_worker(reg, root / "work", f"filler-{i:02d}", "1.0.0")
    return reg


@pytest.fixture(scope="module")
def server(big_reg: Path) -> Iterator[Served]:
    with served(big_reg) as s:
        yield s


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "P"
    p.mkdir()
    (p / "config.yaml").write_text(START)
    monkeypatch.setenv("III_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("III_REGISTRY_URL", raising=False)
    monkeypatch.delenv("III_MAX_DOWNLOAD_BYTES", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(rhttp, "RETRY_DELAYS", (0.05, 0.1))
    monkeypatch.chdir(p)
    return p


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = main(["worker", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def new_requests(server: Served, before: int, settle: float = 0.3) -> list[str]:
    """The request lines logged after `before` (the log is written by another process)."""
    time.sleep(settle)
    return server.log[before:]


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with the bytes of its files."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def disk(project: Path) -> dict[str, Any]:
    """Everything a failed command must leave alone: both files, `.iii/` and the cache."""
    return {"config.yaml": (project / "config.yaml").read_bytes(),
            "iii.lock": (project / "iii.lock").read_bytes() if (project / "iii.lock").exists() else None,
            ".iii": tree(project / ".iii"), "cache": tree(Path(os.environ["III_CACHE_DIR"]))}


# --------------------------------------------------------------------------- scale

def test_clients_fetch_only_the_documents_they_resolve(project: Path, server: Served, capsys: Any) -> None:
    before = len(server.log)
    code, _, err = cli(capsys, "add", "d", "--registry", server.url, "--no-wait")
    assert code == 0, err
    assert sorted(new_requests(server, before)) == sorted([
        "GET /meta/d.json 200", "GET /meta/c.json 200", "GET /meta/e.json 200",
        "GET /packages/d/d-1.0.0.tar.gz 200", "GET /packages/c/c-1.3.0.tar.gz 200",
        "GET /packages/e/e-1.1.0.tar.gz 200"])
    # a worker depending on a first-party one: the first-party name is never asked for
    before = len(server.log)
    code, _, err = cli(capsys, "add", "hello", "--registry", server.url, "--no-wait")
    assert code == 0, err
    assert new_requests(server, before) == ["GET /meta/hello.json 200", "GET /packages/hello/hello-1.2.0.tar.gz 200"]
    # the same resolution in another project sharing the cache: revalidated documents, no download
    other = project.parent / "P2"
    other.mkdir()
    (other / "config.yaml").write_text(START)
    before = len(server.log)
    code, _, err = cli(capsys, "add", "d", "--registry", server.url, "--no-wait", "-c", str(other / "config.yaml"))
    assert code == 0, err
    assert sorted(new_requests(server, before)) == ["GET /meta/c.json 304", "GET /meta/d.json 304",
                                                   "GET /meta/e.json 304"]


# --------------------------------------------------------------------------- progress

def _run_on_pty(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run `iii` with stdin and stderr on a pseudo-terminal; returns (exit code, terminal text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(III_CMD + args, cwd=str(cwd), env=env, stdin=slave, stdout=subprocess.DEVNULL,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def test_progress_bar_on_a_terminal_and_plain_lines_without(project: Path, server: Served, big_reg: Path,
                                                            tmp_path: Path) -> None:
    from pyiii.manager.registry.progress import human_size

    blob = (big_reg / "packages/hello/hello-1.2.0.tar.gz").read_bytes()
    size = human_size(len(blob))
    env = base_env(tmp_path / "home", {"III_REGISTRY_URL": server.url})
    env.pop("NO_COLOR", None)
    code, text = _run_on_pty(["worker", "add", "hello", "--no-wait", "-y"], project, env)
    assert code == 0, text
    bar = f"\r\x1b[2Khello 1.2.0  [--------------------] 0.0/{len(blob) / 1e6:.1f} MB  "
    assert bar in text, repr(text)
    assert f"\r\x1b[2K✓ downloaded hello 1.2.0 ({size})\n" in text, repr(text)
    assert "downloading hello" not in text  # the plain line is for non-terminals only
    # the same download without a terminal (fresh cache and project): plain lines, no escapes
    other = tmp_path / "P2"
    other.mkdir()
    (other / "config.yaml").write_text(START)
    done = subprocess.run(III_CMD + ["worker", "add", "hello", "--no-wait"], cwd=other, capture_output=True, text=True,
                          env=base_env(tmp_path / "home2", {"III_REGISTRY_URL": server.url}), timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"downloading hello 1.2.0 ({size})\nok: downloaded hello 1.2.0 ({size})\n" in done.stderr
    assert "\x1b" not in done.stderr and "\r" not in done.stderr


# --------------------------------------------------------------------------- binaries

def test_per_platform_binaries_published_and_installed_for_this_platform(project: Path, tmp_path: Path,
                                                                         capsys: Any) -> None:
    here = host_platform()
    other = "darwin-arm64" if not here.startswith("darwin") else "linux-x86_64"
    folder = write_worker(tmp_path / "src/tool", "tool", "2.1.0")
    arts = {}
    for plat in (here, other):
        arts[plat] = tmp_path / f"tool-{plat}"
        arts[plat].write_text(f"#!/bin/sh\necho tool on {plat}\n")
    reg = tmp_path / "BIN"
    assert main(["worker", "publish", str(folder), "--to", str(reg),
                 *[a for plat, path in arts.items() for a in ("--artifact", f"{plat}={path}")]]) == 0
    out = capsys.readouterr()
    assert out.out == "tool@2.1.0\n"
    meta = json.loads((reg / "meta/tool.json").read_text())
    version = meta["versions"]["2.1.0"]
    assert version["type"] == "binary" and sorted(version["artifacts"]) == sorted([here, other])
    for plat, path in arts.items():
        art = version["artifacts"][plat]
        assert art["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and art["size"] == path.stat().st_size
        assert (reg / f"binaries/tool/2.1.0/tool-{plat}").read_bytes() == path.read_bytes()
    with served(reg) as srv:
        before = len(srv.log)
        code, _, err = cli(capsys, "add", "tool", "--registry", srv.url, "--no-wait")
        assert code == 0, err
        # only this platform's binary is downloaded
        assert new_requests(srv, before) == ["GET /meta/tool.json 200", f"GET /binaries/tool/2.1.0/tool-{here} 200"]
    entry = read_lock(project).workers["tool"]
    assert entry.type == "binary" and entry.version == "2.1.0" and sorted(entry.artifacts) == sorted([here, other])
    installed = project / ".iii/install/tool" / entry.install_id(here)
    binary = installed / "bin/tool"
    assert binary.read_text() == f"#!/bin/sh\necho tool on {here}\n" and os.access(binary, os.X_OK)
    assert subprocess.run([str(binary)], capture_output=True, text=True, timeout=10).stdout == f"tool on {here}\n"
    code, _, err = cli(capsys, "verify")
    assert code == 0, err


# --------------------------------------------------------------------------- first party

def test_every_shipped_first_party_worker_resolves_offline(project: Path, capsys: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = Path(__file__).parents[1] / "pyiii/workers"
    shipped = {line.split(":", 1)[1].strip() for p in manifests.glob("*/iii.worker.yaml")
               for line in p.read_text().splitlines() if line.startswith("name:")}
    names = sorted(FIRST_PARTY)
    assert len(shipped) >= 9 and shipped <= set(names)  # every worker the package ships is first-party
    assert {"iii-state", "iii-http", "iii-queue", "iii-cron", "iii-pubsub", "iii-stream", "iii-worker-manager",
            "iii-observability", "skills", "iii-http-functions"} <= set(names)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a first-party add opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    (project / "config.yaml").write_text("workers: []\n")
    for name in names:
        code, _, err = cli(capsys, "add", name, "--no-wait")
        assert code == 0, f"{name}: {err}"
    lock = read_lock(project)
    assert {n: (e.version, e.type, dict(e.dependencies)) for n, e in lock.workers.items()} == \
        {n: (SHIPPED, "builtin", {}) for n in names}
    config = (project / "config.yaml").read_text()
    for name in names:
        assert f"  - name: {name}\n" in config
    assert not Path(os.environ["III_CACHE_DIR"]).exists() or tree(Path(os.environ["III_CACHE_DIR"])) == {}
    code, _, err = cli(capsys, "verify")
    assert code == 0 and err.endswith("config.yaml matches iii.lock\n")
    # a range the shipped version does not meet is refused, nothing written
    before = disk(project)
    code, _, err = cli(capsys, "add", "iii-observability@^99.0.0")
    assert code == 1 and f"error: 'iii-observability' is a first-party worker; this pyiii ships {SHIPPED}, which does " \
        "not satisfy '^99.0.0'" in err
    assert disk(project) == before


# --------------------------------------------------------------------------- failures

@pytest.fixture
def broken(big_reg: Path, tmp_path: Path) -> Iterator[tuple[Path, Served]]:
    """A private copy of the registry, served, that each case may damage."""
    reg = tmp_path / "REG"
    shutil.copytree(big_reg, reg)
    with served(reg) as s:
        yield reg, s


def _set_package(reg: Path, name: str, version: str, **fields: Any) -> None:
    path = reg / "meta" / f"{name}.json"
    meta = json.loads(path.read_text())
    meta["versions"][version]["package"].update(fields)
    path.write_text(json.dumps(meta))


def test_failures_are_clear_and_change_nothing_on_disk(project: Path, broken: tuple[Path, Served],
                                                      capsys: Any) -> None:
    reg, srv = broken
    url = srv.url
    code, _, err = cli(capsys, "add", "hello", "--registry", url, "--no-wait")
    assert code == 0, err
    zero_blob = (reg / "packages/zero/zero-0.3.0.tar.gz").read_bytes()
    zero_sha = hashlib.sha256(zero_blob).hexdigest()
    zero_meta = (reg / "meta/zero.json").read_text()
    refused = free_port()

    def fails(*args: str, registry: str = url) -> str:
        before = disk(project)
        code, out, err = cli(capsys, "add", *args, "--registry", registry, "--no-wait")
        assert code == 1, err
        assert disk(project) == before, f"`add {' '.join(args)}` changed the disk"
        assert err.startswith(f"resolving {', '.join(a.split('@')[0] for a in args)}...\n"), err
        return err.split("\n", 1)[1]

    assert fails("nosuch") == (f"error: worker 'nosuch' was not found in any registry (searched: first-party, {url})\n"
                               "hint: check the name, or pass the registry that publishes it with --registry URL\n")
    assert fails("hello@^3").startswith(
        "error: no version of 'hello' satisfies '^3' (available: 1.3.0-rc.1, 1.2.0, 1.0.0)\n")
    assert fails("zero@^0.4").startswith("error: no version of 'zero' satisfies '^0.4' (available: 0.3.0, 0.2.9, 0.2.3)\n")
    assert fails("a", "b").startswith("error: no single version of 'c' satisfies every worker that needs it:\n"
                                      "  a 1.0.0 requires c ^1.0.0\n  b 1.0.0 requires c ^2.0.0\n"
                                      "  available: 2.0.1, 1.3.0\n")
    _set_package(reg, "zero", "0.3.0", sha256="0" * 64)
    dl = f"downloading zero 0.3.0 ({len(zero_blob)} B)\n"
    assert fails("zero") == (
        f"{dl}error: sha256 mismatch for zero 0.3.0 ({url}packages/zero/zero-0.3.0.tar.gz): expected {'0' * 64}, "
        f"got {zero_sha}\nhint: the artifact changed after it was published or locked; do not trust it\n")
    assert not any(k.startswith("blobs/sha256/" + "0" * 8) for k in disk(project)["cache"])
    liar = LyingServer(zero_blob[:40], len(zero_blob))
    _set_package(reg, "zero", "0.3.0", sha256=zero_sha, url=liar.url)
    assert fails("zero").startswith(
        f"{dl}error: zero 0.3.0: download from {liar.url} was truncated (40 of {len(zero_blob)} bytes)\n")
    assert fails("zero", registry=f"http://127.0.0.1:{refused}/").startswith(
        f"error: cannot reach http://127.0.0.1:{refused}/meta/zero.json: connection refused\n")
    _set_package(reg, "zero", "0.3.0", url="../packages/zero/zero-0.3.0.tar.gz")
    (reg / "meta/zero.json").write_text('{"name": "zero", "versions": {')
    assert fails("zero").startswith(f"error: registry document {url}meta/zero.json is not valid JSON:")
    (reg / "meta/zero.json").write_text(zero_meta)
    served_only = "a document served over HTTP may only point to http(s):// artifacts"
    for elsewhere, why in [((reg / "packages/zero/zero-0.3.0.tar.gz").as_uri(), served_only),
                           ("http://203.0.113.7/zero-0.3.0.tar.gz", "plain HTTP is only allowed for loopback addresses"),
                           ("ftp://127.0.0.1/zero-0.3.0.tar.gz", served_only)]:
        _set_package(reg, "zero", "0.3.0", url=elsewhere)
        assert fails("zero") == f"error: refusing {elsewhere}: {why}\nhint: use https:// or a registry folder\n"
    assert not any("203.0.113.7" in line or "ftp" in line for line in srv.log)
    (reg / "meta/zero.json").write_text(zero_meta)
    # a failure after other downloads succeeded: c and d were verified, e is not; nothing kept
    _set_package(reg, "e", "1.1.0", sha256="0" * 64)
    err = fails("d")
    assert "downloading c 1.3.0" in err and "downloading d 1.0.0" in err and "error: sha256 mismatch for e 1.1.0" in err
    # a failing install script after a good download
    err = fails("failinst")
    assert "error: install script of failinst 1.0.0 failed (exit 3)\n" in err
    # update: a new version whose artifact is damaged
    publish_worker(reg, project.parent / "more", "hello", "1.2.7", deps={"iii-state": "*"})
    _set_package(reg, "hello", "1.2.7", sha256="f" * 64)
    code, _, err = cli(capsys, "add", "zero", "--registry", url, "--no-wait")  # a second, healthy worker
    assert code == 0, err
    before = disk(project)
    code, _, err = cli(capsys, "update", "--registry", url, "--no-wait")
    assert code == 1 and "error: sha256 mismatch for hello 1.2.7" in err
    assert disk(project) == before
    assert read_lock(project).workers["hello"].version == "1.2.0"


# --------------------------------------------------------------------------- the scenarios over HTTP

def _lock_names(project: Path) -> list[str]:
    return [line[2:-2] for line in (project / "iii.lock").read_text().splitlines(keepends=True)
            if line.startswith("  ") and not line.startswith("   ")]


def test_scenarios_over_http(project: Path, broken: tuple[Path, Served], tmp_path: Path, capsys: Any) -> None:
    reg, srv = broken
    url = srv.url
    # pinning with @, a 0.x caret range, prereleases only when asked, a dependency chain
    code, _, err = cli(capsys, "add", "hello@1.0.0", "zero@^0.2", "d", "--registry", url, "--no-wait")
    assert code == 0, err
    pins = {n: e.version for n, e in read_lock(project).workers.items()}
    assert pins == {"c": "1.3.0", "d": "1.0.0", "e": "1.1.0", "hello": "1.0.0", "iii-state": SHIPPED, "zero": "0.2.9"}
    assert (project / "config.yaml").read_text() == START + (
        "  - name: hello\n    version: 1.0.0\n  - name: zero\n    version: ^0.2\n  - name: d\n    version: ^1.0.0\n"
        "  - name: c  # dependency of d\n  - name: e  # dependency of d\n")
    assert _lock_names(project) == sorted(pins)  # sorted
    assert (project / "iii.lock").read_text().startswith("# Generated by `iii worker`.") and \
        "version: 1\nworkers:\n" in (project / "iii.lock").read_text()
    assert [p.name for p in project.iterdir() if p.name.startswith(".") and p.name != ".iii"] == []  # no temp files
    # a range wider than the prerelease: the stable version; the prerelease when asked for
    code, _, err = cli(capsys, "add", "hello@^1.1.0", "--registry", url, "--no-wait")
    assert code == 0 and read_lock(project).workers["hello"].version == "1.2.0", err
    code, _, err = cli(capsys, "add", "hello@^1.3.0-rc.1", "--registry", url, "--no-wait")
    assert code == 0 and read_lock(project).workers["hello"].version == "1.3.0-rc.1", err
    code, _, err = cli(capsys, "add", "hello@~1.2", "--registry", url, "--no-wait")
    assert code == 0 and read_lock(project).workers["hello"].version == "1.2.0", err
    # update within the declared ranges, from newer versions published into the served folder
    for name, v in (("zero", "0.2.12"), ("zero", "0.3.7"), ("hello", "1.2.5"), ("hello", "2.0.0"), ("c", "1.9.0"),
                    ("c", "2.5.0")):
        publish_worker(reg, tmp_path / "more", name, v)
    code, _, err = cli(capsys, "update", "--registry", url, "--no-wait")
    assert code == 0, err
    for line in ("zero 0.2.9 → 0.2.12\n", "hello 1.2.0 → 1.2.5\n", "c 1.3.0 → 1.9.0\n"):
        assert line in err
    pins = {n: e.version for n, e in read_lock(project).workers.items()}
    assert pins == {"c": "1.9.0", "d": "1.0.0", "e": "1.1.0", "hello": "1.2.5", "iii-state": SHIPPED, "zero": "0.2.12"}
    code, _, err = cli(capsys, "verify")
    assert (code, err) == (0, "ok: config.yaml matches iii.lock\n")
    # a second project folder with only config.yaml and iii.lock, another cache: the same install
    other = tmp_path / "CLONE"
    other.mkdir()
    for n in ("config.yaml", "iii.lock"):
        shutil.copy(project / n, other / n)
    os.environ["III_CACHE_DIR"] = str(tmp_path / "cache-clone")
    before = len(srv.log)
    code, _, err = cli(capsys, "sync", "-c", str(other / "config.yaml"))
    assert code == 0 and "ok: synced from iii.lock: installed 5, already current 0, skipped 0" in err, err
    assert not [line for line in new_requests(srv, before) if "/meta/" in line or "index.json" in line]
    locked = {n: e.install_id(host_platform()) for n, e in read_lock(other).workers.items() if e.type != "builtin"}
    assert sorted(f"{p.parent.name}/{p.name}" for p in (other / ".iii/install").glob("*/*")) == \
        sorted(f"{n}/{i}" for n, i in locked.items())
    for n, ident in locked.items():
        assert tree(other / ".iii/install" / n / ident) == tree(project / ".iii/install" / n / ident)
    for n in ("config.yaml", "iii.lock"):
        assert (other / n).read_bytes() == (project / n).read_bytes()
    # sync --frozen: a hand-edited config.yaml is drift (exit 4) and nothing is written
    code, _, err = cli(capsys, "sync", "--frozen", "-c", str(other / "config.yaml"))
    assert code == 0 and "ok: iii.lock is complete and consistent with config.yaml (5 workers verified)" in err, err
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("version: ^0.2\n", "version: ^0.3\n"))
    frozen = tree(other), tree(tmp_path / "cache-clone")
    code, _, err = cli(capsys, "sync", "--frozen", "-c", str(other / "config.yaml"))
    assert code == 4 and "error: config.yaml and iii.lock disagree:\n  - zero: locked 0.2.12 does not satisfy ^0.3\n" in err
    assert (tree(other), tree(tmp_path / "cache-clone")) == frozen
    code, _, err = cli(capsys, "verify", "-c", str(other / "config.yaml"))
    assert code == 4 and err == ("error: config.yaml and iii.lock disagree:\n"
                                 "  - zero: locked 0.2.12 does not satisfy ^0.3\n"
                                 "hint: `iii worker add <name>` locks a new worker; `iii worker update` re-pins\n")
    # reinstall downloads again with the same pins; clear removes the downloaded artifacts
    lock_before = (project / "iii.lock").read_bytes()
    before = len(srv.log)
    code, _, err = cli(capsys, "reinstall", "zero", "--registry", url, "--no-wait")
    assert code == 0, err
    assert "GET /packages/zero/zero-0.2.12.tar.gz 200" in new_requests(srv, before)
    assert (project / "iii.lock").read_bytes() == lock_before
    assert (project / ".iii/install/zero").is_dir()
    code, _, err = cli(capsys, "clear", "zero", "-y")
    assert code == 0, err
    assert not (project / ".iii/install/zero").exists() and (project / ".iii/install/hello").is_dir()
    assert (project / "iii.lock").read_bytes() == lock_before
