"""Looking a worker up in the configured registries (spec/cli.md §7.2, §7.1 "Scale").

Resolution reads only `meta/<name>.json` of the names it needs, never `index.json`. Registries
are tried in order and the first one holding the document supplies every version (no
merging); a 404 or a missing file moves on, any other failure stops the command (W140) rather
than silently skipping a registry. HTTP documents are cached with their ETag/Last-Modified and
revalidated with conditional requests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from pyiii.engine.firstparty import canonical_name, is_first_party

from .cache import Cache
from .errors import ManagerError
from .firstparty import first_party_document
from .httpget import open_url
from .model import WorkerDocument, parse_document
from .urls import Location, RegistrySource, registry_source

DOCUMENT_LIMIT = 8 * 1024 ** 2


def registry_list(cli: list[str] | None, config_registries: list[str] | None, *, cwd: Path,
                  project_dir: Path, env: Mapping[str, str] | None = None) -> list[RegistrySource]:
    """The ordered registries: `--registry`, else `III_REGISTRY_URL`, else config.yaml's
    `registries:` (relative folders: to the current folder / the project folder)."""
    env = os.environ if env is None else env
    if cli:
        return [registry_source(item, cwd) for item in cli]
    from_env = env.get("III_REGISTRY_URL", "").split()
    if from_env:
        return [registry_source(item, cwd) for item in from_env]
    return [registry_source(item, project_dir) for item in (config_registries or [])]


@dataclass
class Found:
    """A worker's document and the registry it came from (None: first-party)."""

    document: WorkerDocument
    registry: RegistrySource | None


@dataclass
class Registries:
    """The registries of one command run; documents are fetched at most once per run."""

    sources: list[RegistrySource]
    cache: Cache
    offline: bool = False
    warnings: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)  # document locations read (tests, --json)
    # deferred: fresh documents are kept in memory until `save_documents()`, so that a command
    # that fails leaves the cache exactly as it found it (commands call it after committing).
    deferred: bool = False
    _seen: dict[str, Found] = field(default_factory=dict)
    _pending: list[tuple[str, bytes, str | None, str | None]] = field(default_factory=list)

    def searched(self) -> str:
        return ", ".join(["first-party", *(s.display for s in self.sources)])

    def find(self, name: str) -> Found:
        """The document for `name`; W110 when no registry has it, W140 when none is configured."""
        canon = canonical_name(name)
        if canon in self._seen:
            return self._seen[canon]
        if is_first_party(canon):
            doc = first_party_document(canon)
            assert doc is not None
            found = Found(doc, None)
        else:
            if not self.sources:
                raise ManagerError("W140", f"'{name}' is not a first-party worker and no registry is configured",
                                   hint="pass --registry URL or set III_REGISTRY_URL")
            found = self._search(canon)
        self._seen[canon] = found
        return found

    def _search(self, name: str) -> Found:
        for source in self.sources:
            if source.folder is not None and not source.folder.is_dir():
                raise ManagerError("W140", f"registry folder {source.display} does not exist",
                                   hint="check --registry, III_REGISTRY_URL or registries: in config.yaml")
            location = source.document(f"meta/{name}.json")
            got = self._read(location)
            if got is None:
                continue
            body, validators = got
            doc = parse_document(body, str(location), name)
            if validators is not None and location.url is not None:  # only once it parsed
                if self.deferred:
                    self._pending.append((location.url, body, *validators))
                else:
                    self.cache.store_document(location.url, body, *validators)
            return Found(doc, source)
        offline = " (offline: only cached documents were searched)" if self.offline else ""
        raise ManagerError("W110", f"worker '{name}' was not found in any registry (searched: {self.searched()}){offline}",
                           hint="check the name, or pass the registry that publishes it with --registry URL")

    def save_documents(self) -> None:
        """Cache the documents a deferred run fetched. The cache only saves requests, so a
        write that fails (full disk, read-only cache) is not the command's failure."""
        pending, self._pending = self._pending, []
        for url, body, etag, modified in pending:
            try:
                self.cache.store_document(url, body, etag, modified)
            except OSError:
                return

    def _read(self, location: Location) -> tuple[bytes, tuple[str | None, str | None] | None] | None:
        """The document's bytes and, for a fresh HTTP answer, the validators to cache."""
        self.fetched.append(str(location))
        if location.path is not None:
            try:
                if location.path.stat().st_size > DOCUMENT_LIMIT:
                    raise ManagerError("W140", f"registry document {location} is larger than the {DOCUMENT_LIMIT} byte limit")
                return location.path.read_bytes(), None
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise ManagerError("W140", f"cannot read registry document {location}: {exc.strerror}") from None
        assert location.url is not None
        cached = self.cache.load_document(location.url)
        if self.offline:
            return (cached.body, None) if cached else None
        headers = {}
        if cached and cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        response = open_url(location.url, headers=headers)
        try:
            if response.status == 304 and cached:
                return cached.body, None
            if response.status in (404, 410):
                return None
            if response.status != 200:
                raise ManagerError("W140", f"registry document {location.url} answered HTTP {response.status}")
            body = response.read_all(DOCUMENT_LIMIT, "registry document")
            etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        finally:
            response.close()
        return body, ((etag, modified) if etag or modified else None)
