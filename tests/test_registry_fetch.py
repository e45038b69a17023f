"""Registries over HTTP and the download rules (spec/cli.md §4.14, §7.2, §7.5): `iii registry
serve` as a real process, ETag revalidation, search order, URL rules, size caps, sha256,
truncated downloads, safe unpacking and progress lines."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from pyiii.manager.registry import httpget as rhttp
from pyiii.manager.registry.archive import unpack
from pyiii.manager.registry.cache import Cache
from pyiii.manager.registry.download import fetch_artifact
from pyiii.manager.registry.errors import ManagerError
from pyiii.manager.registry.model import Artifact
from pyiii.manager.registry.progress import Progress
from pyiii.manager.registry.resolver import Request, Resolver
from pyiii.manager.lockfile import Lock
from pyiii.manager.registry.sources import Registries
from pyiii.manager.registry.urls import Location, artifact_location, check_remote, registry_source
from tests.iii_process import III_CMD, free_port
from tests.test_registry_build import build_reg, publish_worker


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log: list[str] = field(default_factory=list)

    def requests(self) -> list[str]:
        return list(self.log)


@contextlib.contextmanager
def served(folder: Path, timeout: float = 15.0) -> Iterator[Served]:
    """`iii registry serve <folder> --port 0` as a real process; its request log is collected."""
    proc = subprocess.Popen([*III_CMD, "registry", "serve", str(folder), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        holder: list[str] = []
        reader = threading.Thread(target=lambda: holder.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not holder or not holder[0].startswith("http://"):
            raise RuntimeError(f"registry serve did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
        server = Served(holder[0].strip(), proc)
        threading.Thread(target=lambda: [server.log.append(line.strip()) for line in proc.stderr], daemon=True).start()
        yield server
    finally:
        proc.terminate()
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fetch")
    return build_reg(root / "REG", root / "work")


@pytest.fixture(scope="module")
def server(reg: Path) -> Iterator[Served]:
    with served(reg) as s:
        yield s


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rhttp, "RETRY_DELAYS", (0.05, 0.1))


def wait_log(server: Served, line: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in server.log and time.monotonic() < deadline:
        time.sleep(0.02)
    assert line in server.log, server.log


# --------------------------------------------------------------------------- the server

def _status(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def test_serve_only_registry_files(server: Served, reg: Path) -> None:
    status, headers, body = _status(server.url + "meta/hello.json")
    assert status == 200 and body == (reg / "meta/hello.json").read_bytes()
    assert headers["Content-Length"] == str(len(body)) and headers["Etag"] and headers["Last-Modified"]
    assert _status(server.url + "meta/hello.json", headers={"If-None-Match": headers["Etag"]})[0] == 304
    assert _status(server.url + "packages/hello/hello-1.2.0.tar.gz", "HEAD")[0] == 200
    for path in ("../config.yaml", ".lock", "meta/../.lock", "work/hello-1.0.0/main.py", "meta/", "nope.json",
                 "packages/../index.json", "%2e%2e/x"):
        assert _status(server.url + path)[0] == 404, path
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1].strip("/")))) as s:
        s.sendall(b"GET /../config.yaml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 404")
    assert _status(server.url + "index.json", "POST")[0] == 405
    wait_log(server, "POST /index.json 405")


def test_serve_refuses_a_non_registry_folder(tmp_path: Path) -> None:
    done = subprocess.run([*III_CMD, "registry", "serve", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and f"error: {tmp_path} is not a registry folder" in done.stderr


def test_http_resolution_search_order_and_etag_cache(tmp_path: Path, reg: Path, server: Served) -> None:
    reg2 = tmp_path / "REG2"
    publish_worker(reg2, tmp_path / "w", "zero", "0.2.3")
    with served(reg2) as server2:
        seen_before = len(server.log)
        cache = Cache(tmp_path / "cache")
        regs = Registries([registry_source(server2.url, tmp_path), registry_source(server.url, tmp_path)], cache)
        res = Resolver(regs, Lock(), []).resolve([Request("hello"), Request("zero")])
        assert res.choices["hello"].version == "1.2.0" and res.choices["hello"].registry.display == server.url
        assert res.choices["zero"].version == "0.2.3" and res.choices["zero"].registry.display == server2.url
        wait_log(server2, "GET /meta/zero.json 200")
        wait_log(server, "GET /meta/hello.json 200")
        assert "GET /meta/hello.json 404" in server2.log
        assert not any("index.json" in line for line in server.log[seen_before:] + server2.log)
        # a second run revalidates the cached documents: 304, same answer
        regs = Registries([registry_source(server2.url, tmp_path)], cache)
        assert Resolver(regs, Lock(), []).resolve([Request("zero")]).choices["zero"].version == "0.2.3"
        wait_log(server2, "GET /meta/zero.json 304")
        # offline: the cache alone
        regs = Registries([registry_source(server2.url, tmp_path)], cache, offline=True)
        assert Resolver(regs, Lock(), []).resolve([Request("zero")]).choices["zero"].version == "0.2.3"


# --------------------------------------------------------------------------- refusals

def test_url_rules() -> None:
    for ok in ("https://r.example/x", "http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]:8/x",
               "http://127.5.6.7/x"):
        check_remote(ok)
    with pytest.raises(ManagerError) as info:
        check_remote("http://registry.example.invalid/")
    assert info.value.code == "W140" and str(info.value) == \
        "refusing http://registry.example.invalid/: plain HTTP is only allowed for loopback addresses"
    assert info.value.hint == "use https:// or a registry folder"
    for bad in ("ftp://x/y", "http://10.0.0.1/x", "gopher://x"):
        with pytest.raises(ManagerError):
            check_remote(bad)


def test_artifact_locations(tmp_path: Path) -> None:
    folder = registry_source(str(tmp_path / "REG"), tmp_path)
    doc = folder.document("meta/hello.json")
    assert artifact_location(folder, doc, "../packages/h.tar.gz") == Location(path=(tmp_path / "REG/packages/h.tar.gz"))
    with pytest.raises(ManagerError, match=r"^\.\./\.\./outside.tar.gz points outside the registry folder$"):
        artifact_location(folder, doc, "../../outside.tar.gz")
    with pytest.raises(ManagerError, match="points outside the registry folder"):
        artifact_location(folder, doc, "file:///etc/passwd")
    web = registry_source("http://127.0.0.1:9/", tmp_path)
    wdoc = web.document("meta/hello.json")
    assert artifact_location(web, wdoc, "../packages/h.tar.gz") == Location(url="http://127.0.0.1:9/packages/h.tar.gz")
    with pytest.raises(ManagerError, match="may only point to http"):
        artifact_location(web, wdoc, "file:///etc/passwd")
    tls = registry_source("https://r.example/reg/", tmp_path)
    with pytest.raises(ManagerError, match="an https registry may not point to http://"):
        artifact_location(tls, tls.document("meta/x.json"), "http://127.0.0.1/x")


def _find(regs: Registries, name: str) -> ManagerError:
    with pytest.raises(ManagerError) as info:
        regs.find(name)
    return info.value


def test_unreachable_and_malformed_registries(tmp_path: Path, reg: Path) -> None:
    port = free_port()
    err = _find(Registries([registry_source(f"http://127.0.0.1:{port}/", tmp_path)], Cache(tmp_path / "c")), "hello")
    assert err.code == "W140" and str(err) == f"cannot reach http://127.0.0.1:{port}/meta/hello.json: connection refused"
    bad = tmp_path / "BAD"
    shutil.copytree(reg, bad)
    (bad / "meta/hello.json").write_text('{"name": "hello", "versions": {')
    with served(bad) as srv:
        err = _find(Registries([registry_source(srv.url, tmp_path)], Cache(tmp_path / "c")), "hello")
        assert err.code == "W140" and str(err).startswith(f"registry document {srv.url}meta/hello.json is not valid JSON:")
        assert not (tmp_path / "c" / "registry").exists()  # a broken document is never cached
    (bad / "meta/hello.json").write_text('{"name": "hello", "versions": {"v1.0": {}}}')
    err = _find(Registries([registry_source(str(bad), tmp_path)], Cache(tmp_path / "c")), "hello")
    assert str(err) == f"registry document {bad}/meta/hello.json is invalid: versions.v1.0: 'v1.0' is not a strict semver version"
    (bad / "meta/zero.json").write_text('{"name": "zero", "dist-tags": {"latest": "9.9.9"}, "versions": {}}')
    assert "dist-tag 'latest' names '9.9.9', which is not a published version" in str(_find(
        Registries([registry_source(str(bad), tmp_path)], Cache(tmp_path / "c")), "zero"))


# --------------------------------------------------------------------------- downloads

class LyingServer:
    """A raw HTTP server announcing more bytes than it sends (a truncated transfer)."""

    def __init__(self, body: bytes, announce: int) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/x.tar.gz"
        self.body, self.announce = body, announce
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % self.announce
                             + self.body)


def test_download_integrity(tmp_path: Path, reg: Path, server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = (reg / "packages/hello/hello-1.2.0.tar.gz").read_bytes()
    good = Artifact("x", hashlib.sha256(blob).hexdigest(), len(blob))
    cache = Cache(tmp_path / "cache")
    out = io.StringIO()
    loc = Location(url=server.url + "packages/hello/hello-1.2.0.tar.gz")
    path = fetch_artifact("hello", "1.2.0", loc, good, cache, Progress(out), limit=10**6)
    assert path == cache.blob_path(good.sha256) and path.read_bytes() == blob
    assert out.getvalue() == f"downloading hello 1.2.0 ({len(blob)} B)\nok: downloaded hello 1.2.0 ({len(blob)} B)\n"
    # cached: re-hashed, not downloaded again
    fetch_artifact("hello", "1.2.0", Location(url="http://127.0.0.1:1/never"), good, cache, Progress(out), limit=10**6)

    def fails(artifact: Artifact, location: Location = loc, limit: int = 10**6) -> ManagerError:
        with pytest.raises(ManagerError) as info:
            fetch_artifact("hello", "1.2.0", location, artifact, Cache(tmp_path / "c2"), Progress(io.StringIO()),
                           limit=limit)
        return info.value

    err = fails(Artifact("x", "0" * 64, len(blob)))
    assert err.code == "W143" and str(err) == (f"sha256 mismatch for hello 1.2.0 ({loc.url}): expected {'0' * 64}, "
                                               f"got {good.sha256}")
    assert err.hint == "the artifact changed after it was published or locked; do not trust it"
    err = fails(Artifact("x", good.sha256, len(blob) - 10))
    assert err.code == "W142" and str(err) == f"hello 1.2.0: download is larger than its declared size ({len(blob) - 10} bytes)"
    err = fails(good, limit=100)
    assert err.code == "W142" and str(err) == f"hello 1.2.0 is {len(blob)} bytes, over the 100 byte download limit"
    liar = LyingServer(blob[:100], len(blob))
    err = fails(good, Location(url=liar.url))
    assert err.code == "W142" and str(err) == f"hello 1.2.0: download from {liar.url} was truncated (100 of {len(blob)} bytes)"
    err = fails(good, Location(url=server.url + "packages/hello/nope.tar.gz"))
    assert err.code == "W142" and "answered HTTP 404" in str(err)
    # nothing half-downloaded stays in the cache
    assert not list((tmp_path / "c2" / "blobs" / "sha256").glob("*")) if (tmp_path / "c2/blobs/sha256").exists() else True
    assert list((tmp_path / "c2" / "blobs" / "tmp").iterdir()) == []


def test_progress_on_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(out, fancy=True)
    p.start("hello", "1.2.0", 2_400_000)
    p._drawn = 0  # force a redraw
    p.advance(1_200_000)
    p.finish()
    text = out.getvalue()
    assert text.startswith("\r\x1b[2Khello 1.2.0  [--------------------] 0.0/2.4 MB")
    assert "\r\x1b[2Khello 1.2.0  [##########----------] 1.2/2.4 MB" in text
    assert text.endswith("\r\x1b[2K✓ downloaded hello 1.2.0 (1.2 MB)\n")
    quiet = io.StringIO()
    p = Progress(quiet, quiet=True)
    p.start("x", "1.0.0", 10)
    p.finish()
    assert quiet.getvalue() == ""


# --------------------------------------------------------------------------- archives

def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


@pytest.mark.parametrize("member", [
    (_info("../escape"), b"x"), (_info("/abs/file"), b"x"), (_info("a/../../x"), b"x"),
    (_info("link", tarfile.SYMTYPE, "../../etc/passwd"), None), (_info("link", tarfile.SYMTYPE, "/etc/passwd"), None),
    (_info("hard", tarfile.LNKTYPE, "../outside"), None), (_info("dev", tarfile.CHRTYPE), None),
    (_info("fifo", tarfile.FIFOTYPE), None),
])
def test_unsafe_archives_are_refused(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None]) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", (_info("ok.txt"), b"fine"), member)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ManagerError) as info:
        unpack(archive, target, "bad.tar.gz")
    assert str(info.value) == f"unsafe path '{member[0].name}' in bad.tar.gz"
    assert list(target.iterdir()) == []  # checked before anything is written


def test_safe_archive_unpacks_without_special_bits(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "good.tar.gz", (_info("bin/run", mode=0o6755), b"#!/bin/sh\n"),
                   (_info("lib/a.py"), b"x = 1\n"), (_info("lib/link.py", tarfile.SYMTYPE, "a.py"), None))
    target = tmp_path / "out"
    target.mkdir()
    unpack(archive, target, "good.tar.gz")
    assert (target / "lib/link.py").read_text() == "x = 1\n"
    assert (target / "bin/run").stat().st_mode & 0o7777 == 0o755
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ManagerError, match="junk.tar.gz is not a valid tar.gz archive"):
        unpack(tmp_path / "junk.tar.gz", target, "junk.tar.gz")


class ScriptedServer:
    """Answers each connection with the next scripted raw response; records request lines."""

    def __init__(self, *responses: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.responses, self.seen = list(responses), []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while self.responses:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.seen.append(conn.recv(65536).split(b"\r\n", 1)[0].decode())
                conn.sendall(self.responses.pop(0))


def _answer(status: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode() + body


DOC = json.dumps({"name": "x", "versions": {"1.0.0": {"type": "package", "package": {
    "url": "x.tar.gz", "sha256": "a" * 64, "size": 1}}}}).encode()


def test_retries_and_redirects(tmp_path: Path) -> None:
    srv = ScriptedServer(_answer("500 Oops"), _answer("503 Busy"), _answer("200 OK", DOC))
    regs = Registries([registry_source(srv.base + "/", tmp_path)], Cache(tmp_path / "c"))
    assert list(regs.find("x").document.versions) == ["1.0.0"]
    assert srv.seen == ["GET /meta/x.json HTTP/1.1"] * 3
    srv = ScriptedServer(*[_answer("500 Oops")] * 3)
    err = _find(Registries([registry_source(srv.base + "/", tmp_path)], Cache(tmp_path / "c")), "x")
    assert (err.code, str(err)) == ("W140", f"{srv.base}/meta/x.json answered HTTP 500")
    srv = ScriptedServer(_answer("302 Found", extra="Location: /moved/x.json\r\n"), _answer("200 OK", DOC))
    assert Registries([registry_source(srv.base + "/", tmp_path)], Cache(tmp_path / "c")).find("x").document.name == "x"
    assert srv.seen == ["GET /meta/x.json HTTP/1.1", "GET /moved/x.json HTTP/1.1"]
    srv = ScriptedServer(_answer("302 Found", extra="Location: http://registry.example.invalid/x.json\r\n"))
    err = _find(Registries([registry_source(srv.base + "/", tmp_path)], Cache(tmp_path / "c")), "x")
    assert str(err) == "refusing http://registry.example.invalid/x.json: plain HTTP is only allowed for loopback addresses"
    srv = ScriptedServer(*[_answer("302 Found", extra="Location: /again\r\n")] * 6)
    err = _find(Registries([registry_source(srv.base + "/", tmp_path)], Cache(tmp_path / "c")), "x")
    assert str(err) == f"{srv.base}/meta/x.json: more than 5 redirects" and len(srv.seen) == 6
