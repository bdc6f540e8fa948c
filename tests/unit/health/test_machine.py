"""The status machine every check kind shares: thresholds, start-up, grace, flapping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waypost.health.machine import CheckMachine, worst
from waypost.model import Check, FlapPolicy, Status

P, W, C = Status.PASSING, Status.WARNING, Status.CRITICAL


def machine(**fields: object) -> CheckMachine:
    check = Check(tcp="127.0.0.1:1", name="t", **fields)  # type: ignore[arg-type]
    return CheckMachine.fresh(check, 0.0, 0.0)


@given(
    n=st.integers(1, 6),
    m=st.integers(1, 6),
    results=st.lists(st.sampled_from([P, W, C]), max_size=60),
)
def test_thresholds_hold_for_any_sequence(n: int, m: int, results: list[Status]) -> None:
    mc = machine(healthy_threshold=m, unhealthy_threshold=n)
    mc.observe(P, "up", -1.0, -1.0)  # it has passed once: thresholds count from here
    ok_run, bad_run = m, 0
    for t, result in enumerate(results):
        before = mc.status
        mc.observe(result, "x", float(t), float(t))
        if result is P:
            ok_run, bad_run = ok_run + 1, 0
        else:
            ok_run, bad_run = 0, bad_run + 1
        if before is P and mc.status is not P:
            assert bad_run >= n  # left passing only after N failures in a row
        if before is not P and mc.status is P:
            assert ok_run >= m  # came back only after M successes in a row
        if bad_run >= n:
            assert mc.status is result  # N failures: the latest failure's status
        if ok_run >= m:
            assert mc.status is P


def test_a_check_that_never_passed_needs_one_success() -> None:
    mc = machine(healthy_threshold=3)
    assert mc.status is C
    assert mc.observe(P, "up", 1, 1)
    assert mc.status is P
    # From then on the threshold counts.
    for t in (2, 3, 4):
        mc.observe(C, "down", t, t)
    assert mc.status is C
    mc.observe(P, "up", 5, 5)
    mc.observe(P, "up", 6, 6)
    assert mc.status is C
    mc.observe(P, "up", 7, 7)
    assert mc.status is P


def test_only_changes_are_reported_and_the_first_result() -> None:
    mc = machine(unhealthy_threshold=2)
    assert mc.observe(C, "down", 1, 1)  # first result: reported (its output)
    assert not mc.observe(C, "down", 2, 2)
    assert mc.observe(P, "up", 3, 3)
    assert not mc.observe(P, "up", 4, 4)
    assert not mc.observe(C, "down", 5, 5)
    assert mc.observe(C, "down", 6, 6)


def test_grace_ignores_failures_until_the_first_pass_or_its_end() -> None:
    mc = machine(grace="10s", unhealthy_threshold=1, initial_status="passing")
    mc.observe(C, "starting", 5, 5)  # reported (the first result), status unchanged
    assert mc.status is P
    assert mc.output.startswith("in grace")
    mc.observe(C, "still starting", 11, 11)
    assert mc.status is C
    slow = machine(grace="10s", unhealthy_threshold=1)
    slow.observe(P, "up", 1, 1)
    slow.observe(C, "down", 2, 2)  # passed once: grace is over
    assert slow.status is C


def test_flap_damping_holds_then_releases() -> None:
    mc = machine(
        healthy_threshold=1,
        unhealthy_threshold=1,
        initial_status="passing",
        flap=FlapPolicy(changes=3, window="10s"),
    )
    mc.observe(C, "down", 1, 1)
    mc.observe(P, "up", 2, 2)
    assert not mc.flapping
    assert mc.observe(C, "down", 3, 3)  # third change within 10 s
    assert mc.flapping
    mc.observe(P, "up", 4, 4)
    state = mc.state()
    assert state.status is C
    assert state.flapping
    assert state.output.startswith("flapping")
    mc.observe(P, "up", 13.9, 13.9)  # stable since 4: not yet a whole window
    assert mc.flapping
    assert mc.observe(P, "up", 14, 14)  # released: a change to report
    assert not mc.flapping
    assert mc.state().status is P


def test_worst_orders_as_consul() -> None:
    assert worst([]) is P
    assert worst([P, W]) is W
    assert worst([W, Status.UNKNOWN, P]) is Status.UNKNOWN
    assert worst([W, C, Status.UNKNOWN]) is C
