"""Package archives: safe unpacking and reproducible packing (spec/cli.md §7.5, §4.13).

Unpacking checks every entry before anything is written: absolute paths, `..`, links that
resolve outside the target, device files and FIFOs are refused, sizes and counts capped; then
`tarfile`'s `data` filter extracts (dropping setuid/setgid bits and owners) as a second line of
defence. Packing is byte-reproducible (sorted entries, mtime 0, owner 0, normalised modes, a
gzip header without name or time), so publishing the same folder twice gives the same sha256.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import posixpath
import stat
import tarfile
from pathlib import Path

from .errors import ManagerError

MAX_UNPACKED = 1024 ** 3
MAX_ENTRIES = 50_000
MAX_DEPTH = 32
EXCLUDED_DIRS = (".git", ".iii", "node_modules", ".venv", ".deps", "__pycache__")
EXCLUDED_FILES = ("*.pyc",)


def _unsafe(entry: str, archive: str) -> ManagerError:
    return ManagerError("W142", f"unsafe path '{entry}' in {archive}",
                        hint="the archive tries to write outside its folder; do not trust it")


def _inside(path: str) -> bool:
    return path != ".." and not path.startswith("../") and not path.startswith("/")


def check_members(members: list[tarfile.TarInfo], archive: str, *, max_unpacked: int = MAX_UNPACKED) -> None:
    """Refuse an archive with any unsafe entry or over the §7.5 limits (nothing written yet)."""
    if len(members) > MAX_ENTRIES:
        raise ManagerError("W142", f"{archive} has {len(members)} entries (limit {MAX_ENTRIES})")
    total = 0
    for m in members:
        name = m.name
        norm = posixpath.normpath(name)
        if name.startswith("/") or ".." in name.split("/") or not _inside(norm):
            raise _unsafe(name, archive)
        if norm != "." and norm.count("/") + 1 > MAX_DEPTH:
            raise ManagerError("W142", f"'{name}' in {archive} is nested deeper than {MAX_DEPTH} folders")
        if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise _unsafe(name, archive)
        if m.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(norm), m.linkname))
            if m.linkname.startswith("/") or not _inside(target):
                raise _unsafe(name, archive)
        if m.islnk():
            target = posixpath.normpath(m.linkname)
            if m.linkname.startswith("/") or not _inside(target):
                raise _unsafe(name, archive)
        total += max(m.size, 0)
        if total > max_unpacked:
            raise ManagerError("W142", f"{archive} unpacks to more than {max_unpacked} bytes")


def unpack(archive: Path, target: Path, label: str, *, max_unpacked: int = MAX_UNPACKED) -> None:
    """Unpack the tar.gz `archive` into the existing folder `target` (label names it in errors)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            check_members(members, label, max_unpacked=max_unpacked)
            tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise _unsafe(getattr(exc, "tarinfo", None) and exc.tarinfo.name or "?", label) from None
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise ManagerError("W142", f"{label} is not a valid tar.gz archive: {exc}") from None


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    if any(p in EXCLUDED_DIRS for p in parts[:-1]) or parts[-1] in EXCLUDED_DIRS:
        return True
    base = parts[-1]
    for pattern in (*EXCLUDED_FILES, *patterns):
        pat = pattern.rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(base, pat) or any(
                fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts))):
            return True
    return False


def package_files(folder: Path) -> list[tuple[str, Path]]:
    """The files a package of `folder` holds, sorted; refuses links and special files by path."""
    ignore = folder / ".iiiignore"
    patterns = []
    if ignore.is_file():
        patterns = [line.strip() for line in ignore.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if _ignored(rel, patterns):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ManagerError("W180", f"cannot publish {rel}: symbolic links are not allowed in a package",
                                   hint="replace it with a copy, or list it in .iiiignore")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ManagerError("W180", f"cannot publish {rel}: not a regular file",
                                   hint="list it in .iiiignore")
            found.append((rel, path))
    return sorted(found)


def pack(folder: Path, limit: int) -> bytes:
    """A reproducible tar.gz of `folder` (see module docstring)."""
    raw = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in package_files(folder):
            data = path.read_bytes()
            total += len(data)
            if total > MAX_UNPACKED:
                raise ManagerError("W142", f"cannot publish {rel}: the package would unpack to more than {MAX_UNPACKED} bytes")
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    blob = out.getvalue()
    if len(blob) > limit:
        raise ManagerError("W142", f"the package of {folder} is {len(blob)} bytes, over the {limit} byte limit")
    return blob
