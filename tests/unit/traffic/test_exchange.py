"""The attempt engine the SDK and the proxy share: whatever ends a request, nothing it
started stays counted on an endpoint."""

from __future__ import annotations

import msgspec

from waypost.model import ServiceConfig
from waypost.testing import ManualClock
from waypost.traffic import Endpoint
from waypost.traffic.exchange import Exchange, Policies


def _policies() -> Policies:
    config = msgspec.convert(
        {"circuit_breaker": {"consecutive_errors": 1, "base_ejection_time": "1s"}},
        ServiceConfig,
    )
    return Policies.build("api", config)


def test_an_attempt_never_finished_is_let_go_when_the_request_closes() -> None:
    """The proxy once failed after an attempt started (a header it could not encode, a
    client that hung up) and never said how it ended: the endpoint's in-flight count and
    a half-open breaker's probe place stayed taken, and four such requests kept an
    endpoint out of traffic for good."""
    clock = ManualClock()
    p = _policies()
    endpoints = [Endpoint("a", "10.0.0.1", 80), Endpoint("b", "10.0.0.2", 80)]
    versions: dict[str, str | None] = {"a": None, "b": None}
    # "a" fails once: its breaker opens; a second later it is half-open.
    ex = Exchange(p, endpoints, versions, "POST", None, now=clock())
    first = ex.next(clock())
    ex.finished(first, clock(), status=503)
    ex.close()
    clock.advance(1.5)
    for _ in range(4):  # requests whose attempt is abandoned, whichever endpoint they got
        ex = Exchange(p, endpoints, versions, "POST", None, now=clock())
        ex.next(clock())
        ex.close()
    assert [e.active for e in endpoints] == [0, 0]
    # "a"'s probe place is free: a request can still probe it, and a success lets it back.
    picked = set()
    for _ in range(4):
        ex = Exchange(p, endpoints, versions, "POST", None, now=clock())
        attempt = ex.next(clock())
        picked.add(attempt.endpoint.id)
        ex.finished(attempt, clock(), status=200)
        ex.close()
    assert "a" in picked
    assert p.outlier.state("a", clock()) == "closed"
    assert [e.active for e in endpoints] == [0, 0]
