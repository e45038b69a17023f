"""First-party workers inside the engine's event loop (architecture decision 4, cli.md §9.1).

``start_in_process`` imports the worker's module and starts it over the in-process transport;
``first_party_module`` tells whether a first-party worker can run at all in this version.
The supervisor (:mod:`.supervisor`) decides when; this module only knows how.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from ..engine.config import WorkerEntry
from ..engine.core import Engine
from ..engine.firstparty import FIRST_PARTY
from ..engine.inprocess import local_connector
from .child import StartError

log = logging.getLogger("pyiii.manager")


def first_party_module(name: str) -> tuple[str, ModuleType]:
    """The module running first-party worker ``name``; StartError when this build lacks it."""
    module_name = FIRST_PARTY[name].module
    module = None
    if module_name:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
    if module_name is None or module is None or not hasattr(module, "start"):
        raise StartError("W110", f"first-party worker {name} is not available in this version")
    return module_name, module


async def start_in_process(engine: Engine, entry: WorkerEntry, project_dir: Path,
                           ephemeral: bool, engine_url: str | None) -> Any:
    """Start ``entry`` in the engine's loop; returns the running worker (``stop()``,
    ``reconfigure()``); raises StartError with the reason it could not start."""
    from ..workers.base import WorkerContext

    _, module = first_party_module(entry.name)
    ctx = WorkerContext(entry.name, dict(entry.config), project_dir, ephemeral, url=engine_url,
                        connector=local_connector(engine), namespace=entry.namespace)
    try:
        return await module.start(ctx)
    except ValueError as exc:
        raise StartError("W131", f"invalid config: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the worker's failure is reported, not raised
        log.exception("%s failed to start", entry.name)
        raise StartError("W900", f"failed to start: {exc}") from None
