"""OCI image workers end to end (spec/cli.md §4.1, §6, §9.6, §10 scenarios 19-21): a small
distribution registry served by the test (aiohttp on 127.0.0.1, with a Bearer-token challenge),
images built here from tar.gz layers, `iii worker add <ref>` as a real process, and an engine
running the image in a bubblewrap sandbox whose root is the image.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pyiii.manager.lockfile import parse_lock
from pyiii.manager.oci.manifests import host_arch
from pyiii.manager.oci.store import cache_entries
from pyiii.manager.registry.cache import Cache
from pyiii.manager.sandbox import probe
from tests.iii_process import IIIProcs, free_port, iii_procs, manager_config, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(90)
PROBE = probe()
needs_ns = pytest.mark.skipif(not PROBE.available, reason=f"[ns] {PROBE.reason}")
ARCH = host_arch()
OTHER = "arm64" if ARCH != "arm64" else "amd64"
TOKEN = "t0ken-for-tests"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_gz(entries: list[tuple[str, Any]]) -> bytes:
    """A gzip layer; an entry is (name, bytes) for a file, (name, None) for a folder,
    (name, ("symlink", target)) or (name, ("exec", bytes)) for an executable."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, value in entries:
            info = tarfile.TarInfo(name)
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, tuple) and value[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
                tar.addfile(info)
            else:
                data = value[1] if isinstance(value, tuple) else value
                info.size, info.mode = len(data), 0o755 if isinstance(value, tuple) else 0o644
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass
class Registry:
    """A registry serving blobs and manifests from memory; ``requests`` records (path, auth)."""

    auth: str = "bearer"  # bearer | basic
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    tampered: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes served instead
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0
    token_ok: bool = True  # False: tokens are handed out but never accepted

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blob(self, data: bytes) -> dict[str, Any]:
        digest = sha(data)
        self.blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    def manifest(self, repo: str, layers: list[bytes], run: dict[str, Any], arch: str = ARCH) -> dict[str, Any]:
        """Store an image manifest (and its config and layers); returns its index descriptor."""
        config = json.dumps({"architecture": arch, "os": "linux", "config": run,
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **self.blob(config)},
               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **self.blob(layer)}
                          for layer in layers]}
        body = json.dumps(doc).encode()
        self.manifests[(repo, sha(body))] = (body, OCI_MANIFEST)
        return {"mediaType": OCI_MANIFEST, "digest": sha(body), "size": len(body),
                "platform": {"os": "linux", "architecture": arch}}

    def index(self, repo: str, tag: str, entries: list[dict[str, Any]]) -> str:
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
        self.manifests[(repo, sha(body))] = self.manifests[(repo, tag)] = (body, OCI_INDEX)
        return sha(body)

    def _denied(self, request: web.Request, repo: str) -> web.Response | None:
        given = request.headers.get("Authorization")
        if self.auth == "bearer" and given == f"Bearer {TOKEN}" and self.token_ok:
            return None
        challenge = (f'Bearer realm="http://{self.host}/token",service="test-registry",'
                     f'scope="repository:{repo}:pull"' if self.auth == "bearer" else 'Basic realm="private"')
        return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                 headers={"WWW-Authenticate": challenge})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path_qs, request.headers.get("Authorization")))
        if request.path == "/token":
            assert request.query["service"] == "test-registry"
            return web.json_response({"token": TOKEN})
        m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$", request.path)
        if m is None:
            return web.json_response({}, status=404)
        repo, kind, ref = m.groups()
        denied = self._denied(request, repo)
        if denied is not None:
            return denied
        if kind == "blobs":
            if ref not in self.blobs:
                return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
            return web.Response(body=self.tampered.get(ref, self.blobs[ref]))
        found = self.manifests.get((repo, ref))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        body, media = found
        return web.Response(body=body, headers={"Content-Type": media, "Docker-Content-Digest": sha(body)})


@pytest.fixture
def registry():
    reg = Registry(port=free_port())
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", reg.handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", reg.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield reg
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def host_shell_layer(*programs: str) -> bytes:
    """/bin/sh of this machine (and ``programs``, found on PATH, put in /bin) with the shared
    libraries they load (per ldd), so the image's root can run them without the host."""
    files = {}
    for program in ("sh", *programs):
        real = os.path.realpath(shutil.which(program) or program)
        files[f"bin/{program}"] = real
        for line in subprocess.run(["ldd", real], capture_output=True, text=True, check=True).stdout.splitlines():
            for path in re.findall(r"(/\S+)", line):
                if os.path.isfile(path):
                    files[path.lstrip("/")] = os.path.realpath(path)
    return tar_gz([(name, ("exec", Path(real).read_bytes())) for name, real in sorted(files.items())])


