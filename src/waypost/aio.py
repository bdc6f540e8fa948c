"""Small asyncio helpers every long-running part shares."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any


def settle(fut: asyncio.Future[Any], result: object) -> None:
    """Answer ``fut`` with ``result`` (raised if it is an exception) unless it is done."""
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until each has finished."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until_signalled(
    on_hup: Callable[[], None] | None = None, ready: Callable[[], None] | None = None
) -> None:
    """Return at SIGINT or SIGTERM; ``on_hup`` is called at each SIGHUP meanwhile;
    ``ready`` once the handlers are in place (announce readiness there)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if on_hup is not None:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
    if ready is not None:
        ready()
    await stop.wait()


class LoopMonitor:
    """Measures how late the event loop runs a timer: a stall (a long callback, a GC
    pause, a starved process) shows as lateness. Keeps the largest stall since start, a
    count of stalls over ``threshold_s``, and the latest over ``noted_s`` (bounded)."""

    def __init__(
        self, interval_s: float = 0.01, threshold_s: float = 0.02, noted_s: float = 0.005
    ) -> None:
        self.interval_s = interval_s
        self.threshold_s = threshold_s
        self.noted_s = noted_s
        self.max_stall_s = 0.0
        self.stalls = 0
        # (unix time the stall ended, seconds): the last few, for "during this window".
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Begin measuring on the running loop."""
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        """Stop measuring."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = now - self._due
        if late > self.max_stall_s:
            self.max_stall_s = late
        if late > self.threshold_s:
            self.stalls += 1
        if late > self.noted_s:
            self.recent.append((time.time(), late))
        self._due = now + self.interval_s
        self._handle = loop.call_at(self._due, self._tick)
