"""``AsyncClient.http(service)`` and ``Client.http(service)``: call a service by name,
with every traffic policy applied.

    async with client.http("user-api") as api:
        resp = await api.get("/users/7")

    with client.http("user-api") as api:        # blocking code
        resp = api.get("/users/7")

The service's routes come first: a route whose hosts name the service and whose match
holds sends the request to its service (and subset, and stripped path) instead.

Each request takes the service's view from the watch-fed cache, keeps the healthy
endpoints (or all of them below the panic threshold), picks a side of the split, drops
the endpoints whose breaker is open (half-open ones get one probe at a time), and lets
the service's balancer pick among the rest. A failed attempt (a 5xx, a refused or reset
connection, a per-try timeout) counts against the endpoint's breaker and, when the retry
policy allows it and the retry budget has room, is tried again on another endpoint
after a jittered backoff, within the request's overall deadline. The caller sees one
answer: the first success, or the last failure.

Policies come from the service's config in the registry and follow it live; a service
with none gets the one-liner's defaults: round robin, outlier detection at 5 consecutive
errors for 30 s (at most half the endpoints out), two retries of idempotent methods on
5xx and connect failure, each to another endpoint.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx

from waypost.errors import UpstreamFailed
from waypost.model import Route, ServiceConfig
from waypost.traffic import Endpoint
from waypost.traffic.exchange import Attempt, Exchange, Policies, endpoint_stats, prune
from waypost.traffic.routes import RouteTable, rewrite

if TYPE_CHECKING:
    from waypost.client.cache import AsyncServiceCache, ServiceCache, ServiceView


@dataclass(slots=True)
class HttpResponse:
    """A service's answer, read whole: ``status``, ``headers``, ``body``; ``endpoint``
    that gave it and ``attempts`` it took."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    endpoint: Endpoint
    attempts: int

    def json(self) -> Any:
        import msgspec

        return msgspec.json.decode(self.body)

    @property
    def ok(self) -> bool:
        return self.status < 400


