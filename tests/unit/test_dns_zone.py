"""The weighted orders DNS answers rotate through."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from waypost.dns.zone import stratified_orders, weighted_order


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=20), st.integers(1, 32))
def test_orders_are_permutations_led_by_weight(weights: list[int], count: int) -> None:
    orders = stratified_orders(weights, count, random.Random(1))
    assert len(orders) == count
    for order in orders:
        assert sorted(order) == list(range(len(weights)))
    firsts = Counter(order[0] for order in orders)
    total = sum(weights)
    for i, w in enumerate(weights):
        # Systematic sampling: each share is within one order of its weight's.
        assert abs(firsts[i] - count * w / total) <= 1


def test_weighted_order_favours_weight() -> None:
    rng = random.Random(7)
    firsts = Counter(weighted_order([900, 100], rng)[0] for _ in range(2000))
    assert 1700 < firsts[0] < 1900
