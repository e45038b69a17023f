"""OCI image references: ``[host[:port]/]repository[:tag][@sha256:<hex>]`` (spec/cli.md §9.6).

Docker's defaulting rules apply: a first component without ``.`` or ``:`` that is not
``localhost`` is part of the repository and the host is Docker Hub, where one-component names
live under ``library/``; the tag defaults to ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..registry.errors import ManagerError
from ..registry.model import DIGEST
from ..registry.urls import is_loopback

DOCKER_HUB = "registry-1.docker.io"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference; ``text`` is what the user typed (kept in config.yaml and iii.lock)."""

    text: str
    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def base_url(self) -> str:
        """HTTPS, or plain HTTP for loopback registries (§9.6)."""
        hostname = self.host.rsplit(":", 1)[0] if not self.host.endswith("]") else self.host
        scheme = "http" if is_loopback(hostname.strip("[]")) else "https"
        return f"{scheme}://{self.host}"

    @property
    def name(self) -> str:
        """The default worker name: the last repository component (§3.3)."""
        return self.repository.rsplit("/", 1)[-1]

    @property
    def target(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> "Reference":
        """The same image, addressed by ``digest`` (how a locked image is pulled again)."""
        return Reference(self.text, self.host, self.repository, self.tag, digest)


def parse_reference(text: str) -> Reference:
    """Parse ``text``; W100 (exit 2) when it is not a valid reference."""
    def bad(why: str) -> ManagerError:
        return ManagerError("W100", f"invalid image reference '{text}': {why}",
                            hint="write [host[:port]/]repository[:tag][@sha256:<hex>]")

    rest, at, digest = text.partition("@")
    if at and not DIGEST.match(digest):
        raise bad("the digest must be sha256:<64 lowercase hex>")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, path = first, remainder
        if not _HOST.match(host):
            raise bad(f"'{host}' is not a host name")
    else:
        host, path = DOCKER_HUB, rest
    tag: str | None = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not _TAG.match(tag):
            raise bad(f"'{tag}' is not a valid tag")
    if not path:
        raise bad("no repository")
    parts = path.split("/")
    if not all(_COMPONENT.match(p) for p in parts):
        raise bad("repository components are lowercase letters, digits and separators . _ -")
    if host == DOCKER_HUB and len(parts) == 1:
        path = "library/" + path
    if tag is None and not at:
        tag = "latest"
    return Reference(text, host, path, tag, digest if at else None)
