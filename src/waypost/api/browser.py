"""Writes a web page must not make: a server on a developer's machine answers whatever
reaches it, and a browser will send a page's requests there.

- **Cross-origin writes** (CSRF): a browser names the page that made a request in
  ``Origin`` (every cross-origin POST, PUT and DELETE, simple requests included). A write
  whose ``Origin`` is not the server itself (the dashboard), nor one the operator allows
  (``--allowed-origins``), is refused. curl, the SDK and the Consul clients send none.
- **DNS rebinding**: a page on ``evil.example`` whose name now points at ``127.0.0.1``
  reaches a local server as ``Host: evil.example``. A server listening on loopback takes
  writes only for IP literals, ``localhost`` and the names ``--allowed-hosts`` lists.
- **Bodies no API client sends**: ``text/plain`` and ``multipart/form-data`` (what a page
  can send without asking first) are refused on the native API's writes with 415.

As Consul's and Vault's local listeners: refused with 403, and the audit log says why.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

from waypost.errors import Forbidden, UnsupportedMediaType
from waypost.health.targets import is_loopback_host

# Content types a browser sends without a CORS preflight, that no API client needs.
_BROWSER_ONLY = ("text/plain", "multipart/form-data")


def _hostname(host: str) -> str:
    """``host[:port]`` (or ``[v6]:port``) as a lower-case name without the port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a listener's host (``127.0.0.1``, ``::1``, ``localhost``) is loopback."""
    return is_loopback_host(_hostname(host) if host else "127.0.0.1")


class BrowserGuard:
    """Checks each write for what only a web page would send."""

    def __init__(
        self,
        *,
        loopback: bool,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> None:
        hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self.any_host = "*" in hosts or (not loopback and not hosts)
        self.hosts = hosts - {"*"}
        origins = {o.strip().lower().rstrip("/") for o in allowed_origins if o.strip()}
        self.any_origin = "*" in origins
        self.origins = origins - {"*"}

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        name = _hostname(host)
        return (
            _is_ip(name)
            or is_loopback_host(name)
            or name in self.hosts
            or host.strip().lower() in self.hosts
        )

    def origin_allowed(self, origin: str, host: str) -> bool:
        if self.any_origin:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        # Same origin: the page was served by this server (the dashboard).
        return bool(parts.netloc) and parts.netloc == host.strip().lower()

    def check(self, request: web.BaseRequest, *, native: bool) -> None:
        """Forbidden (or 415) for a write only a browser page would make."""
        host = request.headers.get("Host", "")
        if not self.host_allowed(host):
            raise Forbidden(
                f"Host {host!r} is not one this server answers writes for (DNS rebinding "
                "guard; add it with --allowed-hosts)",
                field="host",
            )
        origin = request.headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin, host):
            raise Forbidden(
                f"a write from the web page at {origin!r} is refused (cross-origin; allow "
                "it with --allowed-origins)",
                field="origin",
            )
        if native:
            ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if ctype in _BROWSER_ONLY:
                raise UnsupportedMediaType(
                    f"Content-Type {ctype}: the API takes JSON (application/json)",
                    field="body",
                )
