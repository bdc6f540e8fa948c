"""Routing rules applied: which service (and which of its endpoints) a request goes to.

Pure: a ``RouteTable`` is built from the registry's routes and asked about one request at
a time (method, path, host, a header getter), so the client and the proxy route alike.
Routes are tried by priority (lowest first), then name; the first whose every given part
holds wins. Regular expressions are compiled once per table and matched against the
whole header value (as Envoy's ``safe_regex``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from waypost.model import Route

from .balancers import Endpoint

HeaderGetter = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    route: Route
    exact_hosts: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    methods: frozenset[str]
    headers: tuple[tuple[str, str], ...]
    regexes: tuple[tuple[str, re.Pattern[str]], ...]

    def matches(self, method: str, path: str, host: str, header: HeaderGetter) -> bool:
        m = self.route.match
        if (self.exact_hosts or self.suffixes) and not (
            host in self.exact_hosts or any(host.endswith(s) for s in self.suffixes)
        ):
            return False
        if m.path_prefix is not None and not path.startswith(m.path_prefix):
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        for name, value in self.headers:
            if header(name) != value:
                return False
        for name, expr in self.regexes:
            got = header(name)
            if got is None or expr.fullmatch(got) is None:
                return False
        return True


def _compile(route: Route) -> _Compiled:
    m = route.match
    hosts = [h.lower() for h in m.hosts]
    return _Compiled(
        route=route,
        exact_hosts=frozenset(h for h in hosts if not h.startswith("*.")),
        suffixes=tuple(h[1:] for h in hosts if h.startswith("*.")),
        methods=frozenset(m.methods),
        headers=tuple(m.headers.items()),
        regexes=tuple((name, re.compile(expr)) for name, expr in m.headers_regex.items()),
    )


def host_of(value: str | None) -> str:
    """The host name a Host header names: lower case, without the port."""
    if not value:
        return ""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RouteTable:
    """The routes in the order they are tried; ``match()`` gives the first that holds."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        ordered = sorted(routes, key=lambda r: (r.priority, r.name))
        compiled: list[_Compiled] = []
        for r in ordered:
            try:
                compiled.append(_compile(r))
            except re.error:  # stored before validation existed: skip it, never fail
                continue
        self._routes = tuple(compiled)
        self.routes: tuple[Route, ...] = tuple(c.route for c in compiled)

    def __len__(self) -> int:
        return len(self._routes)

    def match(
        self,
        method: str,
        path: str,
        *,
        host: str = "",
        headers: HeaderGetter | Mapping[str, str] | None = None,
    ) -> Route | None:
        """The first route the request matches, or None. ``host`` as ``host_of`` gives
        it; ``headers``: a case-insensitive getter, or a mapping (looked up in any case)."""
        header = _getter(headers)
        for c in self._routes:
            if c.matches(method, path, host, header):
                return c.route
        return None

    def for_host(self, host: str) -> RouteTable:
        """The routes that name ``host`` among their hosts (a client's routes for the
        service it calls), in the same order."""
        host = host.lower()
        table = RouteTable()
        picked = tuple(
            c
            for c in self._routes
            if host in c.exact_hosts or any(host.endswith(s) for s in c.suffixes)
        )
        table._routes = picked
        table.routes = tuple(c.route for c in picked)
        return table


def _getter(headers: HeaderGetter | Mapping[str, str] | None) -> HeaderGetter:
    if headers is None:
        return lambda name: None
    if isinstance(headers, Mapping):
        lowered = {k.lower(): v for k, v in headers.items()}
        return lambda name: lowered.get(name.lower())
    return headers


def subset(endpoints: Sequence[Endpoint], wanted: Mapping[str, str]) -> list[Endpoint]:
    """The endpoints whose meta holds every pair of ``wanted`` (all when it is empty)."""
    if not wanted:
        return list(endpoints)
    items = tuple(wanted.items())
    return [e for e in endpoints if all(e.meta.get(k) == v for k, v in items)]


def rewrite(route: Route, path: str) -> str:
    """The path to send on: without the matched prefix when the route strips it."""
    prefix = route.match.path_prefix
    if not route.strip_prefix or not prefix:
        return path
    rest = path[len(prefix) :]
    return rest if rest.startswith("/") else "/" + rest
