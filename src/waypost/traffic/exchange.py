"""One request's attempts, decided without I/O: which endpoint next, whether to try again.

The async client (``AsyncClient.http``), the sync client (``Client.http``) and the proxy
each drive an ``Exchange`` with their own sockets:

    ex = Exchange(policies, view_endpoints, versions, "GET", key, now=clock())
    try:
        while True:
            attempt = ex.next(clock())              # raises Unavailable: nothing to try
            ... send, with attempt.timeout_s ...
            wait = ex.finished(attempt, clock(), status=..., failure=...)
            if wait is None: break                  # done: hand over the last answer
            ... sleep(wait) ...
    finally:
        ex.close()

The endpoints it picks from: the route's subset, then the healthy ones (all of them
below the panic threshold), then the split's side, then those whose breaker lets a
request through; the balancer picks among those not tried yet in this request. A
failed attempt counts against the endpoint's breaker; it is tried again when the retry
policy allows it, the deadline has time, the retry budget and the retry limit have
room, and an endpoint not tried yet remains.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from waypost.errors import Unavailable
from waypost.model import ServiceConfig
from waypost.traffic.balancers import Balancer, Endpoint, eligible
from waypost.traffic.outlier import Limits, OutlierDetector, Overloaded
from waypost.traffic.policy import (
    balancer_for,
    limits_policy,
    outlier_policy,
    retry_policy,
    split_for,
)
from waypost.traffic.retry import RetryBudget, RetryPolicy
from waypost.traffic.routes import subset as subset_of
from waypost.traffic.split import Split


@dataclass(slots=True)
class Policies:
    """The objects applying one service's config, with their state (breakers, budget)."""

    service: str
    config: ServiceConfig | None
    balancer: Balancer
    retry: RetryPolicy
    outlier: OutlierDetector
    limits: Limits
    budget: RetryBudget
    split: Split | None
    hash_on: str = "client_ip"
    panic: float = 50.0

    @classmethod
    def build(
        cls,
        service: str,
        config: ServiceConfig | None,
        *,
        zone: str = "",
        rng: random.Random | None = None,
        previous: Policies | None = None,
    ) -> Policies:
        """The policies of ``config``; ``previous`` (the ones in use) is returned as it
        is when the config has not changed, and lends its breakers when their settings
        have not."""
        if previous is not None and (previous.config is config or previous.config == config):
            return previous
        lb = config.load_balancer if config is not None else None
        cb = config.circuit_breaker if config is not None else None
        retry = retry_policy(config.retry if config else None, config.timeout if config else None)
        outlier = OutlierDetector(outlier_policy(cb))
        if previous is not None and previous.outlier.policy == outlier.policy:
            outlier = previous.outlier  # same breaker settings: keep their state
        return cls(
            service=service,
            config=config,
            balancer=balancer_for(lb, zone=zone, rng=rng),
            retry=retry,
            outlier=outlier,
            limits=Limits(service, limits_policy(cb)),
            budget=RetryBudget(retry.budget),
            split=split_for(config, rng),
            hash_on=lb.hash_on if lb is not None else "client_ip",
            panic=lb.panic_threshold if lb is not None else 50.0,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try: the endpoint, how long it may take (None: no bound) and its number (0
    for the first)."""

    endpoint: Endpoint
    timeout_s: float | None
    number: int
    started: float


@dataclass(slots=True)
class Exchange:
    """The attempts of one request (see the module's doc). Counts the request against
    the service's limits and retry budget until ``close()``."""

    policies: Policies
    endpoints: Sequence[Endpoint]
    versions: Mapping[str, str | None]
    method: str
    key: str | None = None
    now: float = 0.0
    subset: Mapping[str, str] | None = None
    path: str = ""
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    deadline: float | None = None
    last_failure: str = ""
    _retrying: bool = False
    _retry_slot: bool = False
    _open: bool = False
    # The attempt ``next`` started and ``finished`` has not ended yet.
    _running: Attempt | None = None

    def __post_init__(self) -> None:
        p = self.policies
        if self.subset:
            self.endpoints = subset_of(self.endpoints, self.subset)
        p.limits.acquire_request()  # Overloaded: refused before anything was counted
        p.budget.request_started()
        self._open = True
        if p.retry.timeout_s:
            self.deadline = self.now + p.retry.timeout_s

    def _live(self) -> list[Endpoint]:
        return eligible(self.endpoints, self.policies.panic)

    def next(self, now: float) -> Attempt:
        """The next attempt: a fresh endpoint, marked as started. Unavailable when there
        is none to send to."""
        p = self.policies
        live = self._live()
        candidates = live
        if p.split is not None:
            candidates = p.split.choose(candidates, self.versions)[1]
        candidates = p.outlier.available(candidates, now)
        fresh = [e for e in candidates if e.id not in self.tried]
        if not fresh:
            # Every breaker open, or everything tried: the untried of all live ones.
            fresh = [e for e in live if e.id not in self.tried] or candidates
        if not fresh:
            what = "registered" if not self.subset else "in the route's subset"
            raise Unavailable(
                f"{p.service}: no endpoint to send the request to "
                f"({len(self.endpoints)} {what}, none healthy and closed)",
                field="service",
            )
        endpoint = p.balancer.pick(fresh, self.key)
        self.tried.add(endpoint.id)
        p.outlier.started(endpoint, now)
        endpoint.started()
        limit = p.retry.per_try_timeout_s
        if self.deadline is not None:
            left = max(0.001, self.deadline - now)
            limit = left if limit is None else min(limit, left)
        attempt = Attempt(endpoint, limit, self.attempts, now)
        self.attempts += 1
        self._running = attempt
        return attempt

    def finished(
        self,
        attempt: Attempt,
        now: float,
        *,
        status: int | None = None,
        failure: str | None = None,
        detail: str = "",
        rng: random.Random | None = None,
    ) -> float | None:
        """Record how the attempt ended (an HTTP ``status``, or a ``failure`` kind:
        ``connect-failure``, ``reset``, ``timeout``). None: the request is over (hand
        over this answer, or fail); else the seconds to wait before the next attempt."""
        p = self.policies
        e = attempt.endpoint
        if self._running is attempt:
            self._running = None
        ok = failure is None and status is not None and status < 500
        e.finished(now - attempt.started, ok=ok, now=now)
        p.outlier.record(e, ok, now, len(self.endpoints))
        self._end_retry()
        if failure is not None:
            self.last_failure = (
                f"{p.service}: {self.method} {self.path} failed on {e.address}:{e.port} after "
                f"{self.attempts} attempt(s): {detail or failure}"
            )
        if ok or not p.retry.should_retry(
            self.method, attempt.number, status=status, failure=failure
        ):
            return None
        if self.deadline is not None and now >= self.deadline:
            return None
        if not any(x.id not in self.tried for x in self._live()):
            return None
        if not p.budget.try_retry():
            return None
        self._retrying = True
        try:
            p.limits.acquire_retry()
            self._retry_slot = True
        except Overloaded:
            self._end_retry()
            return None
        wait = p.retry.backoff(attempt.number + 1, rng)
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - now))
        return wait

    def _end_retry(self) -> None:
        if self._retrying:
            self.policies.budget.retry_finished()
            self._retrying = False
        if self._retry_slot:
            self.policies.limits.release_retry()
            self._retry_slot = False

    def failed(self) -> Unavailable:
        """The error for a request whose last attempt failed without an answer."""
        return Unavailable(self.last_failure or f"{self.policies.service}: failed", field="service")

    def close(self) -> None:
        """The request is over. An attempt still running (the caller went away, or an
        error of ours escaped before ``finished``) is let go without a verdict: its
        endpoint's in-flight count and a half-open breaker's probe place are freed."""
        running, self._running = self._running, None
        if running is not None:
            running.endpoint.abandoned()
            self.policies.outlier.abandoned(running.endpoint)
        if not self._open:
            return
        self._open = False
        self._end_retry()
        self.policies.budget.request_finished()
        self.policies.limits.release_request()


MAX_POLICIES = 2000  # services whose policy objects one caller keeps (see ``prune``)


def prune(policies: dict[str, Policies], held: Callable[[str], bool]) -> None:
    """Bound a caller's policies: past ``MAX_POLICIES``, drop those of services no
    longer ``held`` (their breakers start closed again if they come back)."""
    if len(policies) <= MAX_POLICIES:
        return
    for name in [n for n in policies if not held(n)]:
        del policies[name]


def endpoint_stats(
    p: Policies | None, endpoints: Sequence[Endpoint], now: float
) -> list[dict[str, object]]:
    """Each endpoint's counters and breaker state, for people and metrics."""
    states = p.outlier.stats(now) if p is not None else {}
    return [
        {
            "id": e.id,
            "address": f"{e.address}:{e.port}",
            "healthy": e.healthy,
            "requests": e.requests,
            "active": e.active,
            "errors": e.errors,
            "latency_ms": round(e.latency_ms, 3),
            "breaker": states.get(e.id, "closed"),
        }
        for e in endpoints
    ]