class _Failure(UpstreamFailed):
    """One attempt failed (``kind`` in the retry policy's words); caught per attempt."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class _Caller:
    """What the async and the blocking caller share: the policy objects they keep per
    service, and their counters."""

    service: str
    zone: str
    _rng: random.Random
    _policies: dict[str, Policies]
    #: The monotonic clock breakers, retry budgets and ejection times read; a test sets a
    #: ``waypost.testing.ManualClock`` to move them without waiting.
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def _held(self, service: str) -> ServiceView | None:
        raise NotImplementedError

    def policies(self, config: ServiceConfig | None, service: str | None = None) -> Policies:
        """The policy objects for ``service``'s ``config`` (default: this one's); kept
        (with their state) while it is the same config."""
        name = service or self.service
        previous = self._policies.get(name)
        p = Policies.build(name, config, zone=self.zone, rng=self._rng, previous=previous)
        if p is not previous:
            self._policies[name] = p
            prune(self._policies, lambda n: n == self.service or self._held(n) is not None)
        return p

    def stats(self) -> dict[str, object]:
        """Each service this caller reached (the service, and those its routes sent
        requests to): its endpoints' counters and breaker states, and the view's age."""
        now = self.clock()
        out: dict[str, object] = {}
        for name, p in sorted(self._policies.items()):
            view = self._held(name)
            if view is not None:
                out[name] = {
                    "stale": view.stale,
                    "age_s": round(view.age_s(), 3),
                    "endpoints": endpoint_stats(p, view.endpoints, now),
                }
        return out


class ServiceHttp(_Caller):
    """Requests to one service (``AsyncClient.http(service)``)."""

    def __init__(
        self,
        cache: AsyncServiceCache,
        service: str,
        *,
        zone: str = "",
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        policies: dict[str, Policies] | None = None,
    ) -> None:
        """``policies``: the policy objects by service, shared by every ``http()`` of one
        client, so breakers, balancer state and retry budgets outlive one ``with``."""
        self.cache = cache
        self.service = service
        self.zone = zone
        self._session = session
        self._own_session = session is None
        self._rng = rng or random.Random()
        self._policies: dict[str, Policies] = {} if policies is None else policies
        self._routes: tuple[RouteTable, RouteTable] | None = None

    async def __aenter__(self) -> ServiceHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One pool, keyed by endpoint (host:port): keep-alive connections per endpoint.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0)
            )
        return self._session

    def _held(self, service: str) -> ServiceView | None:
        return self.cache.held(service)

    async def route(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[str, Route | None]:
        """The service a request goes to and the route that sent it there (None: no
        route for this service matched; it goes to the service itself)."""
        table = await self.cache.routes()
        if table is None or not len(table):
            return self.service, None
        if self._routes is None or self._routes[0] is not table:
            self._routes = (table, table.for_host(self.service))
        route = self._routes[1].match(method, path, host=self.service, headers=headers)
        return (route.service, route) if route is not None else (self.service, None)

    # --- requests ------------------------------------------------------------------------

    async def get(self, path: str, **kw: Any) -> HttpResponse:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> HttpResponse:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> HttpResponse:
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> HttpResponse:
        return await self.request("DELETE", path, **kw)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        json: Any = None,
        hash_key: str | None = None,
    ) -> HttpResponse:
        """Send ``method path`` to an endpoint of the service (or of the service a route
        sends it to), retrying as its policy says. ``hash_key``: the key for consistent
        hashing (default: from the request, as the policy's ``hash_on`` names)."""
        if json is not None:
            import msgspec

            data = msgspec.json.encode(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        method = method.upper()
        target, route = await self.route(method, path, headers)
        if route is not None:
            path = rewrite(route, path)
        view = await self.cache.get(target)
        p = self.policies(view.config, target)
        key = hash_key if hash_key is not None else _key_of(p.hash_on, headers, params)
        ex = Exchange(
            p,
            view.endpoints,
            view.versions(),
            method,
            key,
            now=self.clock(),
            subset=route.subset if route is not None else None,
            path=path,
        )
        try:
            while True:
                attempt = ex.next(self.clock())
                failure: _Failure | None = None
                resp: HttpResponse | None = None
                try:
                    resp = await self._send(method, attempt, path, headers, params, data)
                except _Failure as exc:
                    failure = exc
                wait = ex.finished(
                    attempt,
                    self.clock(),
                    status=resp.status if resp is not None else None,
                    failure=failure.kind if failure is not None else None,
                    detail=str(failure) if failure is not None else "",
                    rng=self._rng,
                )
                if wait is None:
                    if resp is not None:
                        return resp
                    raise ex.failed()
                await asyncio.sleep(wait)
        finally:
            ex.close()

    async def _send(
        self,
        method: str,
        attempt: Attempt,
        path: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        data: bytes | None,
    ) -> HttpResponse:
        endpoint = attempt.endpoint
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        url = f"http://{host}:{endpoint.port}{path}"
        limit = attempt.timeout_s
        timeout = aiohttp.ClientTimeout(total=limit)
        try:
            async with self._pool().request(
                method, url, headers=headers, params=params, data=data, timeout=timeout
            ) as r:
                body = await r.read()
                return HttpResponse(r.status, dict(r.headers), body, endpoint, attempt.number + 1)
        except aiohttp.ClientConnectorError as exc:
            raise _Failure("connect-failure", str(exc)) from None
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {limit:g} s") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _Failure("reset", str(exc) or type(exc).__name__) from None


class SyncServiceHttp(_Caller):
    """Requests to one service from blocking code (``Client.http(service)``): the same
    routes, policies and attempts as ``ServiceHttp``, on httpx (keep-alive connections per
    endpoint). Thread-safe: picks and their bookkeeping happen under a lock."""

    def __init__(
        self,
        cache: ServiceCache,
        service: str,
        *,
        zone: str = "",
        session: httpx.Client | None = None,
        rng: random.Random | None = None,
        policies: dict[str, Policies] | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        """``policies`` and their ``lock``: shared by every ``http()`` of one client."""
        self.cache = cache
        self.service = service
        self.zone = zone
        self._session = session
        self._own_session = session is None
        self._rng = rng or random.Random()
        self._lock = lock or threading.Lock()
        self._policies: dict[str, Policies] = {} if policies is None else policies
        self._routes: tuple[RouteTable, RouteTable] | None = None

    def __enter__(self) -> SyncServiceHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_session and self._session is not None:
            self._session.close()
            self._session = None

    def _pool(self) -> httpx.Client:
        if self._session is None:
            self._session = httpx.Client(limits=httpx.Limits(max_connections=None))
        return self._session

    def _held(self, service: str) -> ServiceView | None:
        return self.cache.held(service)

    def route(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[str, Route | None]:
        table = self.cache.routes()
        if not len(table):
            return self.service, None
        with self._lock:
            if self._routes is None or self._routes[0] is not table:
                self._routes = (table, table.for_host(self.service))
            mine = self._routes[1]
        route = mine.match(method, path, host=self.service, headers=headers)
        return (route.service, route) if route is not None else (self.service, None)

    def get(self, path: str, **kw: Any) -> HttpResponse:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> HttpResponse:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> HttpResponse:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> HttpResponse:
        return self.request("DELETE", path, **kw)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        json: Any = None,
        hash_key: str | None = None,
    ) -> HttpResponse:
        """As ``ServiceHttp.request``."""
        if json is not None:
            import msgspec

            data = msgspec.json.encode(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        method = method.upper()
        target, route = self.route(method, path, headers)
        if route is not None:
            path = rewrite(route, path)
        view = self.cache.get(target)
        with self._lock:
            p = self.policies(view.config, target)
            key = hash_key if hash_key is not None else _key_of(p.hash_on, headers, params)
            ex = Exchange(
                p,
                view.endpoints,
                view.versions(),
                method,
                key,
                now=self.clock(),
                subset=route.subset if route is not None else None,
                path=path,
            )
        try:
            while True:
                with self._lock:
                    attempt = ex.next(self.clock())
                failure: _Failure | None = None
                resp: HttpResponse | None = None
                try:
                    resp = self._send(method, attempt, path, headers, params, data)
                except _Failure as exc:
                    failure = exc
                with self._lock:
                    wait = ex.finished(
                        attempt,
                        self.clock(),
                        status=resp.status if resp is not None else None,
                        failure=failure.kind if failure is not None else None,
                        detail=str(failure) if failure is not None else "",
                        rng=self._rng,
                    )
                if wait is None:
                    if resp is not None:
                        return resp
                    raise ex.failed()
                time.sleep(wait)
        finally:
            with self._lock:
                ex.close()

    def _send(
        self,
        method: str,
        attempt: Attempt,
        path: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        data: bytes | None,
    ) -> HttpResponse:
        e = attempt.endpoint
        host = f"[{e.address}]" if ":" in e.address else e.address
        url = f"http://{host}:{e.port}{path}"
        limit = attempt.timeout_s
        try:
            r = self._pool().request(
                method,
                url,
                headers=headers,
                params=params,
                content=data,
                timeout=httpx.Timeout(limit) if limit is not None else None,
            )
        except httpx.ConnectError as exc:
            raise _Failure("connect-failure", str(exc)) from None
        except httpx.TimeoutException:
            raise _Failure("timeout", f"no answer within {limit:g} s") from None
        except httpx.TransportError as exc:
            raise _Failure("reset", str(exc) or type(exc).__name__) from None
        return HttpResponse(r.status_code, dict(r.headers), r.content, e, attempt.number + 1)


def _key_of(
    hash_on: str, headers: Mapping[str, str] | None, params: Mapping[str, str] | None
) -> str | None:
    """The consistent-hash key a request carries (None: nothing to hash on)."""
    kind, _, name = hash_on.partition(":")
    if kind == "header" and headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        return lowered.get(name.lower())
    if kind == "query" and params:
        return params.get(name)
    if kind == "cookie" and headers:
        for k, v in headers.items():
            if k.lower() == "cookie":
                for part in v.split(";"):
                    cname, _, cvalue = part.strip().partition("=")
                    if cname == name:
                        return cvalue
    return None