SCRIPT = ('echo hi; echo "cwd=$(pwd)"; echo "args=$0 $1"; echo "name=$III_WORKER_NAME"; '
          'echo "url=$III_URL"; echo "work=$III_WORK_DIR home=$HOME"; echo "greeting=$GREETING"; '
          'echo saved > /iii/data/out.txt; if (: > /app/x) 2>/dev/null; then echo root=writable; '
          'else echo root=read-only; fi; read line < /app/new.txt; echo "file=$line"; test -e /app/old.txt || echo old=gone')


def echo_image(reg: Registry, tag: str = "1.0") -> str:
    """Scenario 19's image: a lower layer with app/old.txt, an upper one deleting it and adding
    app/new.txt, for this machine and for another architecture, plus an attestation entry."""
    lower = tar_gz([("app", None), ("app/old.txt", b"old\n"), ("etc", None),
                    ("etc/resolv.conf", ("symlink", "/run/systemd/resolve/stub-resolv.conf"))])
    upper = tar_gz([("app/.wh.old.txt", b""), ("app/new.txt", b"new\n")])
    run = {"Entrypoint": ["/bin/sh", "-c", SCRIPT, "echo"], "Cmd": ["--flag"], "WorkingDir": "/app",
           "Env": ["PATH=/bin", "GREETING=from-image"], "User": "1000"}
    mine = reg.manifest("demo/echo", [host_shell_layer(), lower, upper], run)
    other = reg.manifest("demo/echo", [tar_gz([("other-arch", b"x")])], run, arch=OTHER)
    attestation = {"mediaType": OCI_MANIFEST, **reg.blob(b"{}"),
                   "platform": {"os": "unknown", "architecture": "unknown"}}
    return reg.index("demo/echo", tag, [mine, other, attestation])


def snapshot(project: Path) -> dict[str, bytes | None]:
    return {n: (project / n).read_bytes() if (project / n).exists() else None for n in ("config.yaml", "iii.lock")}


def new_project(procs: IIIProcs) -> Path:
    return procs.project("p", manager_config(free_port()))


def test_add_pins_the_index_digest_and_unpacks_the_host_image(iii_procs, registry):
    """Scenario 19 (engine down)."""
    digest = echo_image(registry)
    project = new_project(iii_procs)
    before = (project / "config.yaml").read_text()
    ref = f"{registry.host}/demo/echo:1.0"
    r = iii_procs.run("worker", "add", ref, cwd=project)
    assert r.returncode == 0, r.stderr
    assert f"ok: added echo 1.0 to config.yaml and iii.lock" in r.stderr
    assert "note: the engine is not running; `iii` will start echo" in r.stderr
    assert (project / "config.yaml").read_text() == before + f"  - name: echo\n    image: {ref}\n"
    lock = parse_lock((project / "iii.lock").read_text())
    entry = lock.workers["echo"]
    assert (entry.version, entry.type, entry.image, entry.digest, entry.dependencies) == (
        "1.0", "image", ref, digest, {})
    assert f'      digest: "{digest}"\n' in (project / "iii.lock").read_text()

    paths = [p for p, _ in registry.requests]
    assert registry.requests[0] == ("/v2/demo/echo/manifests/1.0", None)  # answered 401
    assert paths[1].startswith("/token?") and "scope=repository%3Ademo%2Fecho%3Apull" in paths[1]
    assert all(auth == f"Bearer {TOKEN}" for p, auth in registry.requests[2:])
    index = json.loads(registry.manifests[("demo/echo", "1.0")][0])
    mine, other = index["manifests"][0]["digest"], index["manifests"][1]["digest"]
    assert f"/v2/demo/echo/manifests/{mine}" in paths and f"/v2/demo/echo/manifests/{other}" not in paths
    other_layer = json.loads(registry.manifests[("demo/echo", other)][0])["layers"][0]["digest"]
    assert f"/v2/demo/echo/blobs/{other_layer}" not in paths
    assert sum(1 for p in paths if "/blobs/" in p) == 4  # config and the three host layers

    cache = Path(iii_procs.env["III_CACHE_DIR"])
    root = cache / "oci" / "rootfs" / digest[7:]
    assert (root / "app" / "new.txt").read_text() == "new\n"
    assert not (root / "app" / "old.txt").exists() and not (root / "app" / ".wh.old.txt").exists()
    assert not (root / "other-arch").exists()
    assert json.loads((cache / "oci" / "rootfs" / f"{digest[7:]}.json").read_text())["config"]["config"][
        "WorkingDir"] == "/app"
    assert (cache / "blobs" / "sha256" / digest[7:]).is_file()
    assert not list((cache / "oci" / "rootfs").glob("*.partial"))

    again = iii_procs.run("worker", "add", ref, cwd=project)  # idempotent: cached, nothing written
    assert again.returncode == 0 and "ok: echo 1.0 is already installed" in again.stderr
    assert len(registry.requests) == len(paths)


