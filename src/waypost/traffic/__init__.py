"""Traffic management, pure: balancers (and, next, outlier detection, retries, splits and
routes) that choose among endpoints without sockets or clocks of their own."""

from __future__ import annotations

from waypost.traffic.balancers import (
    STRATEGIES,
    Balancer,
    ConsistentHash,
    Endpoint,
    LeastConnections,
    NoEndpoint,
    PeakEwma,
    RandomPick,
    RoundRobin,
    WeightedRandom,
    WeightedRoundRobin,
    ZonePreference,
    balancer,
    eligible,
)

__all__ = [
    "STRATEGIES",
    "Balancer",
    "ConsistentHash",
    "Endpoint",
    "LeastConnections",
    "NoEndpoint",
    "PeakEwma",
    "RandomPick",
    "RoundRobin",
    "WeightedRandom",
    "WeightedRoundRobin",
    "ZonePreference",
    "balancer",
    "eligible",
]
