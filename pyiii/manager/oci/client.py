"""A distribution-API client with anonymous Bearer tokens (spec/cli.md §9.6 "Auth").

Requests go through the registry layer's GET (its URL rules: HTTPS, loopback HTTP, checked
redirects that never carry the token to another host; its timeouts and retries). Only public
images are pulled: a Basic challenge or a refused token is W141.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from ..registry.errors import ManagerError
from ..registry.httpget import Response, open_url
from .reference import Reference

_PARAM = re.compile(r'(\w+)="([^"]*)"')
TOKEN_LIMIT = 1024 * 1024


def get(url: str, headers: dict[str, str]) -> Response:
    """The registry layer's checked GET (redirects drop ``Authorization`` when the host
    changes; retries on connection errors and 5xx), with this client's error code."""
    return open_url(url, headers=headers, code="W141", hint="check the image reference and your network")


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