def failing(procs: IIIProcs, project: Path, ref: str) -> subprocess.CompletedProcess[str]:
    before = snapshot(project)
    r = procs.run("worker", "add", ref, cwd=project)
    assert r.returncode == 1, r.stderr
    assert snapshot(project) == before
    return r


def test_failed_adds_leave_both_files_unchanged(iii_procs, registry):
    """Scenario 20: unknown tag, no image for this platform, altered bytes, unsafe layer."""
    echo_image(registry)
    project = new_project(iii_procs)
    iii_procs.run("worker", "add", "iii-state", cwd=project)  # the lock exists beforehand too
    ref = f"{registry.host}/demo/echo"
    r = failing(iii_procs, project, f"{ref}:9.9")
    assert f"error: {ref}:9.9 was not found on {registry.host}" in r.stderr

    other = registry.manifest("demo/echo", [tar_gz([("x", b"x")])], {"Cmd": ["/x"]}, arch="s390x")
    registry.index("demo/echo", "s390x", [other])
    r = failing(iii_procs, project, f"{ref}:s390x")
    assert f"error: {ref}:s390x has no image for linux/{ARCH} (available: linux/s390x)" in r.stderr

    layer = tar_gz([("app/data.txt", b"real\n")])
    registry.index("demo/echo", "bad", [registry.manifest("demo/echo", [layer], {"Cmd": ["/x"]})])
    registry.tampered[sha(layer)] = tar_gz([("app/data.txt", b"evil\n")])
    r = failing(iii_procs, project, f"{ref}:bad")
    assert f"error: digest mismatch for {ref}:bad: expected {sha(layer)}, got " in r.stderr
    assert not (Path(iii_procs.env["III_CACHE_DIR"]) / "blobs" / "sha256" / sha(layer)[7:]).exists()

    escape = tar_gz([("app", None), ("app/../../escape", b"x")])
    registry.index("demo/echo", "escape", [registry.manifest("demo/echo", [escape], {"Cmd": ["/x"]})])
    r = failing(iii_procs, project, f"{ref}:escape")
    assert "unsafe path 'app/../../escape'" in r.stderr
    assert not (iii_procs.root / "escape").exists()
    assert not list((Path(iii_procs.env["III_CACHE_DIR"]) / "oci" / "rootfs").glob("*.partial"))

    r = iii_procs.run("worker", "add", "--json", f"{ref}:9.9", cwd=project)
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "W110"


def test_credentials_and_bad_references_are_refused(iii_procs, registry):
    registry.auth = "basic"
    echo_image(registry)
    project = new_project(iii_procs)
    r = failing(iii_procs, project, f"{registry.host}/demo/echo:1.0")
    assert (f"error: {registry.host} requires credentials for demo/echo; pyiii pulls public images only"
            in r.stderr)
    r = iii_procs.run("worker", "add", "--json", f"{registry.host}/demo/echo:1.0", cwd=project)
    assert json.loads(r.stdout)["error"]["code"] == "W141"
    registry.auth, registry.token_ok = "bearer", False
    registry.requests.clear()
    r = failing(iii_procs, project, f"{registry.host}/demo/echo:1.0")
    assert "requires credentials for demo/echo" in r.stderr
    assert [(p.split("?")[0], auth) for p, auth in registry.requests] == [
        ("/v2/demo/echo/manifests/1.0", None), ("/token", None),
        ("/v2/demo/echo/manifests/1.0", f"Bearer {TOKEN}")]  # the refused token is not retried
    r = iii_procs.run("worker", "add", f"{registry.host}/Demo/echo", cwd=project)
    assert r.returncode == 2 and "invalid image reference" in r.stderr
    r = iii_procs.run("worker", "add", "--isolation", "process", f"{registry.host}/demo/echo:1.0", cwd=project)
    assert r.returncode == 1 and "OCI image workers need namespace isolation" in r.stderr
    assert not (project / "iii.lock").exists()


