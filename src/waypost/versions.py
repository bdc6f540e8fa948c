"""Semantic versions (semver 2.0.0) and the constraints users filter by.

A constraint is a comma-separated list of comparators, all of which must hold:
``>=1.2,<2``, ``=1.4.0``, ``!=1.3.1``, ``^1.2`` (compatible: same major, or same minor
below 1.0, as npm and Cargo), ``~1.2`` (same minor), ``*`` (any). Partial versions in a
constraint are padded with zeros (``1.2`` is ``1.2.0``). Precedence, prerelease ordering
and ignored build metadata follow semver.org section 11.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import NamedTuple

from waypost.errors import InvalidInput

# The official regex from semver.org, with named groups.
# Anchored with \A and \Z ("$" would accept a trailing newline); [0-9], not \d, which
# takes every Unicode digit. At most 9 digits a number, so that every version the pattern
# admits also parses into numbers this code (and a JSON reader) handles.
SEMVER_RE = re.compile(
    r"\A(?P<major>0|[1-9][0-9]{0,8})\.(?P<minor>0|[1-9][0-9]{0,8})\.(?P<patch>0|[1-9][0-9]{0,8})"
    r"(?:-(?P<pre>(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+(?P<build>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z"
)
SEMVER_PATTERN = SEMVER_RE.pattern
_NUM = r"(?:0|[1-9][0-9]{0,8})"
_PARTIAL = rf"v?({_NUM})(?:\.({_NUM}))?(?:\.({_NUM}))?(?:-([0-9A-Za-z.-]+))?"
_PARTIAL_RE = re.compile(rf"\A{_PARTIAL}\Z")
_PARTIAL_PLAIN = rf"v?{_NUM}(?:\.{_NUM})?(?:\.{_NUM})?(?:-[0-9A-Za-z.-]+)?"
_COMPARATOR = rf"(?:(?:>=|<=|==|!=|>|<|=|\^|~) *)?{_PARTIAL_PLAIN}|(?:==?)? *[*xX]"
# The whole grammar of a constraint, also shown as the pattern of the ``version`` query
# parameter: comparators separated by commas, spaces allowed around them.
CONSTRAINT_PATTERN = rf"\A *(?:{_COMPARATOR}) *(?:, *(?:{_COMPARATOR}) *)*\Z"
_CONSTRAINT_RE = re.compile(CONSTRAINT_PATTERN)


class Version(NamedTuple):
    """A parsed semantic version; build metadata is dropped as it has no precedence."""

    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return core + ("-" + ".".join(str(p) for p in self.pre) if self.pre else "")

    def key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        """A sort key giving semver precedence (a prerelease sorts before its release)."""
        pre_key = tuple((0, p) if isinstance(p, int) else (1, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre_key)


def _pre(text: str | None) -> tuple[int | str, ...]:
    if not text:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


@functools.lru_cache(maxsize=4096)
def parse_version(text: str) -> Version:
    """Parse a full semantic version such as ``1.4.2-rc.1+build.5``."""
    m = SEMVER_RE.match(text)
    if m is None:
        raise InvalidInput(
            f"version: {text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.2)",
            field="version",
        )
    return Version(int(m["major"]), int(m["minor"]), int(m["patch"]), _pre(m["pre"]))


def _partial(text: str) -> tuple[Version, int]:
    """Parse ``1``, ``1.2`` or ``1.2.3[-pre]``; also return how many numbers were given."""
    m = _PARTIAL_RE.match(text)
    if m is None:
        raise InvalidInput(f"version: {text!r} is not a version in a constraint", field="version")
    nums = [g for g in m.groups()[:3] if g is not None]
    major, minor, patch = (int(x) for x in [*nums, "0", "0"][:3])
    return Version(major, minor, patch, _pre(m.group(4))), len(nums)


Predicate = Callable[[Version], bool]
_OPS: dict[str, Callable[[tuple[object, ...], tuple[object, ...]], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "=": lambda a, b: a == b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_COMPARATOR_RE = re.compile(r"\A(>=|<=|==|!=|>|<|=|\^|~)? *(.+)\Z")


def _bounds(low: Version, high: Version) -> Predicate:
    lk, hk = low.key(), high.key()
    return lambda v: lk <= v.key() < hk


def _comparator(text: str) -> Predicate:
    m = _COMPARATOR_RE.match(text)
    if m is None or not m.group(2):
        raise InvalidInput(f"version: empty comparator in constraint {text!r}", field="version")
    op, rest = m.group(1) or "=", m.group(2)
    if rest in ("*", "x", "X") and op in ("=", "=="):
        return lambda v: True
    base, given = _partial(rest)
    if op == "^":
        # npm/Cargo caret: the left-most non-zero number may not change.
        if base.major > 0 or given == 1:
            high = Version(base.major + 1, 0, 0)
        elif base.minor > 0 or given == 2:
            high = Version(0, base.minor + 1, 0)
        else:
            high = Version(0, 0, base.patch + 1)
        return _bounds(base, high)
    if op == "~":
        high = (
            Version(base.major + 1, 0, 0) if given == 1 else Version(base.major, base.minor + 1, 0)
        )
        return _bounds(base, high)
    if op in ("=", "==") and given < 3:
        # "=1.2" means any 1.2.x, as npm reads a partial version.
        high = (
            Version(base.major + 1, 0, 0) if given == 1 else Version(base.major, base.minor + 1, 0)
        )
        return _bounds(base, high)
    cmp = _OPS[op]
    bk = base.key()
    return lambda v: cmp(v.key(), bk)


@functools.lru_cache(maxsize=1024)
def parse_constraint(text: str) -> Predicate:
    """Compile a constraint such as ``>=1.2,<2`` into a predicate on Version."""
    if not text.strip(" "):
        raise InvalidInput("version: empty version constraint", field="version")
    if _CONSTRAINT_RE.match(text) is None:
        raise InvalidInput(
            f"version: {text!r} is not a version constraint (e.g. >=1.2,<2 or ^1.4)",
            field="version",
        )
    preds = [_comparator(p.strip(" ")) for p in text.split(",")]
    return lambda v: all(p(v) for p in preds)


def matches(version: str | None, constraint: str) -> bool:
    """Whether ``version`` satisfies ``constraint``; an instance with no version never does."""
    if not version:
        return False
    try:
        v = parse_version(version)
    except InvalidInput:
        return False
    return parse_constraint(constraint)(v)
