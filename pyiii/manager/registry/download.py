"""Fetching artifacts into the cache with size caps and sha256 verification (spec/cli.md §7.5).

Bytes stream into a temporary file inside the cache and are hashed on the way; only a file
whose size and sha256 match what the registry (or iii.lock) declared becomes
`blobs/sha256/<hex>`. Every failure deletes the temporary file, so a bad download never
lands in the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Mapping

from .cache import Cache, sha256_file
from .errors import ManagerError
from .httpget import CHUNK, open_url
from .model import Artifact
from .progress import Progress
from .urls import Location

PACKAGE_LIMIT = 256 * 1024 ** 2
BINARY_LIMIT = 512 * 1024 ** 2


def download_limit(kind: str, env: Mapping[str, str] | None = None) -> int:
    """The size cap of a package or binary; `III_MAX_DOWNLOAD_BYTES` overrides both."""
    env = os.environ if env is None else env
    override = env.get("III_MAX_DOWNLOAD_BYTES", "").strip()
    if override.isdigit():
        return int(override)
    return BINARY_LIMIT if kind == "binary" else PACKAGE_LIMIT


def _file_chunks(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            yield from iter(lambda: f.read(CHUNK), b"")
    except FileNotFoundError:
        raise ManagerError("W142", f"{path} does not exist") from None
    except OSError as exc:
        raise ManagerError("W142", f"cannot read {path}: {exc.strerror}") from None


def fetch_artifact(name: str, version: str, location: Location, artifact: Artifact, cache: Cache,
                   progress: Progress, *, limit: int, reuse: bool = True) -> Path:
    """Return the path of the verified blob for `artifact`, downloading it if needed."""
    label = f"{name} {version}"
    blob = cache.find_blob(artifact.sha256)
    if reuse and blob is not None:
        if sha256_file(blob) == artifact.sha256 and blob.stat().st_size == artifact.size:
            return blob
        blob.unlink()  # a damaged cache entry: fetch it again
    if artifact.size > limit:
        raise ManagerError("W142", f"{label} is {artifact.size} bytes, over the {limit} byte download limit",
                           hint="raise III_MAX_DOWNLOAD_BYTES if you trust this artifact")
    fd, temp = cache.temp_file()
    response = None
    try:
        if location.url is not None:
            response = open_url(location.url, code="W142")
            if response.status != 200:
                raise ManagerError("W142", f"{label}: {location.url} answered HTTP {response.status}")
            announced = response.length
            chunks = response.chunks()
        else:
            assert location.path is not None
            announced = None
            chunks = _file_chunks(location.path)
        digest, received = hashlib.sha256(), 0
        progress.start(name, version, artifact.size)
        with os.fdopen(fd, "wb") as out:
            fd = -1
            for chunk in chunks:
                received += len(chunk)
                if received > artifact.size:
                    raise ManagerError("W142", f"{label}: download is larger than its declared size "
                                       f"({artifact.size} bytes)")
                if received > limit:
                    raise ManagerError("W142", f"{label}: download exceeds the {limit} byte limit",
                                       hint="raise III_MAX_DOWNLOAD_BYTES if you trust this artifact")
                digest.update(chunk)
                out.write(chunk)
                progress.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        expected = max(artifact.size, announced or 0)
        if received < expected:
            raise ManagerError("W142", f"{label}: download from {location} was truncated "
                               f"({received} of {expected} bytes)",
                               hint="try again; if it persists the registry serves a damaged file")
        got = digest.hexdigest()
        if got != artifact.sha256:
            raise ManagerError("W143", f"sha256 mismatch for {label} ({location}): expected {artifact.sha256}, got {got}",
                               hint="the artifact changed after it was published or locked; do not trust it")
        path = cache.settle(temp, got)
        progress.finish()
        return path
    except BaseException:
        progress.abort()
        if fd >= 0:
            os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    finally:
        if response is not None:
            response.close()
