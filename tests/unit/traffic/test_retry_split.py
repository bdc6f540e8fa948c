"""Retries (when, how long to wait, how many at once) and traffic splits."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.errors import InvalidInput
from waypost.traffic import Endpoint
from waypost.traffic.retry import RetryBudget, RetryBudgetPolicy, RetryPolicy
from waypost.traffic.split import Split, SplitSide


def test_the_default_retries_idempotent_methods_on_5xx_and_connect_failure() -> None:
    p = RetryPolicy()
    assert p.should_retry("GET", 0, status=503)
    assert p.should_retry("get", 1, status=500)
    assert not p.should_retry("GET", 2, status=503)  # two retries, then no more
    assert not p.should_retry("GET", 0, status=404)
    assert not p.should_retry("GET", 0, status=200)
    assert not p.should_retry("POST", 0, status=503)  # may have done its work
    assert p.should_retry("POST", 0, failure="connect-failure")  # never left
    assert p.should_retry("PUT", 0, failure="reset")
    assert RetryPolicy(retry_non_idempotent=True).should_retry("POST", 0, status=502)


def test_retry_on_words() -> None:
    gw = RetryPolicy(retry_on=("gateway-error",))
    assert gw.should_retry("GET", 0, status=504)
    assert not gw.should_retry("GET", 0, status=500)
    assert not gw.should_retry("GET", 0, failure="connect-failure")
    listed = RetryPolicy(retry_on=("retriable-status-codes",), retriable_status_codes=(429, 409))
    assert listed.should_retry("GET", 0, status=429)
    assert not listed.should_retry("GET", 0, status=503)
    with pytest.raises(ValueError, match=r"retry\.retry_on: unknown 5XX"):
        RetryPolicy(retry_on=("5XX",))
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=11)
    with pytest.raises(ValueError, match="timeout"):
        RetryPolicy(timeout_s=0)


@given(attempt=st.integers(1, 20), seed=st.integers(0, 2**32))
def test_backoff_is_jittered_exponential_and_capped(attempt: int, seed: int) -> None:
    p = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.5)
    wait = p.backoff(attempt, random.Random(seed))
    assert 0 <= wait <= min(0.5, 0.01 * 2 ** (attempt - 1))


def test_backoff_spreads_clients_out() -> None:
    p = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0)
    rng = random.Random(5)
    waits = [p.backoff(3, rng) for _ in range(1000)]
    assert min(waits) < 0.05 < 0.35 < max(waits) <= 0.4


def test_the_retry_budget_caps_retries_under_a_storm() -> None:
    budget = RetryBudget(RetryBudgetPolicy(percent=20, min_concurrency=3))
    for _ in range(100):
        budget.request_started()
    granted = sum(budget.try_retry() for _ in range(100))  # every request fails at once
    assert granted == 20
    assert budget.refused == 80
    for _ in range(100):
        budget.request_finished()
    for _ in range(20):
        budget.retry_finished()
    assert budget.try_retry()  # a quiet service still gets its minimum


CANARY = [SplitSide(version="^1", weight=80), SplitSide(version="^2", weight=20)]


def versions_of(n1: int, n2: int) -> tuple[list[Endpoint], dict[str, str | None]]:
    eps, versions = [], {}
    for i in range(n1):
        eps.append(Endpoint(f"v1-{i}"))
        versions[f"v1-{i}"] = "1.4.2"
    for i in range(n2):
        eps.append(Endpoint(f"v2-{i}"))
        versions[f"v2-{i}"] = "2.0.0"
    return eps, versions


def test_an_80_20_split_lands_within_two_percent() -> None:
    eps, versions = versions_of(3, 2)
    split = Split(
        [SplitSide(version="^1", weight=80), SplitSide(version="^2", weight=20)], random.Random(9)
    )
    got = Counter(split.choose(eps, versions)[0] for _ in range(10_000))
    assert abs(got["^1"] / 10_000 - 0.80) <= 0.02
    assert abs(got["^2"] / 10_000 - 0.20) <= 0.02


def test_a_side_with_no_endpoint_gives_its_share_to_the_others() -> None:
    eps, versions = versions_of(3, 0)
    split = Split(
        [SplitSide(version="^1", weight=80), SplitSide(version="^2", weight=20)], random.Random(9)
    )
    sides = {split.choose(eps, versions)[0] for _ in range(200)}
    assert sides == {"^1"}
    # Blue/green: all on green; green gone, blue takes it all rather than nothing.
    switch = Split(
        [SplitSide(version="^1", weight=0), SplitSide(version="^2", weight=100)], random.Random(1)
    )
    eps2, versions2 = versions_of(2, 2)
    assert {switch.choose(eps2, versions2)[0] for _ in range(100)} == {"^2"}
    assert {switch.choose(eps, versions)[0] for _ in range(100)} == {"^1"}


def test_splits_are_checked() -> None:
    with pytest.raises(InvalidInput, match="version"):
        Split([SplitSide(version="not a version", weight=1)])
    with pytest.raises(ValueError, match="add up to zero"):
        Split([SplitSide(version="^1", weight=0)])
