"""Runs many checks concurrently, on time, with bounded parallelism; reports only changes.

One component, hosted by the agent (its node's instances) or by the server (instances
registered through the API with checks). Each check is a job due every ``interval`` on a
fixed rate (a slow run never makes the schedule drift; a run still going when its next
slot comes skips that slot). The first run of each job is spread with jitter, so a
thousand checks registered at once do not fire together. Due jobs are timers of the event
loop itself; when ``parallelism`` runs are in flight the next wait in line, first come
first served. A run is cut at its ``timeout`` and counts as a failure; a run that raises
counts as a failure with the error as output. Results go through ``CheckMachine``; when
the stored state must change, ``report`` is called with every state of the instance. A
report that fails is retried with the next run of that check.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

from waypost.durations import parse_duration
from waypost.health import command, grpc, http, tcp
from waypost.health.context import CheckContext
from waypost.health.files import CheckFiles
from waypost.health.machine import CheckMachine
from waypost.model import Check, CheckState, Status
from waypost.telemetry import TELEMETRY

log = logging.getLogger("waypost.health")

Runner = Callable[[Check, CheckContext], Awaitable[tuple[Status, str]]]
Report = Callable[[str, tuple[CheckState, ...]], Awaitable[None]]
Clock = Callable[[], float]

RUNNERS: dict[str, Runner] = {
    "http": http.run,
    "https": http.run,
    "tcp": tcp.run,
    "command": command.run,
    "grpc": grpc.run,
}
# The first run of a check comes within this (or its interval, if shorter) of its
# registration, spread at random.
FIRST_RUN_SPREAD_S = 1.0
# Shorter intervals are run at this one: a typo of 1ms must not make a busy loop.
MIN_INTERVAL_S = 0.1
# Start delays kept for the drift figure (``drift_p99_ms``).
DRIFT_SAMPLES = 10_000


@dataclass(slots=True, eq=False)
class _Job:
    instance: str
    machine: CheckMachine
    interval: float
    timeout: float
    due: float
    handle: asyncio.TimerHandle | None = None
    running: bool = False
    live: bool = True
    unreported: bool = False


class Scheduler:
    """The checks of many instances; ``set_instance`` / ``remove_instance`` keep it in
    step with what should be checked, ``run_now`` runs an instance's checks at once."""

    def __init__(
        self,
        report: Report,
        *,
        parallelism: int = 1024,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        first_run_spread_s: float = FIRST_RUN_SPREAD_S,
        files: CheckFiles | None = None,
    ) -> None:
        """``files``: what checks may read (default: nothing; an agent: anything)."""
        self._report = report
        self._parallelism = parallelism
        self._clock = clock
        self._wall = wall
        self._spread = first_run_spread_s
        self._jobs: dict[str, dict[str, _Job]] = {}
        self._waiting: deque[_Job] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        self._drift: deque[float] = deque(maxlen=DRIFT_SAMPLES)
        self.context = CheckContext(files)
        self.runs = 0
        self.report_errors = 0
        self.last_error: str | None = None

    # --- what is checked -------------------------------------------------------------------

    def set_instance(
        self, instance_id: str, checks: Sequence[Check], states: Sequence[CheckState] = ()
    ) -> None:
        """Check ``instance_id`` with ``checks`` (TTL checks are not run here). A check
        already running with the same definition carries on; a new one resumes from its
        stored state if ``states`` has one of its name and kind, or starts fresh."""
        old = self._jobs.pop(instance_id, {})
        stored = {s.name: s for s in states}
        jobs: dict[str, _Job] = {}
        now = self._clock()
        for check in checks:
            if check.kind == "ttl":
                continue
            name = str(check.name) if isinstance(check.name, str) else check.kind
            job = old.pop(name, None)
            if job is not None and job.machine.check == check:
                jobs[name] = job
                continue
            if job is not None:
                self._cancel(job)
            state = stored.get(name)
            if state is not None and state.kind == check.kind:
                machine = CheckMachine.resumed(check, state, now)
            else:
                machine = CheckMachine.fresh(check, now, self._wall())
            interval = max(parse_duration(check.interval), MIN_INTERVAL_S)
            job = _Job(
                instance=instance_id,
                machine=machine,
                interval=interval,
                timeout=parse_duration(check.timeout),
                due=now + random.uniform(0, min(interval, self._spread)),
            )
            jobs[name] = job
            if isinstance(check.grpc, str):
                self.context.grpc_hold(check.grpc)
            self._arm(job)
        for job in old.values():
            self._cancel(job)
        if jobs:
            self._jobs[instance_id] = jobs

    def adopt(self, instance_id: str, states: Sequence[CheckState]) -> None:
        """Carry on from stored states for checks of ``instance_id`` that have not run
        yet (an agent restarted: its services keep their statuses)."""
        stored = {s.name: s for s in states}
        for name, job in self._jobs.get(instance_id, {}).items():
            state = stored.get(name)
            if state is not None and not job.machine.ran and state.kind == job.machine.check.kind:
                job.machine = CheckMachine.resumed(job.machine.check, state, self._clock())

    def remove_instance(self, instance_id: str) -> None:
        for job in self._jobs.pop(instance_id, {}).values():
            self._cancel(job)

    def instances(self) -> list[str]:
        return list(self._jobs)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._jobs

    def __len__(self) -> int:
        """How many checks are scheduled."""
        return sum(len(j) for j in self._jobs.values())

    def states(self, instance_id: str) -> tuple[CheckState, ...]:
        """The live state of each check of an instance (counts and last run as of now)."""
        return tuple(j.machine.state() for j in self._jobs.get(instance_id, {}).values())

    def machines(self) -> Iterator[tuple[str, CheckMachine]]:
        for iid, jobs in self._jobs.items():
            for job in jobs.values():
                yield iid, job.machine

    # --- running ---------------------------------------------------------------------------

    def _arm(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        # call_at speaks the loop's clock; our due times are on ours (the same by default).
        delay = job.due - self._clock()
        job.handle = loop.call_at(loop.time() + max(delay, 0.0), self._fire, job)

    def _cancel(self, job: _Job) -> None:
        job.live = False
        if job.handle is not None:
            job.handle.cancel()
            job.handle = None
        target = job.machine.check.grpc
        if isinstance(target, str):
            self.context.grpc_release(target)

    def _fire(self, job: _Job) -> None:
        job.handle = None
        if not job.live:
            return
        if job.running:  # the last run is still going: skip this slot
            self._next(job)
            return
        if self._running >= self._parallelism:
            self._waiting.append(job)
            return
        self._start(job)

    def _start(self, job: _Job) -> None:
        self._running += 1
        job.running = True
        task = asyncio.create_task(self._run(job), name=f"check {job.instance}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        while self._waiting and self._running < self._parallelism:
            job = self._waiting.popleft()
            if job.live:
                self._start(job)

    def _next(self, job: _Job) -> None:
        now = self._clock()
        job.due += job.interval
        if job.due <= now:  # slots missed (a slow run, a stalled loop): the next one ahead
            missed = int((now - job.due) // job.interval) + 1
            job.due += missed * job.interval
        self._arm(job)

    async def _execute(self, check: Check, limit_s: float) -> tuple[Status, str]:
        try:
            async with asyncio.timeout(limit_s):
                return await RUNNERS[check.kind](check, self.context)
        except TimeoutError:
            return Status.CRITICAL, f"timed out after {check.timeout}"
        except Exception as exc:  # a check must never take the scheduler down
            log.exception("check %s failed unexpectedly", check.name)
            return Status.CRITICAL, f"check failed: {type(exc).__name__}: {exc}"

    async def _run(self, job: _Job) -> None:
        started = self._clock()
        self._drift.append(started - job.due)
        try:
            status, output = await self._execute(job.machine.check, job.timeout)
            self.runs += 1
            TELEMETRY.check_runs[(job.machine.check.kind, status.value)] += 1
            if not job.live:
                return
            changed = job.machine.observe(status, output, self._clock(), self._wall())
            if changed or job.unreported:
                await self._send(job)
        finally:
            job.running = False
            if job.live:
                self._next(job)

    async def _send(self, job: _Job) -> None:
        try:
            await self._report(job.instance, self.states(job.instance))
            job.unreported = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            job.unreported = True
            self.report_errors += 1
            self.last_error = f"reporting {job.instance}: {exc}"
            log.warning("could not report the checks of %s (%s); retrying", job.instance, exc)

    async def run_now(self, instance_id: str) -> tuple[CheckState, ...]:
        """Run every check of an instance now (beside its schedule), report what changed,
        and answer the states."""
        jobs = list(self._jobs.get(instance_id, {}).values())
        results = await asyncio.gather(*(self._execute(j.machine.check, j.timeout) for j in jobs))
        changed = False
        for job, (status, output) in zip(jobs, results, strict=True):
            if job.live:
                changed |= job.machine.observe(status, output, self._clock(), self._wall())
        if changed and jobs:
            await self._send(jobs[0])
        return self.states(instance_id)

    def drift_p99_ms(self) -> float:
        """The 99th percentile of how late check runs started, in milliseconds."""
        if not self._drift:
            return 0.0
        ordered = sorted(self._drift)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    def reset_drift(self) -> None:
        self._drift.clear()

    async def close(self) -> None:
        for iid in list(self._jobs):
            self.remove_instance(iid)
        self._waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.context.close()
