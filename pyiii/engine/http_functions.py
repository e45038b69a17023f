"""HTTP-invoked functions (spec §8): the engine calls a URL instead of a worker.

Security checks (scheme, allow-list, private addresses, auth variables) run at registration
and again on every call, because DNS answers and the environment can change in between.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from ..protocol import Code
from .errors import CallError

if TYPE_CHECKING:
    from .functions import FunctionEntry
    from .router import CallFrame

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass
class HttpInvocation:
    url: str
    method: str = "POST"
    timeout_ms: int = 30_000
    headers: dict[str, str] = field(default_factory=dict)
    auth: dict[str, str] | None = None


class HttpFunctions:
    def __init__(self, security: dict[str, Any]) -> None:
        self.require_https = bool(security.get("require_https", True))
        self.block_private_ips = bool(security.get("block_private_ips", True))
        self.allowlist = list(security.get("url_allowlist", ["*"]))
        self._session: aiohttp.ClientSession | None = None

    # -- registration -----------------------------------------------------------------------

    def prepare(self, spec: Any) -> HttpInvocation:
        if not isinstance(spec, dict):
            raise CallError(Code.URL_VALIDATION_FAILED, "`invocation` must be an object")
        url = spec.get("url")
        if not isinstance(url, str) or not url:
            raise CallError(Code.URL_VALIDATION_FAILED, "`invocation.url` is required")
        method = spec.get("method", "POST")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise CallError(Code.URL_VALIDATION_FAILED,
                            f"`invocation.method` must be one of {', '.join(METHODS)}")
        timeout = spec.get("timeout_ms", 30_000)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            raise CallError(Code.URL_VALIDATION_FAILED, "`invocation.timeout_ms` must be > 0")
        headers = spec.get("headers") or {}
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise CallError(Code.URL_VALIDATION_FAILED, "`invocation.headers` must map strings")
        auth = spec.get("auth")
        invocation = HttpInvocation(url, method.upper(), timeout, dict(headers), auth)
        self.check_url(url)
        self._auth_headers(invocation, b"", "0")
        return invocation

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise CallError(Code.URL_VALIDATION_FAILED, f"'{url}' is not an http(s) URL")
        if self.require_https and parts.scheme != "https":
            raise CallError(Code.URL_VALIDATION_FAILED,
                            f"'{url}' is not https (security.require_https is on)")
        if not any(fnmatch.fnmatch(host, pattern) for pattern in self.allowlist):
            raise CallError(Code.URL_VALIDATION_FAILED,
                            f"host '{host}' is not in security.url_allowlist")
        if self.block_private_ips:
            try:
                addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
            except OSError as exc:
                raise CallError(Code.URL_VALIDATION_FAILED, f"cannot resolve '{host}': {exc}")
            for address in addresses:
                ip = ipaddress.ip_address(address.split("%", 1)[0])
                if (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified
                        or ip.is_multicast or ip.is_reserved):
                    raise CallError(Code.URL_VALIDATION_FAILED, (
                        f"host '{host}' resolves to the non-public address {address} "
                        "(security.block_private_ips is on)"))

    def _auth_headers(self, invocation: HttpInvocation, body: bytes,
                      timestamp: str) -> dict[str, str]:
        auth = invocation.auth
        if auth is None:
            return {}
        if not isinstance(auth, dict):
            raise CallError(Code.URL_VALIDATION_FAILED, "`invocation.auth` must be an object")

        def env(key_field: str) -> str:
            name = auth.get(key_field)
            if not isinstance(name, str) or name not in os.environ:
                raise CallError(Code.URL_VALIDATION_FAILED, (
                    f"auth.{key_field} names the engine environment variable {name!r}, "
                    "which is not set"))
            return os.environ[name]

        kind = auth.get("type")
        if kind == "hmac":
            secret = env("secret_key").encode()
            message = f"{timestamp}:{base64.b64encode(body).decode()}".encode()
            digest = hmac.new(secret, message, hashlib.sha256).hexdigest()
            return {"x-iii-Signature": f"sha256={digest}"}
        if kind == "bearer":
            return {"Authorization": f"Bearer {env('token_key')}"}
        if kind == "api_key":
            header = auth.get("header")
            if not isinstance(header, str) or not header:
                raise CallError(Code.URL_VALIDATION_FAILED, "auth.header is required for api_key")
            return {header: env("value_key")}
        raise CallError(Code.URL_VALIDATION_FAILED,
                        "auth.type must be one of hmac, bearer, api_key")

    # -- calls ------------------------------------------------------------------------------

    async def call(self, entry: "FunctionEntry", call: "CallFrame") -> Any:
        invocation: HttpInvocation = entry.invocation
        self.check_url(invocation.url)
        body = orjson.dumps(call.data)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "x-iii-Function-Path": entry.function_id,
            "x-iii-Invocation-ID": call.reply_id or "",
            "x-iii-Timestamp": timestamp,
        }
        headers.update(invocation.headers)
        headers.update(self._auth_headers(invocation, body, timestamp))
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(
                    invocation.method, invocation.url, data=body, headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=invocation.timeout_ms / 1000)) as resp:
                try:
                    raw = await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise CallError(Code.HTTP_RESPONSE_FAILED, f"reading the response failed: {exc}")
                status = resp.status
        except CallError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CallError(Code.HTTP_REQUEST_FAILED,
                            f"{invocation.method} {invocation.url} failed: {exc or type(exc).__name__}")
        return _interpret(status, raw)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _interpret(status: int, raw: bytes) -> Any:
    parsed: Any = None
    ok_json = False
    if raw.strip():
        try:
            parsed = orjson.loads(raw)
            ok_json = True
        except orjson.JSONDecodeError:
            pass
    if 200 <= status < 300:
        if not raw.strip():
            return None
        if not ok_json:
            raise CallError(Code.INVALID_RESPONSE, f"HTTP {status} with a body that is not JSON")
        return parsed
    if status < 400:
        return parsed if ok_json else None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else Code.HTTP_ERROR
        message = error.get("message") if isinstance(error.get("message"), str) \
            else "HTTP request failed"
        raise CallError(code, message)
    raise CallError(Code.HTTP_ERROR, f"HTTP {status}")
