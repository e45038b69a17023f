"""CORS (spec/workers.md §3.7): preflights are answered here and never routed."""

from __future__ import annotations

from aiohttp import web

from .config import METHODS, Cors


def is_preflight(request: web.BaseRequest) -> bool:
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


def allow_origin(cors: Cors | None, origin: str | None) -> dict[str, str] | None:
    """The origin headers for a request from ``origin`` (also what an ordinary response gets);
    None when it gets no CORS headers."""
    if origin is None:
        return None
    if cors is None or cors.origins is None:
        return {"access-control-allow-origin": "*"}
    if origin in cors.origins:
        return {"access-control-allow-origin": origin, "vary": "origin"}
    return None


def preflight(cors: Cors | None, request: web.BaseRequest) -> web.Response:
    headers = allow_origin(cors, request.headers.get("Origin"))
    if headers is None:
        return web.Response(status=204)
    methods = METHODS if cors is None or cors.methods is None else cors.methods
    headers["access-control-allow-methods"] = ", ".join(methods)
    # request headers are always allowed: echo what the browser asks for
    asked = request.headers.get("Access-Control-Request-Headers")
    headers["access-control-allow-headers"] = asked if asked else "*"
    headers["access-control-max-age"] = "86400"
    return web.Response(status=204, headers=headers)
