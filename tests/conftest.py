"""Fixtures that start real ``waypost`` processes on free loopback ports and always stop them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, settings

from waypost.testing import EtcdCluster, ServerProcess

T = TypeVar("T")

# Property tests: `make test` (and plain pytest) runs the "waypost" profile, derandomized:
# the same examples every run, so a red run is a real regression and never chance.
# `scripts/explore-properties.sh` runs them with "explore": new random examples each
# time, kept in .hypothesis/ so a failure it finds replays (and then gets a regression
# example in the test). Shared machines stall now and then: judge properties, not
# per-example speed.
_quiet = [HealthCheck.too_slow]
settings.register_profile(
    "waypost", deadline=None, suppress_health_check=_quiet, derandomize=True, database=None
)
settings.register_profile("explore", deadline=None, suppress_health_check=_quiet, derandomize=False)
settings.load_profile(os.environ.get("WAYPOST_HYPOTHESIS_PROFILE", "waypost"))


def wait_until(
    cond: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.01,
) -> Any:
    """Poll ``cond`` every ``interval_s`` until it returns something truthy; fail after
    ``timeout_s``. The one place a blocking test waits (with ``until`` for async ones)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


async def until(
    cond: Callable[[], Any], what: str, timeout_s: float = 10.0, interval_s: float = 0.01
) -> Any:
    """``wait_until`` for asyncio tests: the loop keeps running while it polls; ``cond``
    may be a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if inspect.isawaitable(got):
            got = await got
        if got:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)
    return got


@contextlib.asynccontextmanager
async def in_thread(cm: contextlib.AbstractContextManager[T]) -> AsyncIterator[T]:
    """Enter and leave a blocking context manager (one that starts or stops a process)
    in a worker thread, so that an async test's event loop runs on meanwhile."""
    value = await asyncio.to_thread(cm.__enter__)
    try:
        yield value
    except BaseException as exc:
        if not await asyncio.to_thread(cm.__exit__, type(exc), exc, exc.__traceback__):
            raise
    else:
        await asyncio.to_thread(cm.__exit__, None, None, None)


# The promise under test: no callback holds the event loop (a held loop stalls every
# request, DNS included; python-zeroconf's tests guard theirs the same way). It is judged
# by the CPU time the loop's thread spends in one callback, which a preempted step on a
# busy machine does not accrue; the wall clock is kept only for what no CPU measure sees
# (a blocking syscall: a sleep, a readline on a pipe), at a limit no preemption reaches.
LOOP_CPU_LIMIT_S = 0.1
# On a quiet machine, WAYPOST_LOOP_WALL_LIMIT_S=0.05 finds blocking calls in async code
# that a second does not (an audit, not for make test).
LOOP_WALL_LIMIT_S = float(os.environ.get("WAYPOST_LOOP_WALL_LIMIT_S", "1.0"))


class LoopGuard:
    """Collects the callbacks that held an event loop too long while it is entered.

    Every ``Handle._run`` of every asyncio loop in the process (the test's own, and those
    Waypost runs in threads) is timed by its thread's CPU clock and the wall clock; the
    innermost entered guard gets the reports."""

    active: list[LoopGuard] = []

    def __init__(
        self, cpu_limit_s: float = LOOP_CPU_LIMIT_S, wall_limit_s: float = LOOP_WALL_LIMIT_S
    ) -> None:
        self.cpu_limit_s = cpu_limit_s
        self.wall_limit_s = wall_limit_s
        self.reports: list[str] = []

    def __enter__(self) -> LoopGuard:
        LoopGuard.active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        LoopGuard.active.remove(self)


_handle_run = asyncio.Handle._run  # asyncio's own, wrapped once for the whole session


class _Collections(threading.local):
    """CPU seconds the garbage collector has spent on this thread so far. A collection
    walks the whole test process's heap (every module, every hypothesis example kept):
    its length says how much the test session allocated, not what the callback that
    happened to trigger it does, so it is taken out of that callback's time."""

    spent = 0.0
    started = 0.0


