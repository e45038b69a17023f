"""OCI pieces without a registry (spec/cli.md §9.6): references, manifests and index
narrowing, layer application with whiteouts and link rules, and the image's run settings."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pyiii.manager.oci import manifests
from pyiii.manager.oci.client import parse_challenge
from pyiii.manager.oci.layers import apply_layer, apply_layers, resolve
from pyiii.manager.oci.reference import parse_reference
from pyiii.manager.oci.run import (
    add_mount_points, bwrap_image_args, command_of, image_env, image_install_dir, working_dir,
)
from pyiii.manager.registry.errors import ManagerError

H = "a" * 64


@pytest.mark.parametrize("text, host, repo, tag, digest", [
    ("alpine", "registry-1.docker.io", "library/alpine", "latest", None),
    ("acme/pdf", "registry-1.docker.io", "acme/pdf", "latest", None),
    ("caller-worker:latest", "registry-1.docker.io", "library/caller-worker", "latest", None),
    ("ghcr.io/acme/pdf:1.0", "ghcr.io", "acme/pdf", "1.0", None),
    (f"localhost:5000/x@sha256:{H}", "localhost:5000", "x", None, f"sha256:{H}"),
    (f"127.0.0.1:5000/demo/echo:1.0@sha256:{H}", "127.0.0.1:5000", "demo/echo", "1.0", f"sha256:{H}"),
    ("localhost/a/b", "localhost", "a/b", "latest", None),
])
def test_references(text: str, host: str, repo: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest, ref.text) == (host, repo, tag, digest, text)
    assert ref.target == (digest or tag)


def test_reference_urls_and_names() -> None:
    assert parse_reference("127.0.0.1:5000/demo/echo:1.0").base_url == "http://127.0.0.1:5000"
    assert parse_reference("localhost:5000/x").base_url == "http://localhost:5000"
    assert parse_reference("ghcr.io/acme/pdf").base_url == "https://ghcr.io"
    assert parse_reference("acme/pdf").base_url == "https://registry-1.docker.io"
    assert parse_reference("ghcr.io/acme/pdf-worker:2").name == "pdf-worker"


@pytest.mark.parametrize("text, why", [
    ("Acme/pdf", "repository components"), ("acme/pdf:", "tag"), ("acme/pdf@sha256:12", "digest"),
    ("ghcr.io/", "no repository"), ("acme//pdf", "repository components"),
])
def test_bad_references_are_w100(text: str, why: str) -> None:
    with pytest.raises(ManagerError) as err:
        parse_reference(text)
    assert err.value.code == "W100" and why in err.value.message
    assert err.value.message.startswith(f"invalid image reference '{text}': ")


def test_challenge_parsing() -> None:
    assert parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                           'scope="repository:library/alpine:pull"') == ("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull"})
    assert parse_challenge('Basic realm="x"')[0] == "basic"


def _entry(plat: dict[str, str] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"mediaType": manifests.OCI_MANIFEST, "digest": "sha256:" + H, "size": 10}
    if plat is not None:
        doc["platform"] = plat
    return doc


def test_index_is_narrowed_to_linux_arch() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": manifests.DOCKER_LIST, "manifests": [
        _entry({"os": "unknown", "architecture": "unknown"}),
        _entry({"os": "linux", "architecture": "s390x"}),
        _entry({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        _entry({"os": "windows", "architecture": "amd64"}),
    ]}).encode()
    kind, entries = manifests.parse(body, None, "r")
    assert kind == "index" and [e.platform for e in entries] == [
        "unknown/unknown", "linux/s390x", "linux/arm64/v8", "windows/amd64"]
    assert manifests.select_platform(entries, "r", "arm64").platform == "linux/arm64/v8"
    with pytest.raises(ManagerError) as err:
        manifests.select_platform(entries, "r", "amd64")
    assert err.value.code == "W141"
    assert err.value.message == "r has no image for linux/amd64 (available: linux/s390x, linux/arm64/v8, windows/amd64)"
    assert manifests.host_arch("x86_64") == "amd64" and manifests.host_arch("aarch64") == "arm64"


def test_manifest_formats() -> None:
    docker = {"schemaVersion": 2, "mediaType": manifests.DOCKER_MANIFEST, "config": _entry(None),
              "layers": [_entry(None), _entry(None)]}
    kind, image = manifests.parse(json.dumps(docker).encode(), None, "r")
    assert kind == "manifest" and len(image.layers) == 2 and image.config.digest == "sha256:" + H
    untyped = {"schemaVersion": 2, "config": _entry(None), "layers": []}  # mediaType is optional in OCI
    assert manifests.parse(json.dumps(untyped).encode(), manifests.OCI_MANIFEST, "r")[0] == "manifest"
    with pytest.raises(ManagerError, match="Docker schema 1"):
        manifests.parse(json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), None, "r")
    with pytest.raises(ManagerError, match=r"\(sha256 only\)"):
        manifests.parse(json.dumps({**docker, "config": {"digest": "sha512:ab", "size": 1}}).encode(), None, "r")


# ----------------------------------------------------------------------------- layers

def layer(tmp: Path, name: str, entries: list[tuple[str, Any]]) -> Path:
    """A plain tar layer; value: bytes (file), None (folder), ("sym", target), ("hard", target),
    ("fifo",), ("mode", bytes, mode)."""
    path = tmp / name
    with tarfile.open(path, "w") as tar:
        for entry_name, value in entries:
            info = tarfile.TarInfo(entry_name)
            data = None
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(value, bytes):
                info.size, data = len(value), value
            elif value[0] == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
            elif value[0] == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, value[1]
            elif value[0] == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                info.size, data, info.mode = len(value[1]), value[1], value[2]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() and not p.is_symlink() else "")
                  for p in root.rglob("*"))


def test_whiteouts_and_opaque_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    lower = layer(tmp_path, "1.tar", [("a", None), ("a/old.txt", b"1"), ("a/keep.txt", b"1"),
                                      ("d", None), ("d/sub", None), ("d/sub/x", b"1"), ("d/y", b"1"),
                                      ("d/kept", None), ("d/kept/lower", b"1"),
                                      ("gone", None), ("gone/z", b"1")])
    upper = layer(tmp_path, "2.tar", [("a/.wh.old.txt", b""), ("d/new.txt", b"2"), ("d/kept", None),
                                      ("d/kept/upper", b"2"), ("d/.wh..wh..opq", b""),
                                      (".wh.gone", b""), ("a/.wh.never-existed", b"")])
    apply_layers([lower, upper], root, "img")
    assert tree(root) == ["a/", "a/keep.txt", "d/", "d/kept/", "d/kept/upper", "d/new.txt"]
    assert (root / "d" / "new.txt").read_text() == "2"  # the opaque marker came later in its layer


def test_files_replace_folders_and_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_layer(layer(tmp_path, "1.tar", [("x", None), ("x/in", b"1"), ("y", ("sym", "x")), ("f", b"1")]), root, "l1")
    apply_layer(layer(tmp_path, "2.tar", [("x", b"file"), ("y", b"plain"), ("f", None)]), root, "l2")
    assert (root / "x").read_text() == "file" and not (root / "y").is_symlink() and (root / "f").is_dir()


def test_links_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    apply_layer(layer(tmp_path, "1.tar", [
        ("etc", None), ("etc/passwd", b"root:x:0:0\n"),
        ("abs", ("sym", str(outside))),           # absolute: means <root>/<outside> in the sandbox
        ("abs/planted", b"inside"),               # so this lands inside the root
        ("hard", ("hard", "etc/passwd")),
        ("fifo", ("fifo",)),                      # devices and FIFOs are skipped
        ("suid", ("mode", b"#!", 0o4755)),
    ]), root, "img")
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "planted").read_text() == "inside"
    assert os.readlink(root / "abs") == str(outside)
    assert (root / "hard").read_text() == "root:x:0:0\n" and not (root / "fifo").exists()
    assert (root / "suid").stat().st_mode & 0o7777 == 0o755
    assert resolve(root, "abs/planted") == root / str(outside).lstrip("/") / "planted"
    assert resolve(root, "../../etc/passwd") == root / "etc" / "passwd"

    for name, entries in [("dotdot", [("a/../../x", b"1")]), ("climb", [("up", ("sym", "../../x"))]),
                          ("hardup", [("h", ("hard", "../x"))]), ("absname", [("/abs", b"1")])]:
        with pytest.raises(ManagerError) as err:
            apply_layer(layer(tmp_path, f"{name}.tar", entries), root, name)
        assert err.value.code == "W142" and "unsafe path" in err.value.message
    assert not (tmp_path / "x").exists()


def test_zstd_layers_need_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = layer(tmp_path, "plain.tar", [("z/file", b"zstd content")])
    zpath = tmp_path / "layer.zst"
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as without pyiii[zstd]
    zpath.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    with pytest.raises(ManagerError) as err:
        apply_layer(zpath, tmp_path / "r", "ghcr.io/a/b:1")
    assert (err.value.code, err.value.message) == ("W141", "ghcr.io/a/b:1 uses zstd layers; install pyiii[zstd]")
    monkeypatch.undo()
    zstandard = pytest.importorskip("zstandard")
    zpath.write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
    root = tmp_path / "root"
    root.mkdir()
    apply_layer(zpath, root, "img")
    assert (root / "z" / "file").read_text() == "zstd content"


def test_garbage_layer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g"
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ManagerError) as err:
        apply_layer(path, tmp_path, "img")
    assert err.value.code == "W142"


# ----------------------------------------------------------------------------- run settings

def test_run_settings_of_the_image_config() -> None:
    run = {"Entrypoint": ["/bin/app"], "Cmd": ["--flag"], "Env": ["A=1", "B=x=y", "junk"], "WorkingDir": "/srv"}
    assert command_of(run) == ["/bin/app", "--flag"]
    assert command_of({"Cmd": ["sh"]}) == ["sh"]
    with pytest.raises(ManagerError) as err:
        command_of({"Entrypoint": None, "Cmd": []})
    assert (err.value.code, err.value.message) == ("W160", "image has no Entrypoint or Cmd")
    assert image_env(run) == {"A": "1", "B": "x=y",
                              "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    assert image_env({"Env": ["PATH=/opt"]}) == {"PATH": "/opt"}
    assert working_dir(run) == "/srv" and working_dir({}) == "/" and working_dir({"WorkingDir": "rel"}) == "/"


def test_mount_points_and_bwrap_options(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/run/systemd/resolve/stub-resolv.conf", root / "etc" / "resolv.conf")
    add_mount_points(root)
    assert tree(root) == ["dev/", "etc/", "etc/hosts", "etc/resolv.conf", "iii/", "iii/data/", "proc/",
                          "run/", "tmp/"]
    assert not (root / "etc" / "resolv.conf").is_symlink()
    args = bwrap_image_args("echo", root, tmp_path / "work")
    assert args[:9] == ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                        "--hostname", "iii-echo", "--ro-bind", str(root), "/"]
    assert args[-3:] == ["--bind", str((tmp_path / "work").resolve()), "/iii/data"]
    assert ["--ro-bind", "/etc/hosts", "/etc/hosts"] == args[args.index("/etc/hosts") - 1:args.index("/etc/hosts") + 2]


def test_install_folder_spawn_folder_and_exec_argv(tmp_path: Path) -> None:
    """The image worker's install folder is keyed by the locked digest (§9.7); a sandboxed
    worker's ``cwd`` is a folder inside its root, so bwrap is spawned from "/"; exec joins the
    sandbox with nsenter reaching that folder through the target's root."""
    from pyiii.manager.child import Launch, host_cwd
    from pyiii.manager.exec import build_argv
    from pyiii.manager.status import _rootfs

    assert image_install_dir(tmp_path, "echo", "sha256:" + "0123456789ab" + "c" * 52) == \
        tmp_path / ".iii" / "install" / "echo" / "oci-0123456789ab"
    boxed = Launch(argv=["bwrap"], cwd=Path("/app"), env={}, isolation="namespace", label="image 1.0",
                   sandbox_args=["--ro-bind", "/r", "/"], bwrap="/usr/bin/bwrap")
    plain = Launch(argv=["app"], cwd=tmp_path, env={}, isolation="process", label="local")
    assert (host_cwd(boxed), host_cwd(plain)) == ("/", str(tmp_path))
    assert build_argv(plain, 123, ["ls"], "/x") == (["ls"], False)
    assert build_argv(boxed, None, ["ls"], "/app") == (
        ["/usr/bin/bwrap", "--ro-bind", "/r", "/", "--chdir", "/app", "--", "ls"], False)
    assert (_rootfs("namespace", True, True), _rootfs("namespace", True, False), _rootfs("namespace", False, True),
            _rootfs("process", True, False)) == ("read-only", "host", None, None)


