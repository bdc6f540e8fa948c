"""Waypost: service discovery and registration.

The public API is what ``__all__`` names; everything else may change.
"""

from __future__ import annotations

from waypost._version import __version__
from waypost.client import AsyncClient, AsyncKeepAlive, Client, KeepAlive, QueryResult
from waypost.errors import (
    Conflict,
    Gone,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    StoreError,
    Unauthorized,
    Unavailable,
    WaypostError,
)
from waypost.model import (
    Check,
    Event,
    Instance,
    Kind,
    Node,
    NodeStatus,
    Query,
    ServiceSummary,
    Status,
)

__all__ = [
    "AsyncClient",
    "AsyncKeepAlive",
    "Check",
    "Client",
    "Conflict",
    "Event",
    "Gone",
    "Instance",
    "InvalidInput",
    "KeepAlive",
    "Kind",
    "Node",
    "NodeStatus",
    "NotFound",
    "PayloadTooLarge",
    "Query",
    "QueryResult",
    "ServiceSummary",
    "Status",
    "StoreError",
    "Unauthorized",
    "Unavailable",
    "WaypostError",
    "__version__",
]
