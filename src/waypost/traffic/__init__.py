"""Traffic management, pure: balancers and circuit breaking (and, next, retries, splits
and routes) that choose among endpoints without sockets or clocks of their own."""

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
from waypost.traffic.outlier import (
    Limits,
    LimitsPolicy,
    OutlierDetector,
    OutlierPolicy,
    Overloaded,
)

__all__ = [
    "STRATEGIES",
    "Balancer",
    "ConsistentHash",
    "Endpoint",
    "LeastConnections",
    "Limits",
    "LimitsPolicy",
    "NoEndpoint",
    "OutlierDetector",
    "OutlierPolicy",
    "Overloaded",
    "PeakEwma",
    "RandomPick",
    "RoundRobin",
    "WeightedRandom",
    "WeightedRoundRobin",
    "ZonePreference",
    "balancer",
    "eligible",
]
