from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.errors import InvalidInput
from waypost.versions import Version, matches, parse_constraint, parse_version

nums = st.integers(min_value=0, max_value=50)
versions = st.builds(Version, nums, nums, nums, st.just(()))


@pytest.mark.parametrize(
    ("version", "constraint", "expected"),
    [
        ("1.4.2", ">=1.2,<2", True),
        ("2.0.0", ">=1.2,<2", False),
        ("1.1.9", ">=1.2,<2", False),
        ("1.9.0", "^1.2", True),
        ("2.0.0", "^1.2", False),
        ("0.2.5", "^0.2", True),
        ("0.3.0", "^0.2", False),
        ("0.0.3", "^0.0.3", True),
        ("0.0.4", "^0.0.3", False),
        ("1.2.9", "~1.2", True),
        ("1.3.0", "~1.2", False),
        ("1.2.3", "1.2.3", True),
        ("1.2.4", "=1.2.3", False),
        ("1.2.4", "=1.2", True),
        ("1.2.3", "!=1.2.3", False),
        ("5.0.0", "*", True),
        ("1.0.0-rc.1", "<1.0.0", True),
        ("1.0.0+build.7", "=1.0.0", True),
    ],
)
def test_constraints_match_as_npm_and_cargo_read_them(
    version: str, constraint: str, expected: bool
) -> None:
    assert matches(version, constraint) is expected


def test_an_instance_without_version_matches_no_constraint() -> None:
    assert not matches(None, "*")


@pytest.mark.parametrize("text", ["1.2", "v1.2.3", "01.2.3", "1.2.3.4", "", "a.b.c", "1.2.3-"])
def test_rejects_versions_that_are_not_semver(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_version(text)
    assert exc.value.field == "version"


@pytest.mark.parametrize("text", ["", ",", ">=", ">=a.b", "^x", ">=1.2,<"])
def test_rejects_malformed_constraints(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_constraint(text)


@given(versions, versions)
def test_precedence_is_a_total_order_consistent_with_comparators(a: Version, b: Version) -> None:
    assert matches(str(a), f">={b}") == (a.key() >= b.key())
    assert matches(str(a), f"<{b}") == (a.key() < b.key())
    assert matches(str(a), f"={b}") == (a == b)


@given(versions)
def test_caret_admits_exactly_the_same_leftmost_nonzero(v: Version) -> None:
    base = Version(v.major, v.minor, 0)
    got = matches(str(v), f"^{base.major}.{base.minor}")
    if base.major > 0:
        assert got == (v.major == base.major)
    else:
        assert got == (v.major == 0 and v.minor == base.minor)


@given(st.from_regex(r"\A[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(-[a-z0-9]{1,4})?\Z"))
def test_prerelease_sorts_before_its_release(text: str) -> None:
    try:
        v = parse_version(text)
    except InvalidInput:
        return  # leading zeros are not semver
    release = Version(v.major, v.minor, v.patch)
    assert v.key() <= release.key()
    assert (v.key() < release.key()) == bool(v.pre)
