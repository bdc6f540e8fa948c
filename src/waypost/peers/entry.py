"""A node registry entry: how to reach one Waypost node, as its ``node-registry.json`` says.

    {"node_id": "srv-1", "api": "http://10.0.0.5:8500",
     "addresses": ["10.0.0.5:8500", "10.0.0.5:8600"], "role": "server",
     "version": "0.1.0", "written_at": "2026-11-24T06:00:00Z",
     "public_key": "...", "signature": "..."}

A registry file holds one entry; a peers file a JSON list of them. Both are read
leniently (style.md: stored records are read leniently): unknown fields are kept (and
covered by a signature) but ignored, and the older shape Blixard's files have
(``cluster_node_id``, ``address``, ``direct_addresses``) is understood. What cannot name
a node and an address is refused with the reason.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from waypost.errors import InvalidInput

REGISTRY_FILE = "node-registry.json"
PEERS_FILE = "discovery-peers.json"
_HOST_PORT = re.compile(r"\A(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}\Z")


class EntryError(InvalidInput, ValueError):
    """A registry entry that cannot be used, and why."""

    code = "bad_registry_entry"


class NodeEntry(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One node: its id, its API's URL, every address it serves on, its role."""

    node_id: str
    api: str
    addresses: list[str] = msgspec.field(default_factory=list)
    role: str = "server"
    version: str = ""
    written_at: str = ""
    public_key: str | None = None
    signature: str | None = None

    @property
    def signed(self) -> bool:
        return self.signature is not None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_of(address: str) -> str:
    """``HOST:PORT`` as an API URL (a URL is kept as it is)."""
    address = address.strip()
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if not _HOST_PORT.match(address):
        raise EntryError(f"{address!r} is neither a URL nor HOST:PORT")
    return f"http://{address}"


def entry_of(raw: object) -> NodeEntry:
    """An entry from decoded JSON, leniently; EntryError says what is missing."""
    if not isinstance(raw, Mapping):
        raise EntryError(f"an entry must be a JSON object, not {type(raw).__name__}")
    node_id = raw.get("node_id", raw.get("cluster_node_id"))
    if node_id is None or isinstance(node_id, bool) or str(node_id).strip() == "":
        raise EntryError("node_id: required")
    api = raw.get("api")
    addresses = [str(a) for a in raw.get("addresses") or raw.get("direct_addresses") or []]
    if not api:
        first = raw.get("address") or (addresses[0] if addresses else None)
        if not first:
            raise EntryError(f"node {node_id}: no api URL and no address")
        api = str(first)
    try:
        url = api_of(str(api))
    except EntryError as exc:
        raise EntryError(f"node {node_id}: api: {exc}") from None

    def text(key: str) -> str:
        value = raw.get(key)
        return str(value) if value is not None else ""

    return NodeEntry(
        node_id=str(node_id),
        api=url,
        addresses=addresses,
        role=text("role") or "server",
        version=text("version"),
        written_at=text("written_at") or text("discovered_at"),
        public_key=raw.get("public_key") if isinstance(raw.get("public_key"), str) else None,
        signature=raw.get("signature") if isinstance(raw.get("signature"), str) else None,
    )


def decode(data: bytes, where: str) -> list[dict[str, Any]]:
    """The raw entries of a registry file (one object) or a peers file (a list, or an
    object with ``peers``); EntryError when it is not JSON of either shape."""
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise EntryError(f"{where}: not JSON ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("peers"), list):
        doc = doc["peers"]
    if isinstance(doc, dict):
        return [doc]
    if isinstance(doc, list):
        return [d for d in doc if isinstance(d, dict)]
    raise EntryError(f"{where}: expected an entry or a list of entries")


def write_registry(path: Path, entry: Mapping[str, Any]) -> None:
    """Write an entry atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(dict(entry)), indent=2) + b"\n")
    os.replace(tmp, path)


def registry_entry(
    node_id: str,
    api: str,
    addresses: list[str],
    *,
    role: str,
    version: str,
) -> dict[str, Any]:
    """A fresh entry as written to ``node-registry.json`` (unsigned)."""
    return {
        "node_id": node_id,
        "api": api,
        "addresses": addresses,
        "role": role,
        "version": version,
        "written_at": now_rfc3339(),
    }