def test_registry_token_is_not_sent_to_a_redirected_host() -> None:
    """Blob redirects point at a storage host: the shared GET drops ``Authorization`` there,
    keeps it on the same host, and reports an unreachable registry as W141 for images."""
    import http.server
    import socket
    import threading

    from pyiii.manager.oci.client import get

    seen: list[tuple[int, str, str | None]] = []

    def server(target: str | None) -> http.server.ThreadingHTTPServer:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                seen.append((self.server.server_address[1], self.path, self.headers.get("Authorization")))
                if target and self.path == "/v2/blob":
                    self.send_response(307)
                    self.send_header("Location", target)
                elif self.path == "/v2/same":
                    self.send_response(302)
                    self.send_header("Location", "/v2/final")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    storage = server(None)
    registry = server(f"http://127.0.0.1:{storage.server_address[1]}/data")
    try:
        reg, sto = registry.server_address[1], storage.server_address[1]
        for path in ("/v2/blob", "/v2/same"):
            resp = get(f"http://127.0.0.1:{reg}{path}", {"Authorization": "Bearer tok"})
            assert resp.status == 200
            resp.close()
        assert seen == [(reg, "/v2/blob", "Bearer tok"), (sto, "/data", None),
                        (reg, "/v2/same", "Bearer tok"), (reg, "/v2/final", "Bearer tok")]
    finally:
        registry.shutdown()
        storage.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from pyiii.manager.registry import httpget

    with pytest.raises(ManagerError) as err:
        httpget.open_url(f"http://127.0.0.1:{port}/v2/x", code="W141", sleep=lambda s: None)
    assert err.value.code == "W141" and err.value.message == f"cannot reach http://127.0.0.1:{port}/v2/x: connection refused"
