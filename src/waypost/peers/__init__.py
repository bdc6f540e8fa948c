"""Node discovery: servers found from registry files, peers files, URLs, a server's
address, DNS SRV/TXT records and mDNS, merged, checked and probed (``Discovery``)."""

from __future__ import annotations

from waypost.peers.base import Context, Source, SourceError, parse_source
from waypost.peers.entry import NodeEntry, entry_of
from waypost.peers.manager import Discovery, Peer, gather_sources

__all__ = [
    "Context",
    "Discovery",
    "NodeEntry",
    "Peer",
    "Source",
    "SourceError",
    "entry_of",
    "gather_sources",
    "parse_source",
]
