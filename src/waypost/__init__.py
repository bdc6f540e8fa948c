"""Waypost: service discovery and registration.

The public API is what ``__all__`` names; everything else may change. The clients are
imported on first use, so that ``import waypost.model`` (or the catalog) does not pull
in aiohttp and httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from waypost._version import __version__
from waypost.errors import (
    Conflict,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    StoreError,
    StoreFull,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    UpstreamFailed,
    UpstreamTimeout,
    WaypostError,
)
from waypost.model import (
    Check,
    CheckRow,
    CheckState,
    Event,
    FlapPolicy,
    Instance,
    Kind,
    Lease,
    Node,
    NodeStatus,
    Query,
    Route,
    RouteMatch,
    ServiceCheck,
    ServiceConfig,
    ServiceSummary,
    Status,
)
from waypost.query import matches, parse_query

if TYPE_CHECKING:
    from waypost.actors.errors import (
        ActorNotFound,
        AuthenticationFailed,
        ConnectionTimeout,
        MessageTooLarge,
        NameConflict,
        NetworkNotFound,
    )
    from waypost.client import (
        AsyncClient,
        AsyncKeepAlive,
        AsyncKeptLease,
        Client,
        KeepAlive,
        KeptLease,
        QueryResult,
    )

_LAZY = {
    name: "waypost.client"
    for name in (
        "AsyncClient",
        "AsyncKeepAlive",
        "AsyncKeptLease",
        "Client",
        "KeepAlive",
        "KeptLease",
        "QueryResult",
    )
}
# The actor networks' errors (importing waypost.actors starts its WebSocket stack).
_LAZY |= {
    name: "waypost.actors.errors"
    for name in (
        "ActorNotFound",
        "AuthenticationFailed",
        "ConnectionTimeout",
        "MessageTooLarge",
        "NameConflict",
        "NetworkNotFound",
    )
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'waypost' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ActorNotFound",
    "AsyncClient",
    "AsyncKeepAlive",
    "AsyncKeptLease",
    "AuthenticationFailed",
    "Check",
    "CheckRow",
    "CheckState",
    "Client",
    "Conflict",
    "ConnectionTimeout",
    "Event",
    "FlapPolicy",
    "Forbidden",
    "Gone",
    "Instance",
    "InvalidInput",
    "KeepAlive",
    "KeptLease",
    "Kind",
    "Lease",
    "MessageTooLarge",
    "NameConflict",
    "NetworkNotFound",
    "Node",
    "NodeStatus",
    "NotFound",
    "PayloadTooLarge",
    "Query",
    "QueryResult",
    "Route",
    "RouteMatch",
    "ServiceCheck",
    "ServiceConfig",
    "ServiceSummary",
    "Status",
    "StoreError",
    "StoreFull",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "UpstreamFailed",
    "UpstreamTimeout",
    "WaypostError",
    "__version__",
    "matches",
    "parse_query",
]
