"""Stores: the source of truth behind the catalog (``memory://``, ``sqlite:///PATH``)."""

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
from waypost.store.memory import MemoryStore
from waypost.store.sqlite import SqliteStore

__all__ = [
    "Delete",
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
    url: str, *, data_dir: Path | None = None, event_window_s: float | None = None
) -> Store:
    """Build the store a URL names: ``memory://`` or ``sqlite:///abs/path.db``
    (``sqlite://`` alone puts ``waypost.db`` in ``data_dir``)."""
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
    raise InvalidInput(
        f"store: {url!r} is not a store URL (use sqlite:///PATH or memory://)", field="store"
    )
