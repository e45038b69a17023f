"""Plain, careful HTTP GETs for registries and artifacts (spec/cli.md §7.5).

Built on `http.client` rather than a client library because every hop must be checked by
our own URL rules (scheme, loopback, no HTTPS→HTTP) before connecting, and the timeouts are
two different ones: 10 s to connect, 60 s without data while reading.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urljoin, urlsplit

from .errors import ManagerError
from .urls import check_redirect, check_remote

CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
RETRY_DELAYS = (1.0, 3.0)  # GETs are retried twice on connection errors and 5xx
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
USER_AGENT = "pyiii"


@dataclass
class Response:
    """An open response; read its body with `chunks()` and always `close()` it."""

    url: str
    status: int
    headers: http.client.HTTPMessage
    _conn: http.client.HTTPConnection
    _resp: http.client.HTTPResponse

    @property
    def length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value and value.isdigit() else None

    def chunks(self) -> Iterator[bytes]:
        while True:
            try:
                data = self._resp.read(CHUNK)
            except (socket.timeout, TimeoutError):
                raise ManagerError("W142", f"download of {self.url} stalled: no data for {IDLE_TIMEOUT:.0f}s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise ManagerError("W142", f"download of {self.url} was interrupted: {exc}") from None
            if not data:
                return
            yield data

    def read_all(self, limit: int, what: str) -> bytes:
        buf = bytearray()
        for chunk in self.chunks():
            buf += chunk
            if len(buf) > limit:
                raise ManagerError("W140", f"{what} {self.url} is larger than the {limit} byte limit")
        return bytes(buf)

    def close(self) -> None:
        self._conn.close()


def _open_once(url: str, headers: dict[str, str]) -> Response:
    parts = urlsplit(url)
    port = parts.port
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=CONNECT_TIMEOUT, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=CONNECT_TIMEOUT)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(IDLE_TIMEOUT)
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, **headers})
        resp = conn.getresponse()
    except BaseException:
        conn.close()
        raise
    return Response(url, resp.status, resp.headers, conn, resp)


def open_url(url: str, *, headers: dict[str, str] | None = None, code: str = "W140",
             hint: str = "check the registry URL and that its server is up",
             sleep: Callable[[float], None] = time.sleep) -> Response:
    """GET `url` following up to 5 checked redirects, retrying connection errors and 5xx.

    Returns the final response whatever its status below 500 (the caller decides what 404
    or 401 means); raises ManagerError(`code`, with `hint` when unreachable) otherwise. An
    ``Authorization`` header is not sent on to another host (blob redirects of an image
    registry point at a storage host that must not receive its token).
    """
    check_remote(url)
    headers = headers or {}
    attempt = 0
    while True:
        try:
            resp = _follow(url, headers, code)
        except (OSError, http.client.HTTPException) as exc:
            reason = _reason(exc)
            if attempt < len(RETRY_DELAYS):
                sleep(RETRY_DELAYS[attempt])
                attempt += 1
                continue
            raise ManagerError(code, f"cannot reach {url}: {reason}", hint=hint) from None
        if resp.status >= 500 and attempt < len(RETRY_DELAYS):
            resp.close()
            sleep(RETRY_DELAYS[attempt])
            attempt += 1
            continue
        if resp.status >= 500:
            resp.close()
            raise ManagerError(code, f"{url} answered HTTP {resp.status}")
        return resp


def _follow(url: str, headers: dict[str, str], code: str) -> Response:
    current, sent = url, dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        resp = _open_once(current, sent)
        location = resp.headers.get("Location")
        if resp.status in (301, 302, 303, 307, 308) and location:
            resp.close()
            target = urljoin(current, location)
            check_redirect(current, target)
            if urlsplit(target).netloc != urlsplit(current).netloc:
                sent.pop("Authorization", None)
            current = target
            continue
        return resp
    raise ManagerError(code, f"{url}: more than {MAX_REDIRECTS} redirects")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    return str(exc) or type(exc).__name__
