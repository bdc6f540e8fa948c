"""Stores: the source of truth behind the catalog (``memory://``, ``sqlite:///PATH``,
``etcd://HOST:PORT,HOST:PORT[/prefix/]``)."""

from __future__ import annotations

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
from waypost.store.etcd import EtcdStore, parse_endpoints
from waypost.store.memory import MemoryStore
from waypost.store.sqlite import SqliteStore

__all__ = [
    "Delete",
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
) -> Store:
    """Build the store a URL names: ``memory://``, ``sqlite:///abs/path.db``
    (``sqlite://`` alone puts ``waypost.db`` in ``data_dir``), or
    ``etcd://h1:2379,h2:2379`` (keys under ``/waypost/``; a path after the endpoints sets
    another prefix: ``etcd://h1:2379/team-a/``, as ``etcd_prefix`` does)."""
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
    if url.startswith("etcd://"):
        rest = url[len("etcd://") :]
        hosts, slash, tail = rest.partition("/")
        prefix = "/" + tail if slash else etcd_prefix
        if not prefix.endswith("/"):
            prefix += "/"
        return EtcdStore(parse_endpoints(hosts), prefix=prefix)
    raise InvalidInput(
        f"store: {url!r} is not a store URL (use sqlite:///PATH, etcd://HOST:PORT or memory://)",
        field="store",
    )
