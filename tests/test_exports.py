"""The public surface is ``waypost.__all__``: sorted, importable, and changed on purpose only."""

from __future__ import annotations

import waypost

PUBLIC = [
    "AsyncClient",
    "AsyncKeepAlive",
    "AsyncKeptLease",
    "Check",
    "CheckRow",
    "CheckState",
    "Client",
    "Conflict",
    "Event",
    "FlapPolicy",
    "Gone",
    "Instance",
    "InvalidInput",
    "KeepAlive",
    "KeptLease",
    "Kind",
    "Lease",
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
    "Unauthorized",
    "Unavailable",
    "WaypostError",
    "__version__",
    "matches",
    "parse_query",
]


def test_all_is_sorted_and_exactly_the_public_api() -> None:
    assert waypost.__all__ == sorted(waypost.__all__)
    assert waypost.__all__ == PUBLIC


def test_every_exported_name_exists_and_has_a_docstring() -> None:
    for name in waypost.__all__:
        obj = getattr(waypost, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"
