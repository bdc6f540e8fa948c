"""Each balancer does what its definition says, measured over many picks."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.traffic import (
    STRATEGIES,
    ConsistentHash,
    Endpoint,
    LeastConnections,
    NoEndpoint,
    PeakEwma,
    RandomPick,
    RoundRobin,
    WeightedRandom,
    WeightedRoundRobin,
    balancer,
    eligible,
)

PICKS = 10_000


def chi2_critical(df: int, z: float = 2.3263) -> float:
    """The chi-square value a fit exceeds with probability 0.01 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def assert_fits(counts: Counter[str], expected: dict[str, float]) -> None:
    """Chi-square goodness of fit at p = 0.01: the picks follow ``expected`` shares."""
    total = sum(counts.values())
    stat = sum((counts[k] - total * p) ** 2 / (total * p) for k, p in expected.items())
    assert set(counts) <= set(expected)
    assert stat < chi2_critical(len(expected) - 1), (stat, counts, expected)


def endpoints(weights: Sequence[int]) -> list[Endpoint]:
    return [Endpoint(f"e{i}", "10.0.0.1", 8000 + i, weight=w) for i, w in enumerate(weights)]


def picks(b: object, eps: Sequence[Endpoint], n: int = PICKS) -> Counter[str]:
    return Counter(b.pick(eps).id for _ in range(n))  # type: ignore[attr-defined]


WEIGHTS = [100, 200, 300, 400]
SHARES = {f"e{i}": w / sum(WEIGHTS) for i, w in enumerate(WEIGHTS)}
EVEN = {f"e{i}": 1 / len(WEIGHTS) for i in range(len(WEIGHTS))}


def test_weighted_balancers_follow_the_weights() -> None:
    eps = endpoints(WEIGHTS)
    assert_fits(picks(WeightedRoundRobin(), eps), SHARES)
    assert_fits(picks(WeightedRandom(random.Random(7)), eps), SHARES)


def test_unweighted_balancers_spread_evenly() -> None:
    eps = endpoints(WEIGHTS)
    assert_fits(picks(RoundRobin(), eps), EVEN)
    assert_fits(picks(RandomPick(random.Random(7)), eps), EVEN)
    assert_fits(picks(LeastConnections(random.Random(7)), endpoints([100] * 4)), EVEN)


def test_least_connections_follows_weights_under_load() -> None:
    """Requests that stay in flight: p2c on in-flight / weight sends more to heavier ones."""
    eps = endpoints(WEIGHTS)
    lc = LeastConnections(random.Random(3))
    for _ in range(PICKS):
        lc.pick(eps).started()
    shares = {e.id: e.active / PICKS for e in eps}
    assert shares["e3"] > shares["e2"] > shares["e1"] > shares["e0"]
    assert abs(shares["e3"] - SHARES["e3"]) < 0.05


def test_smooth_weighted_round_robin_spreads_a_heavy_endpoint_out() -> None:
    eps = [Endpoint("a", weight=5), Endpoint("b", weight=1), Endpoint("c", weight=1)]
    wrr = WeightedRoundRobin()
    # nginx's documented sequence for weights 5, 1, 1.
    assert [wrr.pick(eps).id for _ in range(7)] == ["a", "a", "b", "a", "c", "a", "a"]


def test_latency_aware_balancer_starves_a_ten_times_slower_endpoint() -> None:
    eps = endpoints([100] * 10)
    slow = eps[0]
    ewma = PeakEwma(random.Random(11))
    now = 0.0
    in_flight: list[tuple[float, Endpoint]] = []
    for _ in range(PICKS):
        now += 0.001  # a request every millisecond
        done = [(t, e) for t, e in in_flight if t <= now]
        for t, e in done:
            e.finished(0.050 if e is slow else 0.005, ok=True, now=t)
        in_flight = [(t, e) for t, e in in_flight if t > now]
        e = ewma.pick(eps)
        e.started()
        in_flight.append((now + (0.050 if e is slow else 0.005), e))
    assert slow.requests / PICKS < 0.10, slow.requests


def test_consistent_hash_moves_few_keys_when_an_endpoint_leaves() -> None:
    eps = endpoints([100] * 10)
    keys = [f"client-{n}" for n in range(PICKS)]
    before = {k: ConsistentHash().pick(eps, k).id for k in keys[:10]}
    ring = ConsistentHash()
    first = {k: ring.pick(eps, k).id for k in keys}
    assert {k: first[k] for k in keys[:10]} == before  # every client agrees
    assert_fits(Counter(first.values()), {e.id: 0.1 for e in eps})
    gone = eps[3]
    rest = [e for e in eps if e is not gone]
    second = {k: ring.pick(rest, k).id for k in keys}
    moved = sum(first[k] != second[k] for k in keys)
    assert moved / len(keys) <= 0.15, moved
    # Only keys of the endpoint that left move, give or take Maglev's few.
    stayed = sum(first[k] == second[k] for k in keys if first[k] != gone.id)
    assert stayed / sum(first[k] != gone.id for k in keys) > 0.95


def test_panic_threshold_uses_every_endpoint_when_too_few_pass() -> None:
    eps = endpoints([100] * 10)
    for e in eps[:4]:
        e.healthy = False
    assert [e.id for e in eligible(eps)] == [e.id for e in eps[4:]]
    for e in eps[:6]:
        e.healthy = False
    assert eligible(eps) == eps  # 40 % healthy < 50 %: panic, all of them
    assert [e.id for e in eligible(eps, panic_percent=0)] == [e.id for e in eps[6:]]


def test_zone_preference() -> None:
    eps = [
        Endpoint("a", meta={"zone": "eu-1"}),
        Endpoint("b", meta={"zone": "eu-2"}),
        Endpoint("c", meta={"zone": "eu-1"}),
    ]
    b = balancer("round_robin", zone="eu-1")
    assert {b.pick(eps).id for _ in range(10)} == {"a", "c"}
    assert balancer("round_robin", zone="us-1").pick(eps).id in {"a", "b", "c"}
    with pytest.raises(ValueError, match="unknown strategy"):
        balancer("fastest")


@settings(max_examples=200, deadline=None)
@given(
    strategy=st.sampled_from(sorted(STRATEGIES)),
    weights=st.lists(st.integers(1, 1000), max_size=12),
    keys=st.lists(st.text(max_size=8), min_size=1, max_size=20),
    seed=st.integers(0, 2**32),
)
def test_every_balancer_picks_only_what_it_is_given(
    strategy: str, weights: list[int], keys: list[str], seed: int
) -> None:
    b = balancer(strategy, rng=random.Random(seed))
    eps = endpoints(weights)
    for key in keys:
        if not eps:
            with pytest.raises(NoEndpoint):
                b.pick(eps, key)
            continue
        got = b.pick(eps, key)
        assert any(got is e for e in eps)
        got.started()
        got.finished(0.001, ok=True, now=1.0)
    eps = eps[: len(eps) // 2]  # the set shrinks: nothing stale comes back
    for key in keys:
        if eps:
            got = b.pick(eps, key)
            assert any(got is e for e in eps)


@given(loads=st.lists(st.integers(0, 50), min_size=2, max_size=20), seed=st.integers(0, 2**32))
def test_p2c_never_picks_the_one_most_loaded_endpoint(loads: list[int], seed: int) -> None:
    eps = endpoints([100] * len(loads))
    for e, load in zip(eps, loads, strict=True):
        e.active = load
    top = max(loads)
    if loads.count(top) > 1:
        return
    lc = LeastConnections(random.Random(seed))
    assert all(lc.pick(eps).active != top for _ in range(50))