@needs_ns
def test_engine_runs_the_image_in_its_own_root(iii_procs, registry):
    """Scenario 21: after 19, `iii` runs echo in a sandbox whose root is the image."""
    echo_image(registry)
    project = new_project(iii_procs)
    ref = f"{registry.host}/demo/echo:1.0"
    assert iii_procs.run("worker", "add", ref, cwd=project).returncode == 0
    shutil.rmtree(Path(iii_procs.env["III_CACHE_DIR"]) / "oci")  # the engine pulls it again by digest
    engine = iii_procs.engine(project)
    url = engine.wait_ready()
    log = project / ".iii" / "logs" / "echo.log"
    wait_for(lambda: log.exists() and "old=gone" in log.read_text(), 20, what="echo's output")
    r = iii_procs.run("worker", "logs", "echo", cwd=project)
    lines = r.stdout.splitlines()
    port = url.rsplit(":", 1)[1]
    for expected in ("hi", "cwd=/app", "args=echo --flag", "name=echo", f"url=ws://127.0.0.1:{port}",
                     "work=/iii/data home=/iii/data", "greeting=from-image", "root=read-only", "file=new",
                     "old=gone"):
        assert expected in lines, (expected, lines)
    assert any("installing echo 1.0" in line for line in lines)
    assert any("note: the image's User '1000' is not applied" in line for line in lines)
    assert (project / "data" / "managed" / "echo" / "out.txt").read_text() == "saved\n"
    digest = parse_lock((project / "iii.lock").read_text()).workers["echo"].digest
    install = project / ".iii" / "install" / "echo" / f"oci-{digest[7:19]}"
    assert install.is_dir()
    status = iii_procs.run("worker", "status", "echo", "--json", cwd=project)
    doc = json.loads(status.stdout)
    assert (doc["kind"], doc["type"], doc["version"], doc["isolation"], doc["rootfs"], doc["reason"]) == (
        "oci", "image", "1.0", "namespace", "read-only", None)
    assert Path(doc["install_path"]) == install.resolve()


def test_without_bubblewrap_the_image_worker_fails(iii_procs, registry):
    """Scenario 21, second half: no bwrap → echo `failed` naming bubblewrap; the engine serves on."""
    echo_image(registry)
    project = new_project(iii_procs)
    assert iii_procs.run("worker", "add", f"{registry.host}/demo/echo:1.0", cwd=project).returncode == 0
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not os.path.exists(os.path.join(p, "bwrap")))
    engine = iii_procs.engine(project, env={"PATH": path, "III_BWRAP": None})
    engine.wait_ready()
    env = {"PATH": path}

    def failed() -> dict[str, Any] | None:
        r = iii_procs.run("worker", "status", "echo", "--json", cwd=project, env=env)
        doc = json.loads(r.stdout) if r.stdout else {}
        return doc if doc.get("state") == "failed" else None

    doc = wait_for(failed, 20, 0.3, "echo failed")
    assert doc["reason"] == "OCI image workers need namespace isolation: bubblewrap not found"
    r = iii_procs.run("worker", "list", cwd=project, env=env)
    assert r.returncode == 0 and re.search(r"^echo\s+image\s+1\.0\s+failed\s", r.stdout, re.M), r.stdout


WORKER_YAML = b"""name: pdf
description: PDF tools in an image
runtime: {language: binary}
env: {MODE: from-manifest}
dependencies: {state: "*"}
resources: {memory: 256}
"""


