"""A distribution-API client with anonymous Bearer tokens (spec/cli.md §9.6 "Auth").

Requests go through http.client with the registry layer's URL rules (HTTPS, loopback HTTP,
checked redirects) and timeouts. Redirects are followed here rather than by the shared GET
helper because blob redirects usually point at a storage host that must not receive the
registry's token. Only public images are pulled: a Basic challenge or a refused token is W141.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from typing import Callable
from urllib.parse import urlencode, urljoin, urlsplit

from ..registry.errors import ManagerError
from ..registry.httpget import CONNECT_TIMEOUT, IDLE_TIMEOUT, MAX_REDIRECTS, RETRY_DELAYS, USER_AGENT, Response
from ..registry.urls import check_redirect, check_remote
from .reference import Reference

_PARAM = re.compile(r'(\w+)="([^"]*)"')
TOKEN_LIMIT = 1024 * 1024


def _open_once(url: str, headers: dict[str, str]) -> Response:
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=CONNECT_TIMEOUT, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT)
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


def get(url: str, headers: dict[str, str], *, sleep: Callable[[float], None] = time.sleep) -> Response:
    """GET with checked redirects (dropping ``Authorization`` when the host changes) and two
    retries on connection errors and 5xx; the caller closes the response."""
    check_remote(url)
    for attempt in range(len(RETRY_DELAYS) + 1):
        current, sent = url, dict(headers)
        try:
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
                break
            else:
                raise ManagerError("W141", f"{url}: more than {MAX_REDIRECTS} redirects")
        except (OSError, http.client.HTTPException) as exc:
            if attempt < len(RETRY_DELAYS):
                sleep(RETRY_DELAYS[attempt])
                continue
            raise ManagerError("W141", f"cannot reach {url}: {exc or type(exc).__name__}",
                               hint="check the image reference and your network") from None
        if resp.status >= 500 and attempt < len(RETRY_DELAYS):
            resp.close()
            sleep(RETRY_DELAYS[attempt])
            continue
        return resp
    raise AssertionError("unreachable")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="..",service=".."`` → ("bearer", {realm, service, ...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _PARAM.findall(rest)}


class RegistryClient:
    """One repository on one registry; keeps the Bearer token it obtained."""

    def __init__(self, ref: Reference) -> None:
        self.ref = ref
        self.token: str | None = None

    def _credentials_error(self) -> ManagerError:
        return ManagerError("W141", f"{self.ref.host} requires credentials for {self.ref.repository}; "
                            "pyiii pulls public images only")

    def _authorize(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme != "bearer" or "realm" not in params:
            raise self._credentials_error()
        query = {k: params[k] for k in ("service", "scope") if k in params}
        if "scope" not in query:
            query["scope"] = f"repository:{self.ref.repository}:pull"
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        resp = get(url, {})
        try:
            if resp.status != 200:
                raise self._credentials_error()
            try:
                doc = json.loads(resp.read_all(TOKEN_LIMIT, "token answer"))
            except ValueError:
                raise self._credentials_error() from None
        finally:
            resp.close()
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise self._credentials_error()
        self.token = token

    def open(self, path: str, accept: str | None = None) -> Response:
        """GET ``/v2/<repository>/<path>``, answering one Bearer challenge (a token that
        expired during a long pull is renewed the same way); a 2xx or 404 response is returned
        open, anything else raises."""
        url = f"{self.ref.base_url}/v2/{self.ref.repository}/{path}"
        for attempt in (0, 1):
            headers = {"Accept": accept} if accept else {}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            resp = get(url, headers)
            if resp.status == 401:
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                if attempt:  # a fresh token was refused
                    raise self._credentials_error()
                self._authorize(challenge)
                continue
            if resp.status == 403:
                resp.close()
                raise self._credentials_error()
            if resp.status == 404 or 200 <= resp.status < 300:
                return resp
            resp.close()
            raise ManagerError("W141", f"{url} answered HTTP {resp.status}")
        raise AssertionError("unreachable")
