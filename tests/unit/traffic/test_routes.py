"""Routing rules: order, every kind of match, subsets and prefix stripping; the table
against a plain reference (hypothesis); bad rules refused with their field named."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.model import Route, translate_validation_error
from waypost.traffic import Endpoint
from waypost.traffic.routes import RouteTable, host_of, rewrite, subset


def route(name: str, service: str = "svc", priority: int = 100, **match: object) -> Route:
    return msgspec.convert(
        {"name": name, "service": service, "priority": priority, "match": match}, Route
    )


def test_lowest_priority_first_then_name_and_first_match_wins() -> None:
    table = RouteTable(
        [
            route("z-any", "fallback", priority=1000),
            route("b", "second", priority=10, path_prefix="/api"),
            route("a", "first", priority=10, path_prefix="/api/v1"),
        ]
    )
    assert [r.name for r in table.routes] == ["a", "b", "z-any"]
    assert table.match("GET", "/api/v1/x").service == "first"  # type: ignore[union-attr]
    assert table.match("GET", "/api/v2").service == "second"  # type: ignore[union-attr]
    assert table.match("GET", "/other").service == "fallback"  # type: ignore[union-attr]
    assert RouteTable([route("a", path_prefix="/a")]).match("GET", "/b") is None


def test_hosts_exact_and_wildcard_without_port_and_case() -> None:
    table = RouteTable([route("h", hosts=["API.example.com", "*.apps.test"])])
    for host in ("api.example.com", "x.apps.test", "a.b.apps.test"):
        assert table.match("GET", "/", host=host) is not None, host
    for host in ("example.com", "apps.test", "xapi.example.com", ""):
        assert table.match("GET", "/", host=host) is None, host
    assert host_of("API.Example.com:8080") == "api.example.com"
    assert host_of("[::1]:8080") == "[::1]"
    assert host_of(None) == ""


def test_methods_exact_headers_and_regex_headers() -> None:
    table = RouteTable(
        [
            route(
                "r",
                methods=["GET", "HEAD"],
                headers={"X-Env": "canary"},
                headers_regex={"x-user": r"[a-z]+@beta\.example"},
            )
        ]
    )
    ok = {"x-env": "canary", "X-User": "ann@beta.example"}
    assert table.match("get", "/", headers=ok) is not None
    assert table.match("POST", "/", headers=ok) is None
    assert table.match("GET", "/", headers={**ok, "x-env": "prod"}) is None
    # The expression must match the whole value, as Envoy's safe_regex does.
    assert table.match("GET", "/", headers={**ok, "X-User": "ann@beta.example.org"}) is None
    assert table.match("GET", "/", headers={"x-env": "canary"}) is None
    low = {k.lower(): v for k, v in ok.items()}  # a getter, as the proxy passes one
    assert table.match("GET", "/", headers=lambda n: low.get(n.lower())) is not None


def test_for_host_keeps_the_routes_of_one_service_in_order() -> None:
    table = RouteTable(
        [
            route("other", hosts=["web"]),
            route("all", priority=5),
            route("two", priority=50, hosts=["api"]),
            route("one", priority=20, hosts=["*.internal", "api"]),
        ]
    )
    assert [r.name for r in table.for_host("api").routes] == ["one", "two"]
    assert [r.name for r in table.for_host("db.internal").routes] == ["one"]


def test_subset_and_rewrite() -> None:
    eps = [
        Endpoint("a", "10.0.0.1", 80, meta={"track": "beta", "zone": "z1"}),
        Endpoint("b", "10.0.0.2", 80, meta={"track": "stable"}),
    ]
    assert [e.id for e in subset(eps, {"track": "beta"})] == ["a"]
    assert [e.id for e in subset(eps, {"track": "beta", "zone": "z2"})] == []
    assert len(subset(eps, {})) == 2
    strip = msgspec.convert(
        {"service": "s", "match": {"path_prefix": "/admin"}, "strip_prefix": True}, Route
    )
    assert rewrite(strip, "/admin/users?x=1") == "/users?x=1"
    assert rewrite(strip, "/admin") == "/"
    keep = msgspec.convert({"service": "s", "match": {"path_prefix": "/admin"}}, Route)
    assert rewrite(keep, "/admin/users") == "/admin/users"


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"match": {"headers_regex": {"x-user": "("}}}, "match.headers_regex.x-user", "regular"),
        ({"match": {"hosts": ["bad host"]}}, "match.hosts[0]", "host name"),
        ({"match": {"methods": ["FETCH"]}}, "match.methods[0]", ""),
        ({"subset": {"bad key!": "x"}}, "subset", "meta keys"),
    ],
)
def test_bad_rules_are_refused_with_their_field(
    body: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(msgspec.json.encode({"service": "s", **body}), type=Route)
    err = translate_validation_error(info.value)
    assert err.field == field, err.message
    assert says in err.message


# --- the table against a reference ------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
HOSTS = st.sampled_from(["web", "api", "*.example.com", "x.example.com"])
PATHS = st.sampled_from(["/", "/api", "/api/v1", "/admin"])
HEADER_VALUES = st.sampled_from(["1", "2", "beta", "x1"])


@st.composite
def routes(draw: st.DrawFn) -> Route:
    match: dict[str, object] = {}
    if draw(st.booleans()):
        match["hosts"] = draw(st.lists(HOSTS, max_size=2))
    if draw(st.booleans()):
        match["path_prefix"] = draw(PATHS)
    if draw(st.booleans()):
        match["methods"] = draw(st.lists(st.sampled_from(["GET", "POST"]), max_size=2))
    if draw(st.booleans()):
        match["headers"] = {"x-a": draw(HEADER_VALUES)}
    if draw(st.booleans()):
        match["headers_regex"] = {"x-b": draw(st.sampled_from([r"\d", "b.*", "x?1"]))}
    return route(draw(NAMES), priority=draw(st.integers(0, 3)), **match)


def reference(
    rs: list[Route], method: str, path: str, host: str, headers: dict[str, str]
) -> Route | None:
    """The rules in words: by priority then name, the first whose every part holds."""
    by_name = {r.name: r for r in rs}  # a name names one route (the last written)
    for r in sorted(by_name.values(), key=lambda r: (r.priority, r.name)):
        m = r.match
        if m.hosts and not any(
            host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in m.hosts
        ):
            continue
        if m.path_prefix is not None and not path.startswith(m.path_prefix):
            continue
        if m.methods and method not in m.methods:
            continue
        if any(headers.get(k) != v for k, v in m.headers.items()):
            continue
        if any(
            k not in headers or re.fullmatch(v, headers[k]) is None
            for k, v in m.headers_regex.items()
        ):
            continue
        return r
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(routes(), max_size=6),
    st.sampled_from(["GET", "POST"]),
    PATHS,
    st.sampled_from(["web", "api", "x.example.com", "y.example.com", ""]),
    st.dictionaries(st.sampled_from(["x-a", "x-b"]), HEADER_VALUES),
)
def test_the_table_matches_the_reference(
    rs: list[Route], method: str, path: str, host: str, headers: dict[str, str]
) -> None:
    unique = list({r.name: r for r in rs}.values())
    got = RouteTable(unique).match(method, path, host=host, headers=headers)
    want = reference(rs, method, path, host, headers)
    assert (got.name if got else None) == (want.name if want else None)
