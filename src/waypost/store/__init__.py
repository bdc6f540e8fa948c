"""Stores: the source of truth behind the catalog (``memory://``, ``sqlite:///PATH``,
``etcd://HOST:PORT,HOST:PORT[/prefix/]``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from waypost.errors import InvalidInput
from waypost.store.base import (
    DEFAULT_EVENT_WINDOW_S,
    Delete,
    Grant,
    LeaseState,
    Op,
    Put,
    Revoke,
    Store,
)
from waypost.store.etcd import EtcdSecurity, EtcdStore, parse_endpoints
from waypost.store.memory import MemoryStore
from waypost.store.sqlite import SqliteStore

__all__ = [
    "Delete",
    "EtcdSecurity",
    "EtcdStore",
    "Grant",
    "LeaseState",
    "MemoryStore",
    "Op",
    "Put",
    "Revoke",
    "SqliteStore",
    "Store",
    "open_store",
]


def open_store(
    url: str,
    *,
    data_dir: Path | None = None,
    event_window_s: float | None = None,
    etcd_prefix: str = "/waypost/",
    etcd_security: EtcdSecurity | None = None,
) -> Store:
    """Build the store a URL names: ``memory://``, ``sqlite:///abs/path.db``
    (``sqlite://`` alone puts ``waypost.db`` in ``data_dir``), or
    ``etcd://h1:2379,h2:2379`` (keys under ``/waypost/``; a path after the endpoints sets
    another prefix: ``etcd://h1:2379/team-a/``, as ``etcd_prefix`` does); ``etcds://``
    is the same over TLS (``etcd_security`` says which CA, client certificate, user)."""
    window_s = DEFAULT_EVENT_WINDOW_S if event_window_s is None else event_window_s
    if url in ("memory", "memory://"):
        return MemoryStore(event_window_s=window_s)
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if rest in ("", "/"):
            path = (data_dir or Path(".waypost")) / "waypost.db"
        else:
            # sqlite:///abs/path → /abs/path ; sqlite://rel/path → rel/path
            path = Path(rest[1:] if rest.startswith("//") else rest)
        return SqliteStore(path, event_window_s=window_s)
    if url.startswith(("etcd://", "etcds://")):
        secure = url.startswith("etcds://")
        rest = url.split("://", 1)[1]
        hosts, slash, tail = rest.partition("/")
        prefix = "/" + tail if slash else etcd_prefix
        if not prefix.endswith("/"):
            prefix += "/"
        security = etcd_security or EtcdSecurity()
        if secure and not security.tls:
            security = dataclasses.replace(security, tls=True)
        return EtcdStore(parse_endpoints(hosts), prefix=prefix, security=security)
    raise InvalidInput(
        f"store: {url!r} is not a store URL (use sqlite:///PATH, etcd://HOST:PORT, "
        "etcds://HOST:PORT or memory://)",
        field="store",
    )
