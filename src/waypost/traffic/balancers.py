"""Load balancers: pure choices among a service's endpoints (no sockets, no clock).

Every balancer answers ``pick(endpoints, key=None)`` over the endpoints it is given (the
caller passes the current healthy set, see ``eligible``). Balancers that keep state
(round robin, smooth weighted round robin, the consistent-hash table) key it by endpoint
id and follow the set as it changes. Randomness comes from an injectable
``random.Random`` so tests can fix the seed.

- ``RoundRobin``: each endpoint in turn.
- ``WeightedRoundRobin``: nginx's smooth weighted round robin (an endpoint of weight 5
  among ones of weight 1 is spread out, not picked five times in a row).
- ``LeastConnections``: power of two choices (Mitzenmacher): two endpoints at random,
  the one with fewer requests in flight; weight-aware (in flight / weight).
- ``RandomPick`` and ``WeightedRandom``.
- ``PeakEwma``: latency-aware, as Finagle and Linkerd: two at random, the lower
  ``peak-EWMA latency x (in flight + 1)``; the EWMA jumps to a slower sample at once and
  decays towards faster ones, so a slow endpoint loses traffic quickly.
- ``ConsistentHash``: Maglev (Google, NSDI 2016) on a key (a client address, a header, a
  session id): the same key lands on the same endpoint, and removing one of N endpoints
  moves about 1/N of the keys.
- ``ZonePreference`` wraps any of them: endpoints in the caller's zone (``meta.zone``)
  first, the others when the zone has none.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from waypost.errors import Unavailable

# Envoy's default: below half healthy, balance over every endpoint rather than overload
# the few that pass.
DEFAULT_PANIC_PERCENT = 50.0
# Peak EWMA: how fast an old latency fades (Finagle's default decay time is 10 s).
EWMA_DECAY_S = 10.0
# Maglev's lookup table sizes (primes). A table keeps its size while it has at least
# MAGLEV_MIN_SLOTS slots per endpoint (the paper advises 100 for shares within about 1 %
# of even) and at most MAGLEV_MAX_SLOTS: a new size moves every key, so endpoints coming
# and going one at a time must not change it.
MAGLEV_SIZES = (251, 1021, 4093, 16381, 65521)
MAGLEV_MIN_SLOTS = 50
MAGLEV_MAX_SLOTS = 1000


class NoEndpoint(Unavailable):
    """No endpoint to send a request to."""

    code = "no_endpoint"


class Endpoint:
    """One instance as a balancer sees it, with the counters it keeps.

    ``requests``, ``active``, ``errors`` and ``latency_ms`` (the peak EWMA) are readable
    for people and metrics; ``started`` and ``finished`` move them."""

    __slots__ = (
        "_ewma_at",
        "active",
        "address",
        "errors",
        "healthy",
        "id",
        "latency_ms",
        "meta",
        "port",
        "requests",
        "weight",
        "zone",
    )

    def __init__(
        self,
        id: str,
        address: str = "",
        port: int = 0,
        *,
        weight: int = 100,
        meta: Mapping[str, str] | None = None,
        healthy: bool = True,
    ) -> None:
        self.id = id
        self.address = address
        self.port = port
        self.weight = max(1, weight)
        self.meta = dict(meta or {})
        self.zone = self.meta.get("zone", "")
        self.healthy = healthy
        self.requests = 0
        self.active = 0
        self.errors = 0
        self.latency_ms = 0.0  # 0 until measured: unmeasured endpoints get tried
        self._ewma_at = 0.0

    def __repr__(self) -> str:
        return f"Endpoint({self.id!r}, {self.address}:{self.port}, weight={self.weight})"

    def started(self) -> None:
        self.requests += 1
        self.active += 1

    def abandoned(self) -> None:
        """A request that started here ended without an outcome to judge (the caller
        went away, or failed before it was sent): no longer in flight, nothing learnt."""
        self.active = max(0, self.active - 1)

    def finished(self, latency_s: float, *, ok: bool, now: float) -> None:
        """A request ended after ``latency_s`` at time ``now`` (monotonic seconds)."""
        self.active = max(0, self.active - 1)
        if not ok:
            self.errors += 1
        sample = latency_s * 1000.0
        if sample >= self.latency_ms or self._ewma_at == 0.0:
            self.latency_ms = sample  # peak: a slower sample counts at once
        else:
            decay = math.exp(-max(0.0, now - self._ewma_at) / EWMA_DECAY_S)
            self.latency_ms = self.latency_ms * decay + sample * (1.0 - decay)
        self._ewma_at = now

    def stats(self) -> dict[str, float | int | str]:
        return {
            "id": self.id,
            "requests": self.requests,
            "active": self.active,
            "errors": self.errors,
            "latency_ms": round(self.latency_ms, 3),
        }


def eligible(
    endpoints: Sequence[Endpoint], panic_percent: float = DEFAULT_PANIC_PERCENT
) -> list[Endpoint]:
    """The endpoints to balance over: the healthy ones, or all of them when fewer than
    ``panic_percent`` % are healthy (Envoy's panic threshold: spreading over every
    endpoint beats piling all traffic on the few left)."""
    healthy = [e for e in endpoints if e.healthy]
    if endpoints and len(healthy) * 100.0 < panic_percent * len(endpoints):
        return list(endpoints)
    return healthy


class Balancer(Protocol):
    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        """One of ``endpoints`` for a request (``key``: for hashing balancers)."""
        ...


def _none_left() -> NoEndpoint:
    return NoEndpoint("no healthy endpoint to send the request to", field="service")


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        if not endpoints:
            raise _none_left()
        n = self._next % len(endpoints)
        self._next = n + 1
        return endpoints[n]


class WeightedRoundRobin:
    """nginx's smooth weighted round robin: each pick adds every endpoint's weight to its
    current value, takes the highest, and subtracts the total from it."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        if not endpoints:
            raise _none_left()
        current = self._current
        if len(current) > 2 * len(endpoints):  # endpoints gone: forget them
            ids = {e.id for e in endpoints}
            self._current = current = {k: v for k, v in current.items() if k in ids}
        total = 0
        best: Endpoint | None = None
        best_value = 0
        for e in endpoints:
            value = current.get(e.id, 0) + e.weight
            current[e.id] = value
            total += e.weight
            if best is None or value > best_value:
                best, best_value = e, value
        assert best is not None
        current[best.id] = best_value - total
        return best


