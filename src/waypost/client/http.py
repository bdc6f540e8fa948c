"""``AsyncClient.http(service)``: call a service by name, with every traffic policy applied.

    async with client.http("user-api") as api:
        resp = await api.get("/users/7")

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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from waypost.errors import Unavailable
from waypost.model import ServiceConfig
from waypost.traffic import Endpoint, Limits, OutlierDetector, eligible
from waypost.traffic.balancers import Balancer
from waypost.traffic.policy import (
    balancer_for,
    limits_policy,
    outlier_policy,
    retry_policy,
    split_for,
)
from waypost.traffic.retry import RetryBudget, RetryPolicy
from waypost.traffic.split import Split

if TYPE_CHECKING:
    from waypost.client.cache import AsyncServiceCache


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


@dataclass(slots=True)
class _Policies:
    """The objects applying one service's config; rebuilt when the config changes."""

    config: ServiceConfig | None
    balancer: Balancer
    retry: RetryPolicy
    outlier: OutlierDetector
    limits: Limits
    budget: RetryBudget
    split: Split | None
    hash_on: str = "client_ip"
    panic: float = 50.0


class _Failure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ServiceHttp:
    """Requests to one service (``AsyncClient.http(service)``)."""

    def __init__(
        self,
        cache: AsyncServiceCache,
        service: str,
        *,
        zone: str = "",
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cache = cache
        self.service = service
        self.zone = zone
        self._session = session
        self._own_session = session is None
        self._rng = rng or random.Random()
        self._policies: _Policies | None = None

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

    def policies(self, config: ServiceConfig | None) -> _Policies:
        """The policy objects for ``config``; kept (with their state) while it is the
        same config."""
        current = self._policies
        if current is not None and current.config == config:
            return current
        lb = config.load_balancer if config is not None else None
        cb = config.circuit_breaker if config is not None else None
        retry = retry_policy(config.retry if config else None, config.timeout if config else None)
        outlier = OutlierDetector(outlier_policy(cb))
        if current is not None and current.outlier.policy == outlier.policy:
            outlier = current.outlier  # same breaker settings: keep their state
        self._policies = _Policies(
            config=config,
            balancer=balancer_for(lb, zone=self.zone, rng=self._rng),
            retry=retry,
            outlier=outlier,
            limits=Limits(self.service, limits_policy(cb)),
            budget=RetryBudget(retry.budget),
            split=split_for(config, self._rng),
            hash_on=lb.hash_on if lb is not None else "client_ip",
            panic=lb.panic_threshold if lb is not None else 50.0,
        )
        return self._policies

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
        """Send ``method path`` to an endpoint of the service, retrying as its policy says.
        ``hash_key``: the key for consistent hashing (default: from the request, as the
        policy's ``hash_on`` names)."""
        if json is not None:
            import msgspec

            data = msgspec.json.encode(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
        view = await self.cache.get(self.service)
        p = self.policies(view.config)
        key = hash_key if hash_key is not None else _key_of(p.hash_on, headers, params)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + p.retry.timeout_s if p.retry.timeout_s else None
        p.limits.acquire_request()
        p.budget.request_started()
        tried: set[str] = set()
        attempt = 0
        retrying = False
        try:
            while True:
                endpoint = self._pick(view.endpoints, view.versions(), p, tried, key)
                tried.add(endpoint.id)
                now = time.monotonic()
                p.outlier.started(endpoint, now)
                endpoint.started()
                start = loop.time()
                failure: _Failure | None = None
                resp: HttpResponse | None = None
                try:
                    resp = await self._send(
                        method, endpoint, path, headers, params, data, p, deadline, attempt
                    )
                except _Failure as exc:
                    failure = exc
                took = loop.time() - start
                ok = failure is None and resp is not None and resp.status < 500
                endpoint.finished(took, ok=ok, now=time.monotonic())
                p.outlier.record(endpoint, ok, time.monotonic(), len(view.endpoints))
                if retrying:
                    p.budget.retry_finished()
                    retrying = False
                status = resp.status if resp is not None else None
                kind = failure.kind if failure is not None else None
                again = (
                    not ok
                    and p.retry.should_retry(method, attempt, status=status, failure=kind)
                    and (deadline is None or loop.time() < deadline)
                    and self._others_left(view.endpoints, p, tried)
                    and p.budget.try_retry()
                )
                if not again:
                    if resp is not None:
                        return resp
                    assert failure is not None
                    raise Unavailable(
                        f"{self.service}: {method} {path} failed on {endpoint.address}:"
                        f"{endpoint.port} after {attempt + 1} attempt(s): {failure}",
                        field="service",
                    )
                retrying = True
                attempt += 1
                wait = p.retry.backoff(attempt, self._rng)
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - loop.time()))
                await asyncio.sleep(wait)
        finally:
            if retrying:
                p.budget.retry_finished()
            p.budget.request_finished()
            p.limits.release_request()

    def _candidates(
        self, endpoints: tuple[Endpoint, ...], versions: dict[str, str | None], p: _Policies
    ) -> list[Endpoint]:
        live = eligible(endpoints, p.panic)
        if p.split is not None:
            live = p.split.choose(live, versions)[1]
        return p.outlier.available(live, time.monotonic())

    def _others_left(self, endpoints: tuple[Endpoint, ...], p: _Policies, tried: set[str]) -> bool:
        return any(e.id not in tried for e in eligible(endpoints, p.panic))

    def _pick(
        self,
        endpoints: tuple[Endpoint, ...],
        versions: dict[str, str | None],
        p: _Policies,
        tried: set[str],
        key: str | None,
    ) -> Endpoint:
        candidates = self._candidates(endpoints, versions, p)
        fresh = [e for e in candidates if e.id not in tried]
        if not fresh:
            # Every breaker open, or everything tried: the untried of all live ones.
            fresh = [e for e in eligible(endpoints, p.panic) if e.id not in tried] or candidates
        if not fresh:
            raise Unavailable(
                f"{self.service}: no endpoint to send the request to "
                f"({len(endpoints)} registered, none healthy and closed)",
                field="service",
            )
        return p.balancer.pick(fresh, key)

    async def _send(
        self,
        method: str,
        endpoint: Endpoint,
        path: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        data: bytes | None,
        p: _Policies,
        deadline: float | None,
        attempt: int,
    ) -> HttpResponse:
        loop = asyncio.get_running_loop()
        limit = p.retry.per_try_timeout_s
        if deadline is not None:
            left = max(0.001, deadline - loop.time())
            limit = left if limit is None else min(limit, left)
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        url = f"http://{host}:{endpoint.port}{path}"
        timeout = aiohttp.ClientTimeout(total=limit)
        try:
            async with self._pool().request(
                method, url, headers=headers, params=params, data=data, timeout=timeout
            ) as r:
                body = await r.read()
                return HttpResponse(r.status, dict(r.headers), body, endpoint, attempt + 1)
        except aiohttp.ClientConnectorError as exc:
            raise _Failure("connect-failure", str(exc)) from None
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {limit:g} s") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise _Failure("reset", str(exc) or type(exc).__name__) from None


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
