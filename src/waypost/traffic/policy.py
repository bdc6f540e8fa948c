"""The registry's traffic policies (a service's config) as the objects that apply them.

A ``ServiceConfig`` carries ``load_balancer``, ``retry``, ``circuit_breaker``, ``timeout``
and ``split`` as JSON-shaped structs (validated by the model, named in errors); these
functions turn them into the balancer, retry policy, breakers and split of this
package. A missing policy gives the SDK's defaults: round robin, two retries of
idempotent methods on 5xx and connect failure, outlier detection at 5 consecutive
errors for 30 s with at most half the endpoints out, no split.
"""

from __future__ import annotations

import random

from waypost.durations import parse_duration
from waypost.model import CircuitBreakerConfig, LoadBalancerPolicy, RetryConfig, ServiceConfig
from waypost.traffic.balancers import Balancer, balancer
from waypost.traffic.outlier import LimitsPolicy, OutlierPolicy
from waypost.traffic.retry import RetryBudgetPolicy, RetryPolicy
from waypost.traffic.split import Split


def balancer_for(
    policy: LoadBalancerPolicy | None, *, zone: str = "", rng: random.Random | None = None
) -> Balancer:
    p = policy or LoadBalancerPolicy()
    return balancer(p.strategy, zone=zone if p.prefer_zone else "", rng=rng)


def retry_policy(policy: RetryConfig | None, timeout: str | None = None) -> RetryPolicy:
    p = policy or RetryConfig()
    return RetryPolicy(
        max_retries=p.max_retries,
        retry_on=tuple(p.retry_on),
        retriable_status_codes=tuple(p.retriable_status_codes),
        per_try_timeout_s=parse_duration(p.per_try_timeout) if p.per_try_timeout else None,
        timeout_s=parse_duration(timeout) if timeout else None,
        backoff_base_s=parse_duration(p.backoff_base),
        # A cap below the base: the base is the cap.
        backoff_max_s=max(parse_duration(p.backoff_max), parse_duration(p.backoff_base)),
        retry_non_idempotent=p.retry_non_idempotent,
        budget=RetryBudgetPolicy(
            percent=p.budget_percent, min_concurrency=p.budget_min_concurrency
        ),
    )


def outlier_policy(policy: CircuitBreakerConfig | None) -> OutlierPolicy:
    p = policy or CircuitBreakerConfig()
    return OutlierPolicy(
        consecutive_errors=p.consecutive_errors,
        interval_s=parse_duration(p.interval),
        base_ejection_s=parse_duration(p.base_ejection_time),
        # A cap below the base: the base is the cap.
        max_ejection_s=max(
            parse_duration(p.max_ejection_time), parse_duration(p.base_ejection_time)
        ),
        max_ejection_percent=p.max_ejection_percent,
        half_open_successes=p.half_open_successes,
    )


def limits_policy(policy: CircuitBreakerConfig | None) -> LimitsPolicy:
    p = policy or CircuitBreakerConfig()
    return LimitsPolicy(
        max_requests=p.max_requests,
        max_pending_requests=p.max_pending_requests,
        max_retries=p.max_retries,
        max_connections=p.max_connections,
    )


def split_for(config: ServiceConfig | None, rng: random.Random | None = None) -> Split | None:
    if config is None or sum(side.weight for side in config.split) <= 0:
        return None  # no split, or one that prefers nothing
    return Split(config.split, rng)
