"""Where registries and artifacts may live (spec/cli.md §7.2, §7.5 "URL rules").

Checked before any connection is made (so a refused URL costs no DNS query) and again on every
redirect. `https://` is always allowed, plain `http://` only to loopback hosts, and files only
inside a folder registry, so a registry can never make `iii` read arbitrary local files or
talk unencrypted across a network.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from .errors import ManagerError

_HTTP_HINT = "use https:// or a registry folder"


def is_loopback(host: str | None) -> bool:
    """localhost, 127.0.0.0/8 or ::1, judged from the name alone (no DNS lookup)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_remote(url: str) -> None:
    """Refuse a network URL that is neither https nor loopback http (W140)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        if is_loopback(parts.hostname):
            return
        raise ManagerError("W140", f"refusing {url}: plain HTTP is only allowed for loopback addresses",
                           hint=_HTTP_HINT)
    raise ManagerError("W140", f"refusing {url}: only https://, loopback http:// and file:// URLs are allowed",
                       hint=_HTTP_HINT)


def check_redirect(old: str, new: str) -> None:
    """A redirect must itself pass the rules and never go from HTTPS down to HTTP."""
    check_remote(new)
    if urlsplit(old).scheme == "https" and urlsplit(new).scheme != "https":
        raise ManagerError("W140", f"refusing redirect from {old} to {new}: HTTPS may not redirect to HTTP")


@dataclass(frozen=True)
class Location:
    """A resolved place to read bytes from: a network URL or a local file."""

    url: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        return self.url if self.url is not None else str(self.path)


@dataclass(frozen=True)
class RegistrySource:
    """One configured registry: an HTTP(S) base URL or a folder. `display` is how the user
    wrote it (used in messages such as `searched: first-party, ./REG`)."""

    display: str
    base_url: str | None = None
    folder: Path | None = None

    def document(self, relative: str) -> Location:
        if self.base_url is not None:
            return Location(url=urljoin(self.base_url, relative))
        assert self.folder is not None
        return Location(path=self.folder / relative)


def registry_source(item: str, base_dir: Path) -> RegistrySource:
    """Turn one `--registry` / `III_REGISTRY_URL` / `registries:` item into a source; relative
    folders are taken relative to `base_dir`."""
    parts = urlsplit(item)
    if parts.scheme in ("http", "https"):
        check_remote(item)
        return RegistrySource(item, base_url=item if item.endswith("/") else item + "/")
    if parts.scheme == "file":
        return RegistrySource(item, folder=Path(unquote(parts.path)).resolve())
    if parts.scheme and len(parts.scheme) > 1:
        check_remote(item)  # raises: an unknown scheme
    folder = Path(os.path.expanduser(item))
    return RegistrySource(item, folder=(base_dir / folder).resolve())


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def artifact_location(registry: RegistrySource, document: Location, ref: str) -> Location:
    """Resolve an artifact URL written in a registry document and check it (§7.5)."""
    parts = urlsplit(ref)
    if registry.base_url is not None:
        assert document.url is not None
        absolute = urljoin(document.url, ref)
        scheme = urlsplit(absolute).scheme
        if scheme not in ("http", "https"):
            raise ManagerError("W140", f"refusing {absolute}: a document served over HTTP may only point to "
                               "http(s):// artifacts", hint=_HTTP_HINT)
        if urlsplit(document.url).scheme == "https" and scheme != "https":
            raise ManagerError("W140", f"refusing {absolute}: an https registry may not point to {scheme}://",
                               hint=_HTTP_HINT)
        check_remote(absolute)
        return Location(url=absolute)
    assert registry.folder is not None and document.path is not None
    if parts.scheme in ("http", "https"):
        check_remote(ref)
        return Location(url=ref)
    if parts.scheme == "file":
        target = Path(unquote(parts.path))
    elif parts.scheme:
        check_remote(ref)  # raises
        raise AssertionError("unreachable")
    else:
        target = document.path.parent / unquote(parts.path)
    resolved = target.resolve()
    if not _inside(resolved, registry.folder.resolve()):
        raise ManagerError("W140", f"{ref} points outside the registry folder",
                           hint=f"artifacts of a folder registry must live inside {registry.display}")
    return Location(path=resolved)


def lock_url(location: Location, project_dir: Path) -> str:
    """How an artifact is recorded in iii.lock: absolute URLs, except files inside the project,
    recorded `./relative` so the lock stays portable (§6.1)."""
    if location.url is not None:
        return location.url
    assert location.path is not None
    root = project_dir.resolve()
    if _inside(location.path, root):
        return "./" + location.path.relative_to(root).as_posix()
    return location.path.as_uri()


def locked_location(url: str, project_dir: Path) -> Location:
    """Where to fetch an artifact recorded in iii.lock (the inverse of `lock_url`)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        check_remote(url)
        return Location(url=url)
    if parts.scheme == "file":
        return Location(path=Path(unquote(parts.path)))
    if parts.scheme:
        check_remote(url)  # raises
    path = (project_dir / unquote(url)).resolve()
    if not _inside(path, project_dir.resolve()):
        raise ManagerError("W140", f"{url} points outside the project folder")
    return Location(path=path)
