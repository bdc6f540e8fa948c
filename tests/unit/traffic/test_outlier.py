"""Circuit breaking: an endpoint that keeps failing is taken out, probed, and let back."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.traffic import (
    Endpoint,
    Limits,
    LimitsPolicy,
    OutlierDetector,
    OutlierPolicy,
    Overloaded,
    RoundRobin,
)


def fleet(n: int = 10) -> list[Endpoint]:
    return [Endpoint(f"e{i}") for i in range(n)]


def drive(
    det: OutlierDetector,
    eps: list[Endpoint],
    failing: set[str],
    start: float,
    requests: int,
    step: float = 0.01,
) -> tuple[dict[str, int], float]:
    """Round-robin ``requests`` over what the detector allows; endpoints in ``failing``
    answer errors. Returns requests per endpoint and the time reached."""
    rr = RoundRobin()
    got: dict[str, int] = {}
    now = start
    for _ in range(requests):
        now += step
        e = rr.pick(det.available(eps, now))
        det.started(e, now)
        got[e.id] = got.get(e.id, 0) + 1
        det.record(e, e.id not in failing, now, len(eps))
    return got, now


def test_a_failing_endpoint_is_ejected_kept_out_probed_and_let_back() -> None:
    det = OutlierDetector(OutlierPolicy(consecutive_errors=5, base_ejection_s=30.0))
    eps = fleet()
    got, now = drive(det, eps, {"e3"}, 0.0, 100)
    assert got["e3"] == 5  # five errors in a row, then out
    assert det.state("e3", now) == "open"
    got, now = drive(det, eps, {"e3"}, now, 1000)  # 10 s more: still open
    assert "e3" not in got
    # After 30 s it is half-open: one probe at a time; it fails: out again, for 60 s.
    now = 31.0
    assert det.state("e3", now) == "half_open"
    got, now = drive(det, eps, {"e3"}, now, 20)
    assert got["e3"] == 1
    assert det.state("e3", now) == "open"
    now += 59.0
    assert det.state("e3", now) == "open"
    now += 2.0
    # Recovered: the probe succeeds and it takes its share again.
    got, now = drive(det, eps, set(), now, 100)
    assert det.state("e3", now) == "closed"
    assert got["e3"] >= 9


def test_half_open_lets_one_probe_through_at_a_time() -> None:
    det = OutlierDetector(OutlierPolicy(consecutive_errors=1, base_ejection_s=1.0))
    eps = fleet(4)
    det.record(eps[0], False, 0.0, 4)
    assert eps[0] not in det.available(eps, 0.5)
    assert eps[0] in det.available(eps, 1.5)
    det.started(eps[0], 1.5)  # the probe is out
    assert eps[0] not in det.available(eps, 1.6)
    det.record(eps[0], True, 1.7, 4)
    assert det.state("e0", 1.7) == "closed"


def test_ejection_never_exceeds_the_max_percent() -> None:
    det = OutlierDetector(OutlierPolicy(consecutive_errors=2, max_ejection_percent=30.0))
    eps = fleet(10)
    _, now = drive(det, eps, {e.id for e in eps}, 0.0, 500)
    out = [e.id for e in eps if det.state(e.id, now) != "closed"]
    assert len(out) == 3
    assert det.ejections_skipped > 0


def test_a_quiet_interval_takes_one_off_the_backoff() -> None:
    det = OutlierDetector(OutlierPolicy(consecutive_errors=1, base_ejection_s=10, interval_s=60))
    e = fleet(4)[0]
    det.record(e, False, 0.0, 4)  # out for 10 s
    det.started(e, 11.0)
    det.record(e, False, 11.0, 4)  # probe failed: out for 20 s
    assert det.state(e.id, 30.0) == "open"
    det.started(e, 32.0)
    det.record(e, True, 32.0, 4)  # back
    # Long quiet: the multiplier decays, the next ejection is short again.
    det.record(e, False, 500.0, 4)
    assert det.state(e.id, 509.0) == "open"
    assert det.state(e.id, 511.0) == "half_open"


def test_policies_are_checked() -> None:
    for bad in (
        {"consecutive_errors": 0},
        {"base_ejection_s": 0},
        {"max_ejection_percent": 120},
        {"base_ejection_s": 60, "max_ejection_s": 30},
    ):
        with pytest.raises(ValueError, match="circuit_breaker"):
            OutlierPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_retries"):
        LimitsPolicy(max_retries=-1)


def test_limits_fail_fast_and_say_which() -> None:
    limits = Limits("user-api", LimitsPolicy(max_requests=2, max_retries=1))
    limits.acquire_request()
    limits.acquire_request()
    with pytest.raises(Overloaded, match="user-api: requests at its limit of 2") as exc:
        limits.acquire_request()
    assert exc.value.field == "circuit_breaker.max_requests"
    limits.release_request()
    limits.acquire_request()
    limits.acquire_retry()
    with pytest.raises(Overloaded, match="retries"):
        limits.acquire_retry()
    assert limits.overflows == 2


@settings(max_examples=100, deadline=None)
@given(
    outcomes=st.lists(st.tuples(st.integers(0, 9), st.booleans(), st.floats(0, 5)), max_size=300),
    percent=st.floats(0, 100),
    seed=st.integers(0, 1000),
)
def test_the_cap_holds_whatever_happens(
    outcomes: list[tuple[int, bool, float]], percent: float, seed: int
) -> None:
    det = OutlierDetector(
        OutlierPolicy(consecutive_errors=1, base_ejection_s=3, max_ejection_percent=percent)
    )
    eps = fleet(10)
    rng = random.Random(seed)
    now = 0.0
    for i, ok, dt in outcomes:
        now += dt
        e = eps[i] if rng.random() < 0.5 else rng.choice(eps)
        if e in det.available(eps, now):
            det.started(e, now)
            det.record(e, ok, now, len(eps))
        out = sum(det.state(x.id, now) == "open" for x in eps)
        assert out * 100 <= max(percent * len(eps), 0) + 1e-9
