"""One status machine for every check kind: thresholds, grace and flap damping.

A check's runs give raw results (passing, warning, critical). The machine turns them
into the status the registry stores:

- from passing, ``unhealthy_threshold`` consecutive failures (warning or critical) are
  needed to leave it (the last failure's status is taken); N-1 leave it passing;
- back to passing, ``healthy_threshold`` consecutive successes; but a check that has
  never passed since it started needs one (Envoy's rule at start-up: a healthy service
  is not held out for a whole threshold of intervals);
- before the first pass, failures inside ``grace`` are ignored (slow starters);
- flap damping: ``flap.changes`` status changes within ``flap.window`` hold the check
  critical, reported as flapping, until it has been stable for a whole window.

No I/O and no clock of its own: the caller passes the times, so tests drive it exactly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from msgspec import UNSET

from waypost.durations import parse_duration
from waypost.model import Check, CheckState, Status

_RANK = {Status.PASSING: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


def worst(statuses: list[Status]) -> Status:
    """The worst of some statuses (passing when there are none), as Consul aggregates."""
    return max(statuses, key=_RANK.__getitem__, default=Status.PASSING)


@dataclass(slots=True)
class CheckMachine:
    """The judged state of one check of one instance."""

    check: Check
    started: float
    status: Status = Status.CRITICAL
    output: str = ""
    successes: int = 0
    failures: int = 0
    ever_passed: bool = False
    ran: bool = False
    last_run: float | None = None
    changed_at: float = 0.0
    flapping: bool = False
    underlying: Status = Status.CRITICAL
    changes: deque[float] = field(default_factory=deque)
    stable_since: float = 0.0

    @classmethod
    def fresh(cls, check: Check, now: float, wall: float) -> CheckMachine:
        """A machine for a check that has not run yet: its initial status."""
        initial = Status(check.initial_status)
        return cls(
            check=check,
            started=now,
            status=initial,
            underlying=initial,
            output="not run yet",
            changed_at=wall,
        )

    @classmethod
    def resumed(cls, check: Check, state: CheckState, now: float) -> CheckMachine:
        """A machine carrying on from a stored state (after a restart or a hand-over)."""
        m = cls.fresh(check, now, state.changed_at)
        m.status = m.underlying = state.status
        m.output = state.output
        m.successes, m.failures = state.successes, state.failures
        m.ever_passed = m.ever_passed or state.status is Status.PASSING
        m.ran = state.last_run is not None
        m.last_run = state.last_run
        m.flapping = state.flapping
        m.stable_since = now
        return m

    @property
    def name(self) -> str:
        return self.check.name if isinstance(self.check.name, str) else self.check.kind

    def state(self) -> CheckState:
        """What the registry stores for this check."""
        return CheckState(
            name=self.name,
            kind=self.check.kind,
            status=Status.CRITICAL if self.flapping else self.status,
            output=self._shown_output(),
            flapping=self.flapping,
            successes=self.successes,
            failures=self.failures,
            last_run=self.last_run,
            changed_at=self.changed_at,
        )

    def _shown_output(self) -> str:
        flap = self.check.flap
        if not self.flapping or flap is UNSET:
            return self.output
        return (
            f"flapping: {flap.changes} changes within {flap.window}; held critical until "
            f"stable for {flap.window} (last: {self.output})"
        )[:4096]

    def observe(self, result: Status, output: str, now: float, wall: float) -> bool:
        """Take one run's result; True when the stored state must change (the reported
        status, the flapping flag, or the first result of all)."""
        before = (Status.CRITICAL if self.flapping else self.status, self.flapping)
        first = not self.ran
        self.ran = True
        self.last_run = wall
        check = self.check
        if result is Status.PASSING:
            self.successes += 1
            self.failures = 0
            needed = check.healthy_threshold if self.ever_passed else 1
            if self.underlying is not Status.PASSING and self.successes >= needed:
                self._move(Status.PASSING, now)
                self.ever_passed = True
            if self.underlying is Status.PASSING:
                self.output = output
        else:
            in_grace = not self.ever_passed and now - self.started < parse_duration(check.grace)
            if in_grace:
                self.output = f"in grace: {output}"
                return first
            self.failures += 1
            self.successes = 0
            if self.underlying is not Status.PASSING:
                # Already failing (or never passed): follow the latest failure at once.
                self._move(result, now)
            elif self.failures >= check.unhealthy_threshold:
                self._move(result, now)
            if self.underlying is not Status.PASSING:
                self.output = output
        self._damp(now)
        after = (Status.CRITICAL if self.flapping else self.status, self.flapping)
        if after != before:
            self.changed_at = wall
        return first or after != before

    def _move(self, status: Status, now: float) -> None:
        if status is self.underlying:
            return
        self.underlying = status
        self.status = status
        flap = self.check.flap
        if flap is not UNSET:
            self.changes.append(now)
            while len(self.changes) > flap.changes:
                self.changes.popleft()
            self.stable_since = now

    def _damp(self, now: float) -> None:
        flap = self.check.flap
        if flap is UNSET:
            return
        window = parse_duration(flap.window)
        if not self.flapping:
            if len(self.changes) >= flap.changes and now - self.changes[0] <= window:
                self.flapping = True
                self.stable_since = now
        elif now - self.stable_since >= window:
            self.flapping = False
            self.changes.clear()
