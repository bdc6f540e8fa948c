"""Consul's filter expressions: what they select over Consul-shaped answers, clear errors
for anything else, and no input that breaks the parser."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.consul.filter import FilterError, compile_filter

ENTRY: dict[str, Any] = {
    "Node": {"Node": "n1", "Meta": {"rack": "r1"}},
    "Service": {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["prod", "eu"],
        "Meta": {"version": "1.2", "team.name": "core"},
        "Port": 8080,
        "EnableTagOverride": False,
    },
    "Checks": [
        {"CheckID": "serfHealth", "Status": "passing"},
        {"CheckID": "service:web-1", "Status": "critical"},
    ],
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('Service.Tags contains "prod"', True),
        ('Service.Tags contains "us"', False),
        ('Service.Tags not contains "us"', True),
        ('"eu" in Service.Tags', True),
        ('"us" not in Service.Tags', True),
        ('Service.Meta.version == "1.2"', True),
        ('Service.Meta["team.name"] == "core"', True),
        ('Service.Meta.version != "1.2"', False),
        ("Service.Port == 8080", True),
        ('Service.Port == "8080"', True),
        ("Service.EnableTagOverride == false", True),
        ('Service.Service == "web" and Node.Meta.rack == "r1"', True),
        ('Service.Service == "db" or Node.Meta.rack == "r1"', True),
        ('not (Service.Service == "db")', True),
        ('not Service.Service == "web"', False),
        ('Checks.Status == "critical"', True),  # some check
        ('Checks.Status != "critical"', False),
        ('Service.Service matches "^w.b$"', True),
        ('Service.Service not matches "^db"', True),
        ("Service.Meta is not empty", True),
        ("Service.Missing is empty", True),
        ('service.tags CONTAINS "prod"', True),  # any case
        ('(Service.Service == "web" or Service.Service == "api") and "prod" in Service.Tags', True),
        ("Service.Tags contains `eu`", True),
    ],
)
def test_filters_select_as_consul(expr: str, expected: bool) -> None:
    assert compile_filter(expr)(ENTRY) is expected


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "Service.Tags contains",
        '"prod" in',
        "Service.Tags =~ x",
        'Service.Service == "web" and',
        '(Service.Service == "web"',
        'Service.Service matches "("',
        "and == 1",
        'Service.Service == "web" junk',
        "Service.",
        "x" * 5000,
    ],
)
def test_bad_filters_are_refused_with_a_message(expr: str) -> None:
    with pytest.raises(FilterError, match="filter"):
        compile_filter(expr)


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        pred = compile_filter(text)
    except FilterError:
        return
    pred(ENTRY)  # and a filter that parses evaluates without error


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(FilterError, match="deep"):
        compile_filter("(" * 200 + 'Service.ID == "x"' + ")" * 200)
    with pytest.raises(FilterError, match="deep"):
        compile_filter("not " * 200 + 'Service.ID == "x"')


words = st.sampled_from(
    ['Service.Tags contains "prod"', "Service.Port == 1", "Service.Meta is empty"]
)


@given(words, words)
def test_and_or_not_combine_as_boolean_logic(a: str, b: str) -> None:
    pa, pb = compile_filter(a)(ENTRY), compile_filter(b)(ENTRY)
    assert compile_filter(f"{a} and {b}")(ENTRY) is (pa and pb)
    assert compile_filter(f"{a} or {b}")(ENTRY) is (pa or pb)
    assert compile_filter(f"not ({a})")(ENTRY) is (not pa)


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [("(a|a)*b", "a" * 40), ("(.?){9}(.?){9}(.?){9}X", "x" * 60), ("(a+)+$", "a" * 40 + "!")],
)
def test_matches_takes_linear_time_on_patterns_that_backtrack(pattern: str, subject: str) -> None:
    """Each of these ran for seconds to hours in Python's backtracking ``re`` on the
    server's event loop (a request that stops a server); RE2 answers at once. The
    subjects are long enough that a backtracking engine would not finish this test."""
    entry = {"Service": {"Meta": {"k": subject}, "Address": subject}}
    pred = compile_filter(f'Service.Meta.k matches "{pattern}"')
    assert pred(entry) is False
    assert compile_filter(f'Service.Address matches "{pattern}"')(entry) is False


def test_a_pattern_re2_refuses_is_a_clear_error() -> None:
    with pytest.raises(FilterError, match=r"bad regular expression '\(a\)\\\\1': invalid escape"):
        compile_filter(r'Service.Service matches "(a)\\1"')