class RandomPick:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        if not endpoints:
            raise _none_left()
        return endpoints[int(self._rng.random() * len(endpoints))]


class WeightedRandom:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._seen: Sequence[Endpoint] | None = None
        self._weights: tuple[int, ...] = ()
        self._cumulative: list[int] = []

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        if not endpoints:
            raise _none_left()
        # The same tuple again (the cache hands out tuples): the same running sums.
        if endpoints is not self._seen or not isinstance(endpoints, tuple):
            weights = tuple(e.weight for e in endpoints)
            if weights != self._weights:
                self._weights = weights
                self._cumulative = list(itertools.accumulate(weights))
            self._seen = endpoints
        cumulative = self._cumulative
        point = self._rng.random() * cumulative[-1]
        return endpoints[min(bisect.bisect_right(cumulative, point), len(endpoints) - 1)]


class _TwoChoices:
    """Two distinct endpoints at random; the one with the lower ``cost``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def cost(self, e: Endpoint) -> float:
        raise NotImplementedError

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        n = len(endpoints)
        if n < 2:
            if not n:
                raise _none_left()
            return endpoints[0]
        rand = self._rng.random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a, b = endpoints[i], endpoints[j]
        return a if self.cost(a) <= self.cost(b) else b


class LeastConnections(_TwoChoices):
    """Power of two choices on requests in flight per unit of weight."""

    def cost(self, e: Endpoint) -> float:
        return (e.active + 1) / e.weight


class PeakEwma(_TwoChoices):
    """Latency-aware: two at random, the lower peak-EWMA latency x (in flight + 1)."""

    def cost(self, e: Endpoint) -> float:
        return e.latency_ms * (e.active + 1)


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class ConsistentHash:
    """Maglev hashing on a key: every endpoint fills its share of a lookup table by its
    own permutation; a key's hash indexes the table. The table is built once per endpoint
    set (about 1 ms per 10 endpoints); picks are one hash and one lookup."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._ids: tuple[str, ...] = ()
        self._ordered: list[Endpoint] = []
        self._table: list[int] = []
        self._seen: Sequence[Endpoint] | None = None

    @staticmethod
    def size_for(n: int, current: int = 0) -> int:
        """The table size for ``n`` endpoints: ``current`` while it fits (see above)."""
        if current and MAGLEV_MIN_SLOTS * n <= current <= MAGLEV_MAX_SLOTS * max(n, 1):
            return current
        for m in MAGLEV_SIZES:
            if m >= 2 * MAGLEV_MIN_SLOTS * n:
                return m
        return MAGLEV_SIZES[-1]

    @staticmethod
    def table_for(ids: Sequence[str], m: int) -> list[int]:
        """Maglev's lookup table of size ``m`` (a prime) over ``ids`` (their indexes)."""
        n = len(ids)
        perms = []
        for node in ids:
            h = _h64(node.encode())
            perms.append((h % m, (h >> 32) % (m - 1) + 1))
        table = [-1] * m
        nexts = [0] * n
        filled = 0
        while True:
            for i in range(n):
                offset, skip = perms[i]
                c = (offset + nexts[i] * skip) % m
                while table[c] >= 0:
                    nexts[i] += 1
                    c = (offset + nexts[i] * skip) % m
                table[c] = i
                nexts[i] += 1
                filled += 1
                if filled == m:
                    return table

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        if not endpoints:
            raise _none_left()
        if key is None:  # nothing to hash on: any endpoint will do
            return endpoints[int(self._rng.random() * len(endpoints))]
        # The same tuple again (immutable: the cache hands out tuples): the same table.
        if endpoints is not self._seen or not isinstance(endpoints, tuple):
            ordered = sorted(endpoints, key=lambda e: e.id)
            ids = tuple(e.id for e in ordered)
            if ids != self._ids:
                size = self.size_for(len(ids), len(self._table))
                self._ids, self._table = ids, self.table_for(ids, size)
            self._ordered = ordered
            self._seen = endpoints
        table = self._table
        return self._ordered[table[_h64(key.encode()) % len(table)]]


