"""Applying image layers to a root filesystem (spec/cli.md §9.6 "Unpacking").

Each layer is a tar stream (plain, gzip or zstd, told apart by its first bytes) applied on top
of the previous ones: ``.wh.<name>`` deletes ``<name>`` from lower layers and ``.wh..wh..opq``
empties its folder of lower-layer entries, both regardless of where the marker falls inside the
layer; whiteout files themselves are never written. Paths are resolved inside the root the way
the sandbox will see them (absolute link targets start at the root), so no entry can write
outside it; names with ``..``, links climbing above the root, devices and FIFOs are refused or
skipped, setuid/setgid bits dropped.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path
from typing import IO, Iterator

from ..registry.errors import ManagerError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_ENTRIES = 500_000
MAX_UNPACKED = 16 * 1024 ** 3
MAX_HOPS = 40
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _unsafe(name: str, label: str) -> ManagerError:
    return ManagerError("W142", f"unsafe path '{name}' in {label}",
                        hint="the image tries to write outside its root; do not trust it")


def resolve(root: Path, rel: str, *, follow_last: bool = True) -> Path:
    """The host path of ``rel`` inside ``root``, following symbolic links as if ``root`` were
    ``/`` (``..`` stops at the root). Never returns a path outside ``root``."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        if (parts or follow_last) and candidate.is_symlink():
            hops += 1
            if hops > MAX_HOPS:
                raise ManagerError("W142", f"too many levels of symbolic links at '{rel}'")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root.joinpath(*done)


def _remove(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def open_layer(fileobj: IO[bytes], label: str) -> IO[bytes]:
    """A readable, decompressed stream of the layer in ``fileobj``."""
    head = fileobj.read(4)
    fileobj.seek(0)
    if head.startswith(GZIP_MAGIC):
        import gzip

        return gzip.GzipFile(fileobj=fileobj, mode="rb")  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise ManagerError("W141", f"{label} uses zstd layers; install pyiii[zstd]") from None
        return zstandard.ZstdDecompressor().stream_reader(fileobj)  # type: ignore[no-any-return]
    return fileobj


def _members(tar: tarfile.TarFile, label: str) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ManagerError("W142", f"{label} is not a valid layer archive: {exc}") from None


def apply_layer(layer: Path, root: Path, label: str) -> None:
    """Apply the layer file ``layer`` (any supported compression) onto the folder ``root``."""
    with open(layer, "rb") as raw:
        stream = open_layer(raw, label)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                _apply(tar, root, label)
        except tarfile.ReadError as exc:
            raise ManagerError("W142", f"{label} is not a valid layer archive: {exc}") from None
        except (EOFError, OSError) as exc:
            raise ManagerError("W142", f"{label} could not be unpacked: {exc}") from None


def _apply(tar: tarfile.TarFile, root: Path, label: str) -> None:
    written: set[str] = set()  # paths this layer wrote: whiteouts only hide lower layers
    dir_modes: list[tuple[Path, int]] = []
    count = total = 0
    for m in _members(tar, label):
        count += 1
        total += max(m.size, 0)
        if count > MAX_ENTRIES or total > MAX_UNPACKED:
            raise ManagerError("W142", f"{label} is larger than pyiii unpacks "
                               f"({MAX_ENTRIES} entries, {MAX_UNPACKED} bytes)")
        name = m.name
        if name.startswith("/") or ".." in name.split("/"):
            raise _unsafe(name, label)
        rel = posixpath.normpath(name)
        if rel in (".", ""):
            continue
        parent, base = posixpath.split(rel)
        if base == OPAQUE:
            _opaque(root, parent, written)
            continue
        if base.startswith(WHITEOUT):
            hidden = posixpath.join(parent, base[len(WHITEOUT):])
            if hidden not in written:
                _remove(resolve(root, parent) / base[len(WHITEOUT):])
            continue
        if m.ischr() or m.isblk() or m.isfifo():
            continue  # devices come from the sandbox's own /dev
        target = resolve(root, parent) / base
        written.update(_ancestors(rel))
        if m.isdir():
            if target.exists() and not target.is_dir() or target.is_symlink():
                _remove(target)
            target.mkdir(parents=True, exist_ok=True)
            dir_modes.append((target, m.mode & 0o777))
            continue
        _remove(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if m.issym():
            if not m.linkname.startswith("/"):
                climbed = posixpath.normpath(posixpath.join(parent, m.linkname))
                if climbed == ".." or climbed.startswith("../"):
                    raise _unsafe(f"{name} -> {m.linkname}", label)
            os.symlink(m.linkname, target)
        elif m.islnk():
            link = m.linkname.lstrip("/")
            if ".." in link.split("/"):
                raise _unsafe(f"{name} => {m.linkname}", label)
            source = resolve(root, link, follow_last=False)
            if not source.is_file() or source.is_symlink():
                raise ManagerError("W142", f"{label}: hard link {name} points at a missing file {m.linkname}")
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        elif m.isfile():
            data = tar.extractfile(m)
            assert data is not None
            with open(target, "wb") as out:
                shutil.copyfileobj(data, out, 1 << 20)
            os.chmod(target, m.mode & 0o777)
        else:
            raise _unsafe(name, label)
    for folder, mode in reversed(dir_modes):  # after the contents, so read-only folders work
        os.chmod(folder, mode | stat.S_IRWXU)


def _ancestors(rel: str) -> list[str]:
    """``a/b/c`` → ``a``, ``a/b``, ``a/b/c``: a written entry also keeps its folders."""
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _opaque(root: Path, parent: str, written: set[str]) -> None:
    """Remove everything under ``parent`` that this layer did not write itself (folders it
    wrote are new ones: their lower-layer contents go too)."""
    folder = resolve(root, parent)
    if not folder.is_dir():
        return
    for child in list(folder.iterdir()):
        rel = posixpath.join(parent, child.name) if parent else child.name
        if rel not in written:
            _remove(child)
        elif child.is_dir() and not child.is_symlink():
            _opaque(root, rel, written)


def apply_layers(layers: list[Path], root: Path, label: str) -> None:
    """Apply ``layers`` in order onto the empty folder ``root``."""
    for index, layer in enumerate(layers, 1):
        apply_layer(layer, root, f"{label} (layer {index})")