def test_image_manifest_dependencies_and_version_label(iii_procs, registry):
    """An image with /iii/iii.worker.yaml: validated, its dependencies declared and locked; the
    version label becomes the locked version; an invalid one fails the add."""
    run = {"Cmd": ["/bin/pdf"], "Labels": {"org.opencontainers.image.version": "2.3.4"}}
    good = tar_gz([("iii", None), ("iii/iii.worker.yaml", WORKER_YAML)])
    registry.index("acme/pdf", "latest", [registry.manifest("acme/pdf", [good], run)])
    project = new_project(iii_procs)
    r = iii_procs.run("worker", "add", f"{registry.host}/acme/pdf", cwd=project)
    assert r.returncode == 0, r.stderr
    assert "ok: added pdf 2.3.4 to config.yaml and iii.lock" in r.stderr
    text = (project / "config.yaml").read_text()
    assert text.endswith(f"  - name: pdf\n    image: {registry.host}/acme/pdf\n"
                         "  - name: iii-state  # dependency of pdf\n"), text
    lock = parse_lock((project / "iii.lock").read_text())
    assert (lock.workers["pdf"].version, lock.workers["pdf"].dependencies) == ("2.3.4", {"iii-state": "*"})
    assert lock.workers["iii-state"].type == "builtin"

    bad = tar_gz([("iii", None), ("iii/iii.worker.yaml", b"name: pdf\nrunme: x\n")])
    registry.index("acme/pdf", "bad", [registry.manifest("acme/pdf", [bad], run)])
    before = snapshot(project)
    r = iii_procs.run("worker", "add", "--name", "other", f"{registry.host}/acme/pdf:bad", cwd=project)
    assert r.returncode == 1 and snapshot(project) == before
    assert "unknown key 'runme' in iii.worker.yaml" in r.stderr
    r = failing(iii_procs, project, f"{registry.host}/acme/pdf:latest")  # same name, another reference
    assert f"error: a worker named 'pdf' is already declared (oci: {registry.host}/acme/pdf)" in r.stderr
    r = iii_procs.run("worker", "add", "--name", "pdf2", f"{registry.host}/acme/pdf:latest", cwd=project)
    assert r.returncode == 0 and "ok: added pdf2 2.3.4" in r.stderr


def test_sync_and_reinstall_fetch_the_locked_digest(iii_procs, registry):
    digest = echo_image(registry)
    project = new_project(iii_procs)
    ref = f"{registry.host}/demo/echo:1.0"
    assert iii_procs.run("worker", "add", ref, cwd=project).returncode == 0
    root = Path(iii_procs.env["III_CACHE_DIR"]) / "oci" / "rootfs" / digest[7:]
    echo_image(registry, "1.0")  # the tag moves on: same content here, but only the digest is asked
    registry.requests.clear()
    shutil.rmtree(root)
    r = iii_procs.run("worker", "sync", cwd=project)
    assert r.returncode == 0, r.stderr
    assert (root / "app" / "new.txt").is_file()
    assert not any(p.endswith("/manifests/1.0") for p, _ in registry.requests)

    registry.requests.clear()
    r = iii_procs.run("worker", "sync", "--frozen", cwd=project)
    assert r.returncode == 0 and "(1 workers verified)" in r.stderr, r.stderr
    assert [p for p, _ in registry.requests if p.startswith("/v2/")] == [f"/v2/demo/echo/manifests/{digest}"] * 2
    del registry.manifests[("demo/echo", digest)]
    r = iii_procs.run("worker", "sync", "--frozen", cwd=project)
    assert r.returncode == 1 and f"{registry.host}/demo/echo:1.0 was not found" in r.stderr
    registry.manifests[("demo/echo", digest)] = registry.manifests[("demo/echo", "1.0")]

    before = {n: (project / n).stat().st_mtime_ns for n in ("config.yaml", "iii.lock")}
    registry.requests.clear()
    r = iii_procs.run("worker", "reinstall", ref, cwd=project)
    assert r.returncode == 0, r.stderr
    assert "ok: reinstalled echo 1.0" in r.stderr
    paths = [p for p, _ in registry.requests]
    assert f"/v2/demo/echo/manifests/{digest}" in paths and sum("/blobs/" in p for p in paths) == 4
    assert {n: (project / n).stat().st_mtime_ns for n in ("config.yaml", "iii.lock")} == before

    cache = Cache(Path(iii_procs.env["III_CACHE_DIR"]))
    owned = cache_entries(cache, digest)
    index = json.loads(registry.manifests[("demo/echo", "1.0")][0])
    mine = json.loads(registry.manifests[("demo/echo", index["manifests"][0]["digest"])][0])
    blobs = {digest, index["manifests"][0]["digest"], mine["config"]["digest"], *(l["digest"] for l in mine["layers"])}
    assert sorted(owned) == sorted([root, root.with_name(root.name + ".json"), root.with_name(root.name + ".lock"),
                                    *(cache.blob_path(b[7:]) for b in blobs)])


