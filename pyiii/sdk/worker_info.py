"""Who this worker is: name, namespace, headers and the ``engine::workers::register``
payload, resolved from options and the environment the supervisor sets (``III_URL``,
``III_WORKER_NAME``, ``III_NAMESPACE``, ``III_ISOLATION``, ``III_TOKEN``)."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from pyiii import __version__
from pyiii.protocol import DEFAULT_ENGINE_URL, LARGE_MESSAGES_FEATURE

__all__ = ["resolve_engine_url", "resolve_headers", "worker_name", "worker_namespace", "worker_metadata"]


def resolve_engine_url(address: str | None = None) -> str:
    """Explicit address, else ``III_URL``, else the local default engine."""
    return address or os.environ.get("III_URL") or DEFAULT_ENGINE_URL


def resolve_headers(explicit: dict[str, str] | None) -> dict[str, str] | None:
    """The handshake headers plus ``Authorization: Bearer $III_TOKEN`` when that variable
    is set and the caller did not give an Authorization header of its own."""
    token = os.environ.get("III_TOKEN", "").strip()
    if not token or any(name.lower() == "authorization" for name in explicit or {}):
        return explicit
    return {**(explicit or {}), "Authorization": f"Bearer {token}"}


def worker_name(option: str | None) -> str:
    """``III_WORKER_NAME`` first (a supervisor's choice wins over code), then the option,
    then ``host:pid``."""
    return os.environ.get("III_WORKER_NAME") or option or f"{socket.gethostname()}:{os.getpid()}"


def worker_namespace(option: str | None) -> str | None:
    """The option, else a non-blank ``III_NAMESPACE``, else ``None`` (engine: ``default``).
    A blank *option* is a mistake and raises: it would silently register in ``default``."""
    if option is not None:
        if not option.strip():
            raise ValueError("InitOptions.namespace is blank: name a namespace or leave it unset")
        return option
    env = os.environ.get("III_NAMESPACE", "")
    return env if env.strip() else None


def worker_metadata(name: str, description: str | None, namespace: str | None) -> dict[str, Any]:
    """Payload of the ``engine::workers::register`` call (spec §2.3). Declares only
    ``large-messages.v1``: pyiii has no observe and no local dispatch."""
    data: dict[str, Any] = {
        "runtime": "python",
        "version": __version__,
        "name": name,
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "pid": os.getpid(),
        "isolation": os.environ.get("III_ISOLATION") or None,
        "features": [LARGE_MESSAGES_FEATURE],
    }
    if description:
        data["description"] = description
    if namespace is not None:
        data["namespace"] = namespace
    return data
