"""``HotPath.resolve`` against aiohttp's own router: whatever the hot path takes, the
application would have routed to the same handler with the same identifier."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.api.app import API, build_app
from waypost.api.hot import HotPath
from waypost.catalog import Catalog
from waypost.registry import Registry
from waypost.store.memory import MemoryStore

SEGMENTS = [
    "api", "v1", "services", "instances", "leases", "nodes", "heartbeat", "keepalive",
    "status", "health", "check", "config", "batch", "web", "web-1", "123", "", "..", ".", "%77eb",
    "WEB", "a_b", "x" * 64, "health?x=1", "web?tag=a&tag=b",
]  # fmt: skip

APP = build_app(Registry(MemoryStore(), Catalog(), node_name="n"))
HOT = HotPath(APP[API], APP._handle)
# The application's route for each hot handler (its canonical path).
CANONICAL = {
    "list_instances": "/api/v1/instances",
    "list_services": "/api/v1/services",
    "list_nodes": "/api/v1/nodes",
    "health": "/health",
    "status": "/status",
    "service_instances": "/api/v1/services/{name}",
    "get_instance": "/api/v1/instances/{id}",
    "put_instance": "/api/v1/instances/{id}",
    "delete_instance": "/api/v1/instances/{id}",
    "heartbeat": "/api/v1/instances/{id}/heartbeat",
    "put_status": "/api/v1/instances/{id}/status",
    "put_health": "/api/v1/instances/{id}/health",
    "keepalive_lease": "/api/v1/leases/{id}/keepalive",
    "post_batch": "/api/v1/batch",
}

METHODS = {
    name: "PUT" if name.startswith("put") or name in ("heartbeat", "keepalive_lease") else "GET"
    for name in CANONICAL
} | {"delete_instance": "DELETE", "post_batch": "POST"}


def routed(method: str, target: str) -> UrlMappingMatchInfo | None:
    request = make_mocked_request(method, target, app=APP)
    match = asyncio.run(APP.router.resolve(request))
    return match if isinstance(match, UrlMappingMatchInfo) else None


targets = st.one_of(
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map(lambda s: "/" + "/".join(s)),
    st.lists(st.sampled_from(SEGMENTS), max_size=3).map(lambda s: "/api/v1/" + "/".join(s)),
    st.sampled_from(["/status", "/health", "/api/v1/services", "/api/v1/nodes?index=3"]),
)


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "POST", "HEAD"]), target=targets)
def test_the_hot_path_routes_as_the_application_does(method: str, target: str) -> None:
    found = HOT.resolve(method, target)
    match = routed(method, target)
    if found is None:
        # Declined: fine whatever the router does, except a plain hot route left behind.
        # ("//host/path" is an authority to the mocked request, not a path.)
        if match is not None and "%" not in target and not target.startswith("//"):
            canonical = match.route.resource.canonical if match.route.resource else ""
            params = list(match.values())
            hot_routes = {(m, c) for m, c in zip(METHODS.values(), CANONICAL.values(), strict=True)}
            assert (method, canonical) not in hot_routes or any(
                p in ("", ".", "..") or not p.replace("-", "").isalnum() or len(p) > 63
                for p in params
            ), (method, target, canonical)
        return
    handler, ident, route = found
    assert match is not None, (method, target)
    assert match.route.method == method
    assert match.route.resource is not None
    assert match.route.resource.canonical == CANONICAL[handler.__name__]
    assert route == match.route.resource.canonical  # the route /metrics counts under
    assert list(match.values()) == ([ident] if ident else [])


def test_each_hot_route_is_resolved() -> None:
    for method, target, name, ident in [
        ("GET", "/api/v1/services/web?tag=x", "service_instances", "web"),
        ("GET", "/api/v1/instances/web-1", "get_instance", "web-1"),
        ("PUT", "/api/v1/instances/web-1", "put_instance", "web-1"),
        ("DELETE", "/api/v1/instances/web-1", "delete_instance", "web-1"),
        ("PUT", "/api/v1/instances/web-1/heartbeat", "heartbeat", "web-1"),
        ("PUT", "/api/v1/instances/web-1/status", "put_status", "web-1"),
        ("PUT", "/api/v1/instances/web-1/health", "put_health", "web-1"),
        ("PUT", "/api/v1/leases/77/keepalive", "keepalive_lease", "77"),
        ("GET", "/api/v1/instances?service=web", "list_instances", ""),
        ("GET", "/api/v1/services?index=4", "list_services", ""),
        ("GET", "/api/v1/nodes", "list_nodes", ""),
        ("GET", "/status", "status", ""),
        ("GET", "/health", "health", ""),
        ("POST", "/api/v1/batch", "post_batch", ""),
    ]:
        found = HOT.resolve(method, target)
        assert found is not None, target
        assert (found[0].__name__, found[1]) == (name, ident)
    for method, target in [
        ("HEAD", "/api/v1/services/web"),
        ("GET", "/api/v1/services/%77eb"),
        ("GET", "/api/v1/services/"),
        ("GET", "/api/v1/services/web/"),
        ("GET", "/api/v1/services/web/config"),
        ("POST", "/api/v1/instances/web-1/check"),
        ("GET", "/api/v1/events"),
        ("GET", "http://host/status"),
    ]:
        assert HOT.resolve(method, target) is None, target
