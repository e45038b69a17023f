"""The shared, content-addressed cache folder (spec/cli.md §0.5).

`blobs/sha256/<hex>` holds verified downloads and `registry/<url hash>/` registry documents
with their validators (ETag / Last-Modified). Everything here can be deleted at any time: a
blob is always re-hashed before use and a document is revalidated with the server.

A `deferred` cache (what `add` and `update` use) holds the verified downloads of one command
as temporary files until `keep()`, so a command that fails after some downloads succeeded
leaves the cache as it found it (`discard()`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$III_CACHE_DIR`, else `$XDG_CACHE_HOME/pyiii`, else `~/.cache/pyiii`."""
    env = os.environ if env is None else env
    if env.get("III_CACHE_DIR"):
        return Path(env["III_CACHE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "pyiii"
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".cache" / "pyiii"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedDocument:
    body: bytes
    etag: str | None
    last_modified: str | None


class Cache:
    """One cache folder. Nothing is created until something is stored."""

    def __init__(self, root: Path, *, deferred: bool = False) -> None:
        self.root = Path(root)
        self.deferred = deferred
        self._held: dict[str, Path] = {}  # sha256 -> verified temporary file (deferred only)

    # -- blobs -------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def temp_file(self) -> tuple[int, Path]:
        """An open temporary file inside the cache, on the blobs' file system so that the
        verified download becomes a blob by a rename."""
        folder = self.root / "blobs" / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="dl-")
        return fd, Path(name)

    def adopt(self, temp: Path, sha256: str) -> Path:
        """Move a verified temporary file into place as blobs/sha256/<hex>."""
        target = self.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        return target

    def find_blob(self, sha256: str) -> Path | None:
        """The file holding `sha256`: one held by this deferred cache, else the stored blob."""
        held = self._held.get(sha256)
        if held is not None and held.is_file():
            return held
        path = self.blob_path(sha256)
        return path if path.is_file() else None

    def settle(self, temp: Path, sha256: str) -> Path:
        """A verified download: stored as a blob now, or held until `keep()` when deferred."""
        if not self.deferred:
            return self.adopt(temp, sha256)
        old = self._held.get(sha256)
        if old is not None and old != temp:
            old.unlink(missing_ok=True)
        self._held[sha256] = temp
        return temp

    def keep(self) -> None:
        """Store the held downloads as blobs (the command committed)."""
        held, self._held = self._held, {}
        for sha256, temp in held.items():
            try:
                self.adopt(temp, sha256)
            except OSError:  # the cache only saves downloads; losing one is not an error
                temp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Delete the held downloads (the command failed)."""
        held, self._held = self._held, {}
        for temp in held.values():
            temp.unlink(missing_ok=True)

    # -- registry documents ------------------------------------------------------------------
    def _doc_dir(self, url: str) -> Path:
        return self.root / "registry" / hashlib.sha256(url.encode()).hexdigest()[:32]

    def load_document(self, url: str) -> CachedDocument | None:
        folder = self._doc_dir(url)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            body = (folder / "body").read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("url") != url:
            return None
        return CachedDocument(body, meta.get("etag"), meta.get("last_modified"))

    def store_document(self, url: str, body: bytes, etag: str | None, last_modified: str | None) -> None:
        folder = self._doc_dir(url)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in (("body", body),
                           ("meta.json", json.dumps({"url": url, "etag": etag,
                                                     "last_modified": last_modified}).encode())):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, folder / name)
