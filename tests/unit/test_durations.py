from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.durations import format_duration, parse_duration
from waypost.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("30", 30.0),
        ("9999h", 9999 * 3600.0),
        ("1h2m3s4ms", 3723.004),
    ],
)
def test_parses_what_people_write(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "s", "10x", "-5s", "1m-3s", "10 s", "5s10", "ms", "999999h", " 5s", "5s\n", "1s1s1s1s1s"],
)
def test_rejects_malformed_durations_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_duration(text, field="ttl")
    assert exc.value.field == "ttl"
    assert "ttl" in exc.value.message


@given(st.integers(min_value=0, max_value=4 * 366 * 24 * 3600 * 1000))
def test_format_then_parse_round_trips_whole_milliseconds(ms: int) -> None:
    assert round(parse_duration(format_duration(ms / 1000)) * 1000) == ms


@given(st.text(max_size=12))
def test_parser_never_raises_anything_but_invalid_input(text: str) -> None:
    with contextlib.suppress(InvalidInput):
        assert parse_duration(text) >= 0


@given(st.text(alphabet="0123456789.nsuµmh \n", max_size=14))
def test_the_pattern_the_schema_shows_is_exactly_what_parses(text: str) -> None:
    import re

    from waypost.durations import DURATION_PATTERN

    shown = re.fullmatch(DURATION_PATTERN.removeprefix("\\A").removesuffix("\\Z"), text)
    try:
        parse_duration(text)
    except InvalidInput:
        assert shown is None
    else:
        assert shown is not None