_gc = _Collections()


def _on_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc.started = time.thread_time()
    else:
        _gc.spent += time.thread_time() - _gc.started


gc.callbacks.append(_on_collection)


def _what(handle: asyncio.Handle) -> str:
    """The task a step belongs to (with the line its coroutine is at), else the handle."""
    owner = getattr(handle._callback, "__self__", None)
    return repr(owner) if isinstance(owner, asyncio.Task) else repr(handle)


def _timed_run(handle: asyncio.Handle) -> None:
    if not LoopGuard.active:
        _handle_run(handle)
        return
    gc0, cpu0, wall0 = _gc.spent, time.thread_time(), time.monotonic()
    _handle_run(handle)
    collected = _gc.spent - gc0
    cpu, wall = time.thread_time() - cpu0 - collected, time.monotonic() - wall0 - collected
    try:
        guard = LoopGuard.active[-1]
    except IndexError:  # the test ended while a thread's loop ran this callback
        return
    if cpu > guard.cpu_limit_s:
        guard.reports.append(f"{_what(handle)} computed for {cpu:.3f} s of CPU ({wall:.3f} s wall)")
    elif wall > guard.wall_limit_s:
        guard.reports.append(f"{_what(handle)} blocked the loop for {wall:.3f} s ({cpu:.3f} s CPU)")


asyncio.Handle._run = _timed_run  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def no_blocked_event_loop() -> Iterator[None]:
    """Fail a test whose event loop a callback held: 100 ms of CPU, or 1 s blocked.

    The loops run as in production, not in asyncio's debug mode: its bookkeeping (a stack
    captured for every future and handle made) made steps several times costlier than
    Waypost's own code is, and its wall-clock warning measured the scheduler."""
    with LoopGuard() as guard:
        yield
    assert not guard.reports, "the event loop was held:\n" + "\n".join(guard.reports)


def _process_wide(thread: threading.Thread) -> bool:
    """gRPC's asyncio poller: one per process, started by the first aio channel, by design."""
    return "_poll_wrapper" in thread.name


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (keep-alives, stores not closed)."""
    before = set(threading.enumerate())
    yield

    def leaked() -> list[str]:
        return [
            t.name
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not _process_wide(t)
        ]

    try:
        wait_until(lambda: not leaked(), 5, "the test's threads to end")
    except AssertionError:
        raise AssertionError(f"threads left running: {leaked()}") from None


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """One real 3-member etcd cluster for the session; each test keeps to a prefix of its
    own (tests that kill members start their own cluster)."""
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``waypost server`` processes; every one is stopped when the test ends."""
    started: list[ServerProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, name: str = "s", node: str = "test-node"
    ) -> ServerProcess:
        proc = ServerProcess(args, tmp_path / name, env=env, node=node).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One SQLite-backed server."""
    return start_server()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def instance(iid: str, service: str = "web", **fields: Any) -> dict[str, Any]:
    """A valid instance body."""
    return {"id": iid, "service": service, "address": "10.0.0.1", "port": 8080, **fields}


def make_pki(folder: Path, *, servers: Sequence[str] = (), clients: Sequence[str] = ()) -> Path:
    """A CA in ``folder`` (``waypost tls ca create``) with server and client
    certificates of these names (``NAME.pem``, ``NAME-key.pem``)."""
    runs = [["tls", "ca", "create", "--dir", str(folder)]]
    runs += [["tls", "cert", "create", "--dir", str(folder), "--server", "--name", n]
             for n in servers]  # fmt: skip
    runs += [["tls", "cert", "create", "--dir", str(folder), "--client", "--name", n]
             for n in clients]  # fmt: skip
    for args in runs:
        done = waypost_cli(*args)
        assert done.returncode == 0, done.stderr
    return folder


def waypost_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m waypost ARGS`` from this venv (``env`` added to the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "waypost", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
