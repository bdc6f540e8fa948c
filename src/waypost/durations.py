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
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_BARE = re.compile(r"\d+(?:\.\d+)?")
# Nobody means a TTL or a wait of more than a year; reject it rather than overflow timers.
MAX_DURATION_S = 366 * 24 * 3600.0


@functools.lru_cache(maxsize=1024)
def parse_duration(text: str, *, field: str = "duration") -> float:
    """Parse ``text`` into seconds; raise InvalidInput naming ``field`` when malformed."""
    s = text.strip()
    if not s:
        raise InvalidInput(f"{field}: empty duration", field=field)
    if _BARE.fullmatch(s):
        seconds = float(s)
    else:
        pos = 0
        seconds = 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise InvalidInput(
                f"{field}: {text!r} is not a duration (use forms like 500ms, 10s, 1m30s, 2h)",
                field=field,
            )
    if seconds > MAX_DURATION_S:
        raise InvalidInput(f"{field}: {text!r} is longer than a year", field=field)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` that ``parse_duration`` reads back."""
    if seconds == 0:
        return "0s"
    ms = round(seconds * 1000)
    if ms % 1000 != 0 or seconds < 1:
        return f"{ms}ms"
    whole = ms // 1000
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    out = ""
    if h:
        out += f"{h}h"
    if m:
        out += f"{m}m"
    if s:
        out += f"{s}s"
    return out
