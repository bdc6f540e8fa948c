"""Traffic management figures: what one pick costs, per balancer, over 100 endpoints.

Each balancer picks from 100 endpoints (weights 1-1000, a few requests in flight and
measured latencies, as a running client has them), a million times at most or for about
half a second, next to ``random.choice`` over the same list (the floor: a pick that
knows nothing). Writes ``results/traffic.{json,md}``. The proxy's figures against nginx
come with the proxy.

    .venv/bin/python bench/traffic.py
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

from _harness import write_results  # noqa: E402
from waypost.traffic import STRATEGIES, Endpoint, balancer  # noqa: E402

ENDPOINTS = 100
MAX_PICKS = 1_000_000
BUDGET_S = 0.5


def fleet() -> tuple[Endpoint, ...]:
    rng = random.Random(1)
    eps = []
    for i in range(ENDPOINTS):
        e = Endpoint(f"i-{i}", "10.0.0.1", 8000 + i, weight=rng.randint(1, 1000))
        e.active = rng.randint(0, 5)
        e.finished(rng.uniform(0.001, 0.02), ok=True, now=1.0)
        e.active = rng.randint(0, 5)
        eps.append(e)
    return tuple(eps)


def per_pick_us(pick: object, eps: tuple[Endpoint, ...], keyed: bool) -> float:
    """Microseconds per call of ``pick`` (bounded in count and time)."""
    keys = [f"client-{n}" for n in range(1024)]
    fn = pick  # a bound method
    done = 0
    start = time.perf_counter()
    deadline = start + BUDGET_S
    while done < MAX_PICKS and time.perf_counter() < deadline:
        if keyed:
            for k in keys:
                fn(eps, k)  # type: ignore[operator]
        else:
            for _ in range(1024):
                fn(eps)  # type: ignore[operator]
        done += 1024
    return (time.perf_counter() - start) / done * 1e6


def main() -> None:
    eps = fleet()
    rng = random.Random(2)
    floor = per_pick_us(lambda e: rng.choice(e), eps, keyed=False)
    rows = {}
    for name in STRATEGIES:
        b = balancer(name, rng=random.Random(3))
        rows[name] = per_pick_us(b.pick, eps, keyed=name == "consistent_hash")
    data = {"endpoints": ENDPOINTS, "random_choice_us": floor, "pick_us": rows}
    table = [
        (f"pick cost µs, {name}, {ENDPOINTS} endpoints", f"{us:.2f}", f"{floor:.2f}",
         f"{us / floor:.2f}x")
        for name, us in rows.items()
    ]  # fmt: skip
    notes = (
        "Peer: `random.choice` over the same 100 endpoints (a pick that knows nothing). "
        "Target: least_connections (power of two choices) <= 2 µs. consistent_hash is "
        "timed with a different key each pick (one blake2b of the key and one lookup in "
        "its Maglev table, built once for the set)."
    )
    write_results("traffic", data, table, notes)


if __name__ == "__main__":
    main()