class ZonePreference:
    """Endpoints in ``zone`` (their ``meta.zone``) first; all of them when none is."""

    def __init__(self, inner: Balancer, zone: str) -> None:
        self.inner = inner
        self.zone = zone

    def pick(self, endpoints: Sequence[Endpoint], key: str | None = None) -> Endpoint:
        if self.zone:
            local = [e for e in endpoints if e.zone == self.zone]
            if local:
                return self.inner.pick(local, key)
        return self.inner.pick(endpoints, key)


STRATEGIES: dict[str, Callable[[random.Random | None], Balancer]] = {
    "round_robin": lambda rng: RoundRobin(),
    "weighted_round_robin": lambda rng: WeightedRoundRobin(),
    "least_connections": lambda rng: LeastConnections(rng),
    "random": lambda rng: RandomPick(rng),
    "weighted_random": lambda rng: WeightedRandom(rng),
    "peak_ewma": lambda rng: PeakEwma(rng),
    "consistent_hash": lambda rng: ConsistentHash(rng),
}


def balancer(strategy: str, *, zone: str = "", rng: random.Random | None = None) -> Balancer:
    """The balancer a policy names (``STRATEGIES``), preferring ``zone`` if given."""
    make = STRATEGIES.get(strategy)
    if make is None:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"load_balancer: unknown strategy {strategy!r} (one of {known})")
    inner = make(rng)
    return ZonePreference(inner, zone) if zone else inner