@needs_ns
def test_registry_published_image_runs_from_its_digest(iii_procs, registry):
    """A registry worker of type image (iii.lock `type: image` from a registry document) is pulled
    by its digest when the engine first starts it, and runs like a direct image."""
    from pyiii.manager.registry.publish import publish
    from tests.test_registry_build import write_worker

    digest = echo_image(registry)
    project = new_project(iii_procs)
    publish(write_worker(iii_procs.root / "src", "echo", "1.4.0"), project / "REG",
            image=f"{registry.host}/demo/echo@{digest}")
    r = iii_procs.run("worker", "add", "echo", "--registry", "./REG", cwd=project)
    assert r.returncode == 0, r.stderr
    entry = parse_lock((project / "iii.lock").read_text()).workers["echo"]
    assert (entry.type, entry.version, entry.digest) == ("image", "1.4.0", digest)
    (project / "config.yaml").write_text((project / "config.yaml").read_text().replace(
        "  - name: echo\n", "  - name: echo\n    env: {GREETING: from-entry}\n"))
    engine = iii_procs.engine(project, env={"III_REGISTRY_URL": "./REG"})
    engine.wait_ready()
    log = project / ".iii" / "logs" / "echo.log"
    wait_for(lambda: log.exists() and "old=gone" in log.read_text(), 20, what="echo's output")
    lines = log.read_text().splitlines()
    assert "greeting=from-entry" in lines and "args=echo --flag" in lines
    assert any(line.endswith("installing echo 1.4.0") for line in lines)


def sleeper_image(reg: Registry) -> str:
    """An image whose worker stays up (``sleep``) in ``WorkingDir`` /srv, holding srv/hello.txt."""
    run = {"Entrypoint": ["/bin/sh", "-c", "echo up; exec sleep 600"], "WorkingDir": "/srv",
           "Env": ["PATH=/bin", "FROM_IMAGE=yes"]}
    files = tar_gz([("srv", None), ("srv/hello.txt", b"hello from the image\n")])
    return reg.index("demo/sleeper", "2.0", [reg.manifest("demo/sleeper", [host_shell_layer("sleep"), files], run)])


@needs_ns
def test_status_and_exec_of_a_running_image_worker(iii_procs, registry):
    """`status` reports the locked version, a read-only root and the oci-<id> install folder;
    `exec` runs inside the image's root, in its WorkingDir unless -w says otherwise."""
    digest = sleeper_image(registry)
    project = new_project(iii_procs)
    assert iii_procs.run("worker", "add", f"{registry.host}/demo/sleeper:2.0", cwd=project).returncode == 0
    engine = iii_procs.engine(project)
    engine.wait_ready()
    log = project / ".iii" / "logs" / "sleeper.log"
    wait_for(lambda: log.exists() and "up" in log.read_text().splitlines(), 20, what="sleeper's output")
    doc = json.loads(iii_procs.run("worker", "status", "sleeper", "--json", cwd=project).stdout)
    assert (doc["kind"], doc["type"], doc["version"], doc["isolation"], doc["rootfs"]) == (
        "oci", "image", "2.0", "namespace", "read-only")
    assert Path(doc["install_path"]) == (project / ".iii" / "install" / "sleeper" / f"oci-{digest[7:19]}").resolve()
    assert isinstance(doc["pid"], int)

    script = 'echo "cwd=$(pwd)"; read l < /srv/hello.txt; echo "$l"; echo "$III_WORKER_NAME $FROM_IMAGE $EXTRA"'
    r = iii_procs.run("worker", "exec", "sleeper", "-e", "EXTRA=given", "--", "/bin/sh", "-c", script, cwd=project)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "cwd=/srv\nhello from the image\nsleeper yes given\n"
    r = iii_procs.run("worker", "exec", "sleeper", "-w", "/iii/data", "--", "/bin/sh", "-c",
                      "pwd; echo x > made.txt; test -e /usr/bin/python3 || echo no-host-root", cwd=project)
    assert (r.returncode, r.stdout) == (0, "/iii/data\nno-host-root\n"), r.stderr
    assert (project / "data" / "managed" / "sleeper" / "made.txt").read_text() == "x\n"
    r = iii_procs.run("worker", "exec", "sleeper", "--", "/bin/sh", "-c", "exit 5", cwd=project)
    assert r.returncode == 5
    assert iii_procs.run("worker", "exec", "sleeper", "--", "/no/such", cwd=project).returncode == 127


