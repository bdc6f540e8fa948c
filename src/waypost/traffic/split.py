"""Traffic splits: a share of a service's requests to each version (an 80/20 canary, a
blue/green switch), falling back to the other versions when one has no endpoint.

A split is a list of ``(version constraint, weight)``; the constraint is the registry's
own (``1.4.x``, ``^2``, ``>=2.0 <3``: see ``waypost.versions``), matched against each
endpoint's instance version. Weights are relative (80 and 20, or 4 and 1). A request
picks a side by weight among the sides that have endpoints now; a side with none
(all failing, or not deployed yet) gives its share to the others, so a split never
sends traffic nowhere.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Mapping, Sequence

from waypost.model import SplitSide
from waypost.traffic.balancers import Endpoint
from waypost.versions import matches, parse_constraint

__all__ = ["Split", "SplitSide"]


class Split:
    """Chooses the endpoints of one side per request."""

    def __init__(self, sides: Sequence[SplitSide], rng: random.Random | None = None) -> None:
        if not sides:
            raise ValueError("split: at least one side")
        for side in sides:
            parse_constraint(side.version)  # InvalidInput naming the bad constraint
            if not 0 <= side.weight <= 10_000:
                raise ValueError(f"split: weight {side.weight} of {side.version!r} not in 0-10000")
        if sum(s.weight for s in sides) <= 0:
            raise ValueError("split: the weights add up to zero")
        self.sides = tuple(sides)
        self._rng = rng or random.Random()

    def partition(
        self, endpoints: Sequence[Endpoint], versions: Mapping[str, str | None]
    ) -> list[list[Endpoint]]:
        """Each side's endpoints; ``versions`` maps endpoint id to instance version."""
        out: list[list[Endpoint]] = [[] for _ in self.sides]
        for e in endpoints:
            v = versions.get(e.id)
            for i, side in enumerate(self.sides):
                if matches(v, side.version):
                    out[i].append(e)
                    break
        return out

    def choose(
        self, endpoints: Sequence[Endpoint], versions: Mapping[str, str | None]
    ) -> tuple[str, list[Endpoint]]:
        """The side a request goes to (its version constraint) and its endpoints: by
        weight among the sides with endpoints; all endpoints if no side has any."""
        parts = self.partition(endpoints, versions)
        live = [(s, p) for s, p in zip(self.sides, parts, strict=True) if p and s.weight > 0]
        if not live:
            live = [(s, p) for s, p in zip(self.sides, parts, strict=True) if p]
        if not live:
            return "", list(endpoints)
        cumulative = list(itertools.accumulate(s.weight for s, _ in live))
        if cumulative[-1] <= 0:
            side, part = live[0]
            return side.version, part
        point = self._rng.random() * cumulative[-1]
        side, part = live[min(bisect.bisect_right(cumulative, point), len(live) - 1)]
        return side.version, part
