"""What a first-party worker module provides, and what it is given.

Each first-party worker package (``pyiii/workers/<name>/``) exposes
``async def start(ctx: WorkerContext) -> RunningWorker``. It connects with ``pyiii.sdk``
(``register_worker(ctx.url, ctx.sdk_options())``), exactly like a user's worker, so the same
code runs inside the engine's event loop or as a child process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..sdk import InitOptions


@dataclass
class WorkerContext:
    name: str
    config: dict[str, Any]
    project_dir: Path
    ephemeral: bool  # --use-default-config: memory adapters, nothing written
    url: str | None = None  # engine URL when running out of process
    connector: Any = None  # in-process connector when running in the engine's loop
    namespace: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.project_dir / "data"

    def sdk_options(self, **overrides: Any) -> InitOptions:
        options = InitOptions(worker_name=self.name, namespace=self.namespace,
                              connector=self.connector)
        for key, value in overrides.items():
            setattr(options, key, value)
        return options


CONNECT_TIMEOUT_S = 10.0


async def go_live(worker: Any) -> Any:
    """Register the worker's functions and trigger types and wait for the engine link; if
    that fails, stop the worker (its connection, listeners, storage) before re-raising."""
    worker.register()
    try:
        await worker.iii.wait_connected(CONNECT_TIMEOUT_S)
    except BaseException:
        await worker.stop()
        raise
    return worker


class RunningWorker(Protocol):
    async def stop(self) -> None: ...

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a changed ``config:`` block live; raise ``ValueError`` to keep the old one."""
