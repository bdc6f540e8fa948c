from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from waypost.health.ttl import TtlTimers


def test_pops_what_is_due_in_time_order_and_only_the_latest_time_counts() -> None:
    t = TtlTimers()
    t.set("a", 10)
    t.set("b", 5)
    t.set("a", 20)  # a heartbeat moved a's deadline
    t.set("c", 7)
    t.forget("c")
    assert t.pop_due(4) == []
    assert t.pop_due(15) == ["b"]
    assert "a" in t
    assert "b" not in t
    assert t.pop_due(20) == ["a"]
    assert len(t) == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "forget", "pop"]), st.sampled_from("abcde"), st.integers(0, 50)
    ),
    max_size=60,
)


@given(ops)
def test_matches_a_plain_dict_model(steps: list[tuple[str, str, int]]) -> None:
    t = TtlTimers()
    model: dict[str, int] = {}
    for op, iid, when in steps:
        if op == "set":
            t.set(iid, when)
            model[iid] = when
        elif op == "forget":
            t.forget(iid)
            model.pop(iid, None)
        else:
            expected = sorted((w, i) for i, w in model.items() if w <= when)
            assert t.pop_due(when) == [i for _, i in expected]
            for _, i in expected:
                del model[i]
        assert len(t) == len(model)
