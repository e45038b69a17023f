"""`iii registry serve`: a registry folder over HTTP, read-only (spec/cli.md §4.14).

Only the registry's own files are reachable (`index.json`, `meta/*.json`, `packages/**`,
`binaries/**`); dot files, `..`, the publish lock and symlinks leading out of the folder are
404, so serving a registry kept inside a project never exposes the project. aiohttp's
FileResponse supplies Content-Length, ETag, Last-Modified and 304 answers to If-None-Match.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Callable, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

_META = re.compile(r"^meta/[a-z0-9][a-z0-9._-]{0,63}\.json$")


def is_registry_folder(folder: Path) -> bool:
    return (folder / "index.json").is_file() or (folder / "meta").is_dir()


def servable(root: Path, raw_path: str) -> Path | None:
    """The file for a request path, or None when it must be 404."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/") or "\\" in path or "%" in path:
        return None
    rel = path[1:]
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    if not (rel == "index.json" or _META.match(rel) or
            (parts[0] in ("packages", "binaries") and len(parts) > 1)):
        return None
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


class _RequestLog(AbstractAccessLogger):
    """One stderr line per request (`GET /meta/hello.json 304`), written once the response
    went out, so the status is the one the client saw."""

    stream: TextIO = sys.stderr

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.stream.write(f"{request.method} {request.raw_path} {response.status}\n")
        self.stream.flush()


def make_app(folder: Path) -> web.Application:
    root = Path(folder).resolve()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        target = servable(root, request.raw_path)
        if target is None:
            raise web.HTTPNotFound()
        content_type = "application/json" if target.suffix == ".json" else "application/octet-stream"
        return web.FileResponse(target, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(folder: Path, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM; `on_ready` gets the base URL once listening."""
    runner = web.AppRunner(make_app(folder), access_log_class=_RequestLog,
                           access_log=logging.getLogger("pyiii.registry.serve"))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1] if sockets else port
    shown = f"[{host}]" if ":" in host else host
    on_ready(f"http://{shown}:{bound}/")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
