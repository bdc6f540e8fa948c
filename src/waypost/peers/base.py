"""What every discovery source is: a name (as the user gave it) and ``discover()``, which
returns raw registry entries (decoded JSON objects, checked by the manager). Sources do
their own I/O and nothing else; a source that fails raises ``SourceError`` and the others
go on.

``parse_source(text)`` turns what a user writes after ``--join`` into a source:

    mdns                              mDNS/DNS-SD on the local network
    srv:_waypost._tcp.example.com     DNS SRV (and TXT) records
    http://host/peers.json            a URL serving a registry or peers file
    10.0.0.5:8500                     a server's API (asked for its registry entry)
    /shared/node-registry.json        a registry file or a peers file
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from waypost.errors import Unavailable

PROVISIONAL = "_provisional"  # marks an entry made up from an address (no node answered)
_HOST_PORT = re.compile(r"\A(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}\Z")


class SourceError(Unavailable):
    """A source that could not be read this time, and why."""

    code = "discovery_source_failed"


@dataclass
class Context:
    """What sources share during one discovery round."""

    session: aiohttp.ClientSession
    timeout_s: float = 2.0
    dns_resolver: tuple[str, int] | None = None
    mdns_browse_s: float = 1.5
    extra: dict[str, Any] = field(default_factory=dict)
    # Sent to servers' own API only (the token, if any), never to other sources' URLs.
    api_headers: dict[str, str] = field(default_factory=dict)


class Source(Protocol):
    name: str

    async def discover(self, ctx: Context) -> list[dict[str, Any]]: ...


def parse_source(text: str) -> Source:
    """The source ``text`` names (see the module's doc); ValueError when it names none."""
    from . import api, dns, files, http, mdns

    spec = text.strip()
    if not spec:
        raise ValueError("an empty source")
    if spec == "mdns":
        return mdns.MdnsSource()
    if spec.startswith("srv:"):
        name = spec[4:].strip()
        if not name:
            raise ValueError(f"{text!r}: give the SRV name after srv:")
        return dns.SrvSource(name)
    if spec.startswith(("http://", "https://")):
        return http.UrlSource(spec)
    if _HOST_PORT.match(spec) and not Path(spec).exists():
        return api.ApiSource(spec)
    return files.FileSource(Path(spec).expanduser())