def test_update_repins_a_moved_tag(iii_procs, registry):
    """§4.9: `update` re-resolves an image's tag; a moved tag gets its new digest pinned."""
    first = registry.index("demo/app", "1", [registry.manifest("demo/app", [tar_gz([("a", b"1")])], {"Cmd": ["/a"]})])
    project = new_project(iii_procs)
    ref = f"{registry.host}/demo/app:1"
    assert iii_procs.run("worker", "add", ref, cwd=project).returncode == 0
    r = iii_procs.run("worker", "update", cwd=project)
    assert r.returncode == 0 and "ok: everything is up to date" in r.stderr, r.stderr
    second = registry.index("demo/app", "1", [registry.manifest("demo/app", [tar_gz([("a", b"2")])], {"Cmd": ["/a"]})])
    before = (project / "config.yaml").read_bytes()
    r = iii_procs.run("worker", "update", "app", cwd=project)
    assert r.returncode == 0, r.stderr
    assert f"app {first[:11]}… → {second[:11]}…" in r.stderr
    assert "ok: updated iii.lock (1 changed)" in r.stderr
    entry = parse_lock((project / "iii.lock").read_text()).workers["app"]
    assert (entry.version, entry.image, entry.digest) == ("1", ref, second)
    assert (project / "config.yaml").read_bytes() == before
    root = Path(iii_procs.env["III_CACHE_DIR"]) / "oci" / "rootfs" / second[7:]
    assert (root / "a").read_bytes() == b"2"

    pinned = f"{registry.host}/demo/app@{second}"
    assert iii_procs.run("worker", "add", "--name", "pinned", pinned, cwd=project).returncode == 0
    registry.index("demo/app", "1", [registry.manifest("demo/app", [tar_gz([("a", b"3")])], {"Cmd": ["/a"]})])
    r = iii_procs.run("worker", "update", "pinned", cwd=project)
    assert r.returncode == 0 and "ok: everything is up to date" in r.stderr, r.stderr
    r = iii_procs.run("worker", "update", "--offline", "app", cwd=project)
    assert "warning: app: image tag not checked (offline)" in r.stderr and "everything is up to date" in r.stderr


def test_clear_deletes_an_images_cache_entries_it_does_not_share(iii_procs, registry):
    """§4.3: `clear` deletes the image's root, <hex>.json and blobs, keeping the blobs another
    locked image uses; config.yaml and iii.lock stay as they were."""
    shared, own_a, own_b = tar_gz([("lib", b"shared")]), tar_gz([("a", b"a")]), tar_gz([("b", b"b")])
    da = registry.index("demo/a", "1", [registry.manifest("demo/a", [shared, own_a], {"Cmd": ["/a"]})])
    db = registry.index("demo/b", "1", [registry.manifest("demo/b", [shared, own_b], {"Cmd": ["/b"]})])
    project = new_project(iii_procs)
    for repo in ("a", "b"):
        assert iii_procs.run("worker", "add", f"{registry.host}/demo/{repo}:1", cwd=project).returncode == 0
    cache = Cache(Path(iii_procs.env["III_CACHE_DIR"]))
    owned_a, owned_b = set(cache_entries(cache, da)), set(cache_entries(cache, db))
    assert cache.blob_path(sha(shared)[7:]) in owned_a & owned_b and len(owned_a) == 8  # root, json, lock, index, manifest, config, 2 layers
    files = snapshot(project)
    r = iii_procs.run("worker", "clear", "-y", "a", cwd=project)
    assert r.returncode == 0, r.stderr
    assert re.search(r"ok: cleared a \(\d+(\.\d)? k?B freed\)", r.stderr), r.stderr
    assert [p for p in owned_a if p.exists()] == [cache.blob_path(sha(shared)[7:])]
    assert all(p.exists() for p in owned_b)
    assert not (project / ".iii" / "install" / "a").exists() and snapshot(project) == files
    r = iii_procs.run("worker", "clear", "-y", "b", cwd=project)
    assert r.returncode == 0 and not any(p.exists() for p in owned_a | owned_b)
    assert snapshot(project) == files
