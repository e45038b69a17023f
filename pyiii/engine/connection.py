"""One worker connection as the engine core sees it, whatever carries it.

The core only ever calls ``send(frame)`` (synchronous, never blocks: the frame is handed to
the transport's buffer) and ``close(code)``. Transports subclass :class:`Connection`:
``pyiii.engine.listener`` for WebSockets, ``pyiii.engine.inprocess`` for workers that run in
the engine's own event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .. import protocol


class FrameTooLarge(Exception):
    """The encoded frame exceeds what the recipient accepts (spec §1.4)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes > {limit}")
        self.size = size
        self.limit = limit

    def describe(self, what: str) -> str:
        return (
            f"{what} is {self.size} bytes, over the recipient's limit of {self.limit} bytes; "
            "pass large data through a channel (engine::channels::create) instead"
        )


@dataclass
class WorkerInfo:
    """What ``engine::workers::register`` told us (sanitised)."""

    name: str | None = None
    description: str | None = None
    runtime: str | None = None
    version: str | None = None
    os: str | None = None
    pid: int | None = None
    isolation: str | None = None
    features: list[str] = field(default_factory=list)


class Connection:
    """Engine-side state of one connection. Transport subclasses implement the I/O."""

    transport = "abstract"
    # True: the link's invocation ids are UUID-shaped by construction (pyiii.sdk's IdSequence
    # on an in-process link), so the router reuses them as leg ids without checking their form
    uuid_ids = False

    def __init__(self, ip_address: str | None = None) -> None:
        self.worker_id = protocol.new_id()
        self.reattach_token = protocol.new_id()
        self.ip_address = ip_address
        self.connected_at_ms = int(time.time() * 1000)
        self.namespace: str | None = None  # None while pending (§2.4)
        self.held: list[dict[str, Any]] | None = []  # frames held until the namespace is known
        self.info: WorkerInfo | None = None  # set by a successful register call
        self.closing = False
        self.recipient_limit = protocol.SMALL_RECIPIENT_LIMIT
        self.legs_in: set[str] = set()  # legs delivered to this connection, unanswered
        self.legs_out: set[str] = set()  # legs this connection is waiting on
        self.policy: Any = None  # access policy of an RBAC listener (None: trusted)
        self.grace_handle: Any = None

    # -- identity ---------------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self.info.name if self.info else None

    @property
    def live(self) -> bool:
        return not self.closing

    @property
    def active_invocations(self) -> int:
        return len(self.legs_in) + len(self.legs_out)

    def label(self) -> str:
        return f"{self.name or '?'}({self.worker_id[:8]})"

    # -- I/O (transport) --------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the worker. Raises :class:`FrameTooLarge` when over the limit."""
        raise NotImplementedError

    def close(self, code: int = protocol.Close.NORMAL, reason: str = "") -> None:
        """Start closing the transport (idempotent, non-blocking)."""
        raise NotImplementedError
