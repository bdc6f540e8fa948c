"""Retries and timeouts: when to try again, how long to wait first, and how many retries
a service can take at once.

``RetryPolicy.should_retry`` decides from an attempt's outcome (an HTTP status, or a
failure kind: ``connect-failure``, ``reset``, ``timeout``) with Envoy's ``retry_on``
words: ``5xx``, ``gateway-error`` (502, 503, 504), ``reset``, ``connect-failure``,
``retriable-status-codes`` (the listed ``retriable_status_codes``). Methods that are not
idempotent (POST, PATCH) are not retried unless ``retry_non_idempotent``: a POST that
reached a server and failed may have done its work (a connect failure is retried for
any method: the request never left). Each retry goes to another endpoint
(the caller excludes the ones tried), after ``backoff``: exponential with full jitter
(AWS's advice), so clients that failed together do not come back together.

``RetryBudget`` caps retries in flight at a share of the requests in flight (Envoy's
retry budget, Finagle's): under a failure storm retries cannot multiply the load.

Pure: the caller measures time and sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes")
FAILURES = ("connect-failure", "reset", "timeout")
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
GATEWAY_ERRORS = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The SDK's default: 2 retries of idempotent methods on 5xx and connect failure."""

    max_retries: int = 2
    retry_on: tuple[str, ...] = ("5xx", "connect-failure")
    retriable_status_codes: tuple[int, ...] = ()
    # Each try's own limit, and the whole request's (retries included); None: no limit.
    per_try_timeout_s: float | None = None
    timeout_s: float | None = None
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.25
    retry_non_idempotent: bool = False
    budget: RetryBudgetPolicy = field(default_factory=lambda: RetryBudgetPolicy())

    def __post_init__(self) -> None:
        unknown = [w for w in self.retry_on if w not in RETRY_ON]
        if unknown:
            raise ValueError(
                f"retry.retry_on: unknown {', '.join(unknown)} (known: {', '.join(RETRY_ON)})"
            )
        if not 0 <= self.max_retries <= 10:
            raise ValueError("retry.max_retries: between 0 and 10")
        for code in self.retriable_status_codes:
            if not 100 <= code <= 599:
                raise ValueError(f"retry.retriable_status_codes: {code} is not an HTTP status")
        for name in ("per_try_timeout_s", "timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"retry.{name.removesuffix('_s')}: above zero")
        if not 0 < self.backoff_base_s <= self.backoff_max_s:
            raise ValueError("retry: backoff base above zero and at most backoff max")

    def should_retry(
        self, method: str, attempt: int, *, status: int | None = None, failure: str | None = None
    ) -> bool:
        """Whether attempt number ``attempt`` (0: the first) may be followed by another,
        given its answer ``status`` or its ``failure`` kind."""
        if attempt >= self.max_retries:
            return False
        on = self.retry_on
        if failure == "connect-failure":  # never sent: safe whatever the method
            return "connect-failure" in on or "reset" in on
        if method.upper() not in IDEMPOTENT and not self.retry_non_idempotent:
            return False
        if failure is not None:
            if failure not in FAILURES:
                raise ValueError(f"failure: {failure!r} is not one of {', '.join(FAILURES)}")
            return "reset" in on or "5xx" in on or "gateway-error" in on
        if status is None:
            return False
        if "5xx" in on and 500 <= status <= 599:
            return True
        if "gateway-error" in on and status in GATEWAY_ERRORS:
            return True
        return "retriable-status-codes" in on and status in self.retriable_status_codes

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1: the first retry):
        uniform in [0, min(max, base x 2^(attempt-1))] ("full jitter")."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class RetryBudgetPolicy:
    """Retries in flight at most ``percent`` % of requests in flight, but always at least
    ``min_concurrency`` (Envoy's defaults: 20 %, 3)."""

    percent: float = 20.0
    min_concurrency: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100 or self.min_concurrency < 0:
            raise ValueError("retry.budget: percent between 0 and 100, min_concurrency >= 0")


class RetryBudget:
    """Counts requests and retries in flight for one service."""

    def __init__(self, policy: RetryBudgetPolicy | None = None) -> None:
        self.policy = policy or RetryBudgetPolicy()
        self.active = 0
        self.retrying = 0
        self.refused = 0

    def request_started(self) -> None:
        self.active += 1

    def request_finished(self) -> None:
        self.active = max(0, self.active - 1)

    def try_retry(self) -> bool:
        """Take a retry slot if the budget has one (then ``retry_finished`` after)."""
        allowed = max(self.policy.min_concurrency, self.policy.percent / 100.0 * self.active)
        if self.retrying + 1 > allowed:
            self.refused += 1
            return False
        self.retrying += 1
        return True

    def retry_finished(self) -> None:
        self.retrying = max(0, self.retrying - 1)
