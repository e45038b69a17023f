"""``register_worker``: the entry point user code calls."""

from __future__ import annotations

import asyncio

from .client import III
from .types import InitOptions
from .worker_info import resolve_engine_url

__all__ = ["register_worker"]


def register_worker(address: str | None = None, options: InitOptions | None = None) -> III:
    """Create a worker client for the engine at ``address`` (else ``III_URL``, else
    ``ws://127.0.0.1:49134``).

    Outside an event loop the client runs its own loop thread and this call blocks up to
    30 s for the first connection (it keeps retrying afterwards, and raises at once on a
    fatal rejection). Inside a running loop it attaches to that loop and returns at once:
    ``await client.wait_connected()`` if you need the link up.
    """
    client = III(resolve_engine_url(address), options)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        client._wait_until_connected()
    return client
