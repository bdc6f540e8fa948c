"""The public surface is ``waypost.__all__``: sorted, importable, and changed on purpose only."""

from __future__ import annotations

import waypost

PUBLIC = [
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


def test_all_is_sorted_and_exactly_the_public_api() -> None:
    assert waypost.__all__ == sorted(waypost.__all__)
    assert waypost.__all__ == PUBLIC


def test_every_exported_name_exists_and_has_a_docstring() -> None:
    for name in waypost.__all__:
        obj = getattr(waypost, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"


def test_every_error_class_waypost_defines_is_a_waypost_error() -> None:
    """One error tree: every exception class in the package is a ``WaypostError``, so
    ``except WaypostError`` catches whatever Waypost raises on purpose (discovery
    sources, registry entries, event streams, actor frames and proxy upstreams once
    raised plain ``Exception``/``ValueError``s); each has a code, an HTTP status and an
    exit code of its own, and the ones an SDK user meets are exported."""
    import importlib
    import inspect
    import pkgutil

    from waypost.errors import BY_CODE, WaypostError

    found = []
    for info in pkgutil.walk_packages(waypost.__path__, "waypost."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.append(obj)
    strays = [f"{c.__module__}.{c.__name__}" for c in found if not issubclass(c, WaypostError)]
    assert not strays, strays
    for cls in BY_CODE.values():
        assert cls.__name__ in waypost.__all__, cls.__name__
        assert 400 <= cls.http_status < 600
        assert cls.exit_code > 0
