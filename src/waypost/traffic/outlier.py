"""Circuit breaking: outlier detection per endpoint, and limits per service.

``OutlierDetector`` keeps a three-state breaker for each endpoint, as Envoy's outlier
detection and Hivemind's ``CircuitBreakerPolicy`` describe:

- **closed**: requests flow; ``consecutive_errors`` failures in a row (5xx answers,
  connect failures, resets: the caller says which count) open it;
- **open**: the endpoint gets no requests for ``base_ejection_s`` x the number of times
  it was opened (capped at ``max_ejection_s``); an endpoint is never opened when that
  would leave more than ``max_ejection_percent`` % of the service's endpoints open;
- **half-open**: once its time is up, one request at a time probes it;
  ``half_open_successes`` successes close it, a failure opens it again, for longer.

Each ``interval_s`` without an ejection takes one off the multiplier, so an endpoint
that failed once long ago is not punished as a flapping one.

``Limits`` bounds a service's requests in flight, pending requests and retries in
flight; past a bound a request fails at once with ``Overloaded`` instead of queueing.

Pure: time is passed in (``now``, monotonic seconds); nothing here sleeps or reads a
clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from waypost.errors import Unavailable
from waypost.traffic.balancers import Endpoint

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """When an endpoint is taken out of rotation, and for how long (the SDK's defaults:
    5 consecutive errors, 30 s, at most half the endpoints out)."""

    consecutive_errors: int = 5
    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 50.0
    half_open_successes: int = 1

    def __post_init__(self) -> None:
        if self.consecutive_errors < 1:
            raise ValueError("circuit_breaker.consecutive_errors: at least 1")
        if self.base_ejection_s <= 0 or self.max_ejection_s < self.base_ejection_s:
            raise ValueError(
                "circuit_breaker: base_ejection_time above zero and at most max_ejection_time"
            )
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("circuit_breaker.max_ejection_percent: between 0 and 100")
        if self.interval_s <= 0 or self.half_open_successes < 1:
            raise ValueError("circuit_breaker: interval above zero, half_open_successes >= 1")


class _Breaker:
    __slots__ = ("ejections", "errors", "last_ejected", "probing", "state", "successes", "until")

    def __init__(self) -> None:
        self.state: State = "closed"
        self.errors = 0  # consecutive, while closed
        self.ejections = 0  # the backoff multiplier
        self.last_ejected = 0.0
        self.until = 0.0  # open until then
        self.probing = 0  # half-open probes in flight
        self.successes = 0  # half-open successes so far


class OutlierDetector:
    """Breakers of one service's endpoints, by endpoint id."""

    def __init__(self, policy: OutlierPolicy | None = None) -> None:
        self.policy = policy or OutlierPolicy()
        self._breakers: dict[str, _Breaker] = {}
        self.ejections_total = 0
        self.ejections_skipped = 0  # refused by max_ejection_percent

    def _breaker(self, endpoint_id: str) -> _Breaker:
        b = self._breakers.get(endpoint_id)
        if b is None:
            b = self._breakers[endpoint_id] = _Breaker()
        return b

    def state(self, endpoint_id: str, now: float) -> State:
        b = self._breakers.get(endpoint_id)
        if b is None:
            return "closed"
        self._tick(b, now)
        return b.state

    def _tick(self, b: _Breaker, now: float) -> None:
        if b.state == "open" and now >= b.until:
            b.state, b.probing, b.successes = "half_open", 0, 0
        if b.ejections and b.state == "closed":
            # One off the multiplier for each quiet interval since the last ejection.
            quiet = int((now - b.last_ejected) // self.policy.interval_s)
            if quiet > 0:
                b.ejections = max(0, b.ejections - quiet)
                b.last_ejected += quiet * self.policy.interval_s

    def available(self, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
        """The endpoints a request may go to now: closed ones, and half-open ones with no
        probe in flight. Forgets endpoints that left the service."""
        if len(self._breakers) > 2 * len(endpoints) + 16:
            ids = {e.id for e in endpoints}
            self._breakers = {k: v for k, v in self._breakers.items() if k in ids}
        out = []
        for e in endpoints:
            b = self._breakers.get(e.id)
            if b is None:
                out.append(e)
                continue
            self._tick(b, now)
            if b.state == "closed" or (b.state == "half_open" and b.probing == 0):
                out.append(e)
        return out

    def started(self, endpoint: Endpoint, now: float) -> None:
        """A request goes to ``endpoint`` (a half-open one: that is its probe)."""
        b = self._breakers.get(endpoint.id)
        if b is not None:
            self._tick(b, now)
            if b.state == "half_open":
                b.probing += 1

    def abandoned(self, endpoint: Endpoint) -> None:
        """A request that ``started`` ended without an outcome: a half-open probe's place
        is free again (else the breaker would wait on a probe that never reports)."""
        b = self._breakers.get(endpoint.id)
        if b is not None and b.state == "half_open":
            b.probing = max(0, b.probing - 1)

    def record(self, endpoint: Endpoint, ok: bool, now: float, endpoints_total: int) -> State:
        """The outcome of a request to ``endpoint`` (``ok`` False: an error that counts);
        ``endpoints_total``: how many endpoints the service has, for the ejection cap.
        Returns the breaker's state after it."""
        b = self._breaker(endpoint.id)
        self._tick(b, now)
        if b.state == "half_open":
            b.probing = max(0, b.probing - 1)
            if ok:
                b.successes += 1
                if b.successes >= self.policy.half_open_successes:
                    b.state, b.errors = "closed", 0
            else:
                self._eject(b, now, endpoints_total, again=True)
            return b.state
        if b.state == "open":  # a request that was in flight when it opened
            return b.state
        if ok:
            b.errors = 0
            return b.state
        b.errors += 1
        if b.errors >= self.policy.consecutive_errors:
            self._eject(b, now, endpoints_total, again=False)
        return b.state

    def _eject(self, b: _Breaker, now: float, total: int, *, again: bool) -> None:
        if not again:
            open_now = sum(1 for x in self._breakers.values() if x.state in ("open", "half_open"))
            if (open_now + 1) * 100.0 > self.policy.max_ejection_percent * max(total, 1):
                self.ejections_skipped += 1
                b.errors = 0
                return
        b.ejections += 1
        self.ejections_total += 1
        b.last_ejected = now
        b.state = "open"
        b.errors = 0
        pause = min(self.policy.base_ejection_s * b.ejections, self.policy.max_ejection_s)
        b.until = now + pause

    def stats(self, now: float) -> dict[str, State]:
        return {k: self.state(k, now) for k in sorted(self._breakers)}


class Overloaded(Unavailable):
    """A service's circuit-breaker limit is reached: the request fails at once."""

    code = "overloaded"


@dataclass(frozen=True, slots=True)
class LimitsPolicy:
    """Bounds per service (Hivemind's and Envoy's circuit-breaker thresholds)."""

    max_requests: int = 1024  # in flight
    max_pending_requests: int = 1024  # waiting for a connection
    max_retries: int = 3  # retries in flight at once
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_requests", "max_pending_requests", "max_retries", "max_connections"):
            if getattr(self, name) < 0:
                raise ValueError(f"circuit_breaker.{name}: zero or more")


class Limits:
    """Counters against a ``LimitsPolicy``; each ``acquire_*`` raises ``Overloaded`` at
    the bound (naming it), each success is paired with a ``release_*``."""

    def __init__(self, service: str, policy: LimitsPolicy | None = None) -> None:
        self.service = service
        self.policy = policy or LimitsPolicy()
        self.requests = 0
        self.pending = 0
        self.retries = 0
        self.connections = 0
        self.overflows = 0

    def _refuse(self, what: str, bound: int) -> Overloaded:
        self.overflows += 1
        return Overloaded(
            f"{self.service}: {what} at its limit of {bound} (circuit breaker); "
            "failing fast instead of queueing",
            field=f"circuit_breaker.max_{what.replace(' ', '_')}",
        )

    def acquire_request(self) -> None:
        if self.requests >= self.policy.max_requests:
            raise self._refuse("requests", self.policy.max_requests)
        self.requests += 1

    def release_request(self) -> None:
        self.requests = max(0, self.requests - 1)

    def acquire_pending(self) -> None:
        if self.pending >= self.policy.max_pending_requests:
            raise self._refuse("pending requests", self.policy.max_pending_requests)
        self.pending += 1

    def release_pending(self) -> None:
        self.pending = max(0, self.pending - 1)

    def acquire_retry(self) -> None:
        if self.retries >= self.policy.max_retries:
            raise self._refuse("retries", self.policy.max_retries)
        self.retries += 1

    def release_retry(self) -> None:
        self.retries = max(0, self.retries - 1)

    def acquire_connection(self) -> None:
        if self.connections >= self.policy.max_connections:
            raise self._refuse("connections", self.policy.max_connections)
        self.connections += 1

    def release_connection(self) -> None:
        self.connections = max(0, self.connections - 1)
