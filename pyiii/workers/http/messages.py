"""Request payloads, response assembly and error envelopes (spec/workers.md §3.4-3.6)."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any, Iterable

import orjson
from aiohttp import web
from multidict import CIMultiDict

log = logging.getLogger("pyiii.workers.http")

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
REDACTED = frozenset({"authorization", "cookie", "set-cookie", "x-api-key", "proxy-authorization",
                      "baggage", "x-auth-token", "x-csrf-token"})
JSON = "application/json"


# -- request side --------------------------------------------------------------------------

def headers_of(request: web.BaseRequest) -> dict[str, str]:
    """Lower-case names, one string each; repeats joined with ``, `` (``cookie`` with ``; ``)."""
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        if key in out:
            out[key] = out[key] + ("; " if key == "cookie" else ", ") + value
        else:
            out[key] = value
    return out


def query_of(request: web.BaseRequest) -> dict[str, str]:
    """Decoded; a repeated key keeps its last value."""
    if not request.query_string:
        return {}
    return {key: value for key, value in request.rel_url.query.items()}


def parse_json_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


# W3C trace context: version 00 is exactly four fields; later versions may append more
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def trace_context(headers: dict[str, str]) -> dict[str, str]:
    """``traceparent`` / ``baggage`` for the calls a request makes (§3.7), from its headers.

    A traceparent the W3C rules reject (bad shape, version ``ff``, all-zero ids, or several
    headers joined into one) is dropped rather than relayed, so a client cannot hand handlers
    a context no tracer accepts. The invocation frame has no ``tracestate`` field: that header
    stays visible to handlers in ``headers`` only."""
    out: dict[str, str] = {}
    traceparent = headers.get("traceparent")
    if traceparent is not None:
        value = traceparent.strip()
        match = _TRACEPARENT.match(value)
        if (match is not None and not value.startswith("ff")
                and match.group(1) != _ZERO_TRACE and match.group(2) != _ZERO_SPAN
                and (match.group(3) is None or not value.startswith("00"))):
            out["traceparent"] = value
    baggage = headers.get("baggage")
    if baggage is not None and baggage.strip():
        out["baggage"] = baggage.strip()
    return out


def redacted(headers: dict[str, str]) -> dict[str, str]:
    """Headers safe to log."""
    return {k: ("[redacted]" if k in REDACTED or "token" in k or "secret" in k else v)
            for k, v in headers.items()}


# -- response side -------------------------------------------------------------------------

def valid_header(name: Any, value: Any) -> bool:
    return (isinstance(name, str) and isinstance(value, str) and bool(_TOKEN.match(name))
            and "\r" not in value and "\n" not in value and "\x00" not in value)


def header_pairs(raw: Any) -> list[tuple[str, str]]:
    """Handler headers (object or ``["Name: value"]`` list); invalid entries are skipped."""
    pairs: list[tuple[str, str]] = []
    items: Iterable[Any]
    if isinstance(raw, dict):
        items = raw.items()
    elif isinstance(raw, list):
        items = []
        for entry in raw:
            if isinstance(entry, str) and ":" in entry:
                name, _, value = entry.partition(":")
                items.append((name.strip(), value.strip()))
            else:
                log.info("http: skipping response header entry %r", entry)
    else:
        if raw is not None:
            log.info("http: response headers must be an object or a list, got %r", raw)
        items = []
    for name, value in items:
        if valid_header(name, value):
            pairs.append((name, value))
        else:
            log.info("http: skipping invalid response header %r", name)
    return pairs


def status_of(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return 200


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def encode_body(headers: CIMultiDict[str], body: Any, has_body: bool) -> bytes | None:
    """The body bytes per §3.5 (may add ``content-type: application/json``)."""
    content_type = headers.get("content-type")
    if content_type is None:
        headers["content-type"] = JSON
        return dumps(body if has_body else {})
    if isinstance(body, str):
        return body.encode()
    if body is None:
        return None
    return dumps(body)


def result_response(result: Any, extra: dict[str, str] | None = None) -> web.Response:
    """A handler (or middleware ``respond``) result turned into the HTTP response."""
    if not isinstance(result, dict):
        log.info("http: handler result is not an object (%s); answering {}", type(result).__name__)
        result = {}
    raw_headers = result.get("headers")
    headers: CIMultiDict[str] = CIMultiDict(header_pairs(raw_headers)) \
        if raw_headers is not None else CIMultiDict()
    body = encode_body(headers, result.get("body"), "body" in result)
    if extra:
        for name, value in extra.items():
            headers.setdefault(name, value)
    return web.Response(status=status_of(result.get("status_code")), body=body, headers=headers)


class HttpError(Exception):
    """A response the worker generates itself (§3.6)."""

    def __init__(self, status: int, code: str, message: str, *, with_id: bool = False,
                 headers: dict[str, str] | None = None, skipped: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.error_id = secrets.token_hex(4) if with_id else None
        self.headers = headers or {}
        self.skipped = skipped

    def response(self, extra: dict[str, str] | None = None) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.error_id is not None:
            error["error_id"] = self.error_id
        envelope: dict[str, Any] = {"error": error}
        if self.skipped:
            envelope["skipped"] = True
        headers = CIMultiDict({"content-type": JSON, **self.headers})
        for name, value in (extra or {}).items():
            headers.setdefault(name, value)
        return web.Response(status=self.status, body=dumps(envelope), headers=headers)


def not_found() -> HttpError:
    return HttpError(404, "NOT_FOUND", "Not Found")


def method_not_allowed(allowed: list[str]) -> HttpError:
    return HttpError(405, "METHOD_NOT_ALLOWED", "Method Not Allowed",
                     headers={"allow": ", ".join(allowed)})


def payload_too_large(limit: int) -> HttpError:
    return HttpError(413, "PAYLOAD_TOO_LARGE", f"request body exceeds body_limit of {limit} bytes")


def condition_not_met() -> HttpError:
    return HttpError(422, "CONDITION_NOT_MET", "Request condition not met", skipped=True)


def failed(code: Any, message: Any) -> HttpError:
    """A condition, middleware or handler failure: its own code and message, with an id."""
    error = HttpError(500, code if isinstance(code, str) and code else "INTERNAL_ERROR",
                      message if isinstance(message, str) else str(message), with_id=True)
    log.warning("http: error_id=%s %s: %s", error.error_id, error.code, error.message)
    return error


def internal(exc: BaseException) -> HttpError:
    error = HttpError(500, "INTERNAL_ERROR", "Internal Server Error", with_id=True)
    log.error("http: error_id=%s internal failure: %r", error.error_id, exc, exc_info=exc)
    return error


def middleware_timeout() -> HttpError:
    return HttpError(504, "MIDDLEWARE_TIMEOUT", "Middleware timeout")


def request_timeout(ms: int) -> HttpError:
    return HttpError(504, "TIMEOUT", f"request exceeded default_timeout of {ms} ms")
