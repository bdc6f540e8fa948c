"""What a server counts as it works: plain counters and fixed-bucket histograms.

Kept in dicts and lists, not in ``prometheus_client`` objects: the hot path pays an
addition and a bisect (a fraction of a microsecond), not a metric's lock, and
``/metrics`` turns these into Prometheus families only when scraped (``api/metrics.py``).
Every label comes from a fixed set (routes, methods, status codes, check kinds), so
nothing here grows with what clients send.
"""

from __future__ import annotations

import bisect
import collections
from dataclasses import dataclass, field

_bisect = bisect.bisect_left

# Seconds: from a cached read (tens of µs) to a slow write (seconds).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})


class Histogram:
    """Counts per bucket (``counts[i]``: observations <= ``bounds[i]``, the last one
    past every bound), their sum and number."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[_bisect(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many observations (summed at scrape time, not kept per observation)."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus reads them, ``+Inf`` last."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


# The hot routes time one request in this many (their latency histogram is a sample;
# every request is counted): timing each cost 3% of the read throughput.
SAMPLE_EVERY = 16


class RouteStats:
    """One route and method's answers: how many (``n``), how many with a status code
    other than 200 (``codes``), and their latency."""

    __slots__ = ("codes", "method", "n", "route", "seconds")

    def __init__(self, route: str, method: str) -> None:
        self.route = route
        self.method = method
        self.n = 0
        self.codes: dict[int, int] = {}
        self.seconds = Histogram()

    def record(self, code: int, seconds: float | None) -> None:
        """One answer (``seconds`` None: not timed)."""
        self.n += 1
        if code != 200:
            self.codes[code] = self.codes.get(code, 0) + 1
        if seconds is not None:
            self.seconds.observe(seconds)

    def by_code(self) -> dict[int, int]:
        """Answers by status code."""
        out = dict(self.codes)
        ok = self.n - sum(out.values())
        if ok:
            out[200] = ok
        return out


@dataclass
class Telemetry:
    """The counters of one process."""

    # (route, method) -> its answers; blocking queries are not timed (their wait is the
    # client's choice). The hot path holds its routes' objects, so an answer costs no
    # lookup here.
    routes: dict[tuple[str, str], RouteStats] = field(default_factory=dict)
    # Store writes: operations by kind, how long each apply took, and failures.
    store_ops: collections.Counter[str] = field(default_factory=collections.Counter)
    store_seconds: Histogram = field(default_factory=Histogram)
    store_errors: int = 0
    # (check kind, status) -> runs.
    check_runs: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def route(self, route: str, method: str) -> RouteStats:
        """The stats of a route and method (made on first use; methods outside the
        standard ones count as ``other``)."""
        key = (route, method if method in METHODS else "other")
        stats = self.routes.get(key)
        if stats is None:
            stats = self.routes[key] = RouteStats(*key)
        return stats


TELEMETRY = Telemetry()
