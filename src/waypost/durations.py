"""Durations as people write them: ``500ms``, ``10s``, ``1m30s``, ``2h``.

The grammar is Go's ``time.ParseDuration`` without signs, which is what Consul and etcd
users type: one or more ``<number><unit>`` pairs, units ns, us (µs), ms, s, m, h.
A bare number is taken as seconds, since that is what a shell user means.
"""

from __future__ import annotations

import functools
import re

from waypost.errors import InvalidInput

_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_UNITS = r"(?:ns|us|µs|ms|s|m|h)"
# Exactly what is accepted, as a pattern the API schema shows too: at most 4 parts of at
# most 5 integer digits, or a bare number of at most 9 digits, so that nothing the pattern
# admits is longer than MAX_DURATION_S. Anchored with \A and \Z: "$" would let a trailing
# newline in. [0-9], not \d, which takes every Unicode digit.
DURATION_PATTERN = (
    rf"\A(?:[0-9]{{1,9}}(?:\.[0-9]{{1,9}})?|(?:[0-9]{{1,5}}(?:\.[0-9]{{1,9}})?{_UNITS}){{1,4}})\Z"
)
# Spellings of zero, refused where a duration must be longer than zero.
ZERO_DURATION_PATTERN = rf"\A(?:[0.]+{_UNITS}?)+\Z"
_DURATION_RE = re.compile(DURATION_PATTERN)
MAX_DURATION_CHARS = 32
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
# Four parts of 99999.999h is under 46 years; nothing the pattern admits is longer.
MAX_DURATION_S = 50 * 366 * 24 * 3600.0


@functools.lru_cache(maxsize=1024)
def parse_duration(text: str, *, field: str = "duration") -> float:
    """Parse ``text`` into seconds; raise InvalidInput naming ``field`` when malformed."""
    if not text:
        raise InvalidInput(f"{field}: empty duration", field=field)
    if len(text) > MAX_DURATION_CHARS or _DURATION_RE.match(text) is None:
        raise InvalidInput(
            f"{field}: {text!r} is not a duration (use forms like 500ms, 10s, 1m30s, 2h)",
            field=field,
        )
    if text[-1].isdigit():
        return float(text)
    return min(
        sum(float(m.group(1)) * _UNIT_S[m.group(2)] for m in _PART.finditer(text)),
        MAX_DURATION_S,
    )


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` (to the millisecond) that
    ``parse_duration`` reads back: ``1h30m``, ``2s500ms``, ``250ms``."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    whole, rest_ms = divmod(ms, 1000)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    parts = [(h, "h"), (m, "m"), (s, "s"), (rest_ms, "ms")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)
