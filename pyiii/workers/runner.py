"""Run a first-party worker as its own process: the same code as in-process, over WebSocket.

The supervisor passes ``III_URL``, ``III_WORKER_NAME`` and the entry's ``config:`` block as
JSON in ``III_WORKER_CONFIG``; the project folder is the working directory.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from ..runtime import run, tune_for_serving
from .base import WorkerContext


def run_standalone(name: str, module_name: str) -> None:
    logging.basicConfig(level=os.environ.get("III_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        config = json.loads(os.environ.get("III_WORKER_CONFIG") or "{}")
    except ValueError as exc:
        sys.exit(f"{name}: III_WORKER_CONFIG is not JSON: {exc}")

    async def main() -> None:
        module = importlib.import_module(module_name)
        ctx = WorkerContext(os.environ.get("III_WORKER_NAME", name), config, Path.cwd(),
                            ephemeral=os.environ.get("III_EPHEMERAL") == "1",
                            url=os.environ.get("III_URL"), namespace=os.environ.get("III_NAMESPACE"))
        try:
            worker = await module.start(ctx)
        except ValueError as exc:
            sys.exit(f"{name}: invalid config: {exc}")
        tune_for_serving()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await worker.stop()

    run(main())
