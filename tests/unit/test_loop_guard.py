"""The suite's own guard (``tests/conftest.py``): a callback that computes on the event
loop fails its test; one that is merely preempted, or waits briefly off the CPU, does not."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable

from tests.conftest import LoopGuard


def _compute(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU (not of the wall clock)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _run_on_a_loop(callback: Callable[[], None]) -> None:
    async def main() -> None:
        asyncio.get_running_loop().call_soon(callback)
        await asyncio.sleep(0)

    asyncio.run(main())


def test_a_callback_that_computes_for_150_ms_is_reported() -> None:
    with LoopGuard(cpu_limit_s=0.1, wall_limit_s=1.0) as guard:
        _run_on_a_loop(lambda: _compute(0.15))
    assert len(guard.reports) == 1, guard.reports
    assert "computed for 0.1" in guard.reports[0]
    assert "_compute" in guard.reports[0]


def test_a_coroutine_step_that_computes_is_reported_with_its_coroutine() -> None:
    async def busy() -> None:
        _compute(0.15)

    with LoopGuard(cpu_limit_s=0.1, wall_limit_s=1.0) as guard:
        asyncio.run(busy())
    assert len(guard.reports) == 1, guard.reports
    assert "busy()" in guard.reports[0]


def test_a_preempted_callback_is_not_reported() -> None:
    """60 ms of CPU while two other threads compete for the GIL and the cores: the step
    takes several times that by the wall clock, as on a loaded machine."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    rivals = [threading.Thread(target=spin) for _ in range(2)]
    for t in rivals:
        t.start()
    took: list[float] = []

    def step() -> None:
        start = time.monotonic()
        _compute(0.06)
        took.append(time.monotonic() - start)

    try:
        with LoopGuard(cpu_limit_s=0.1, wall_limit_s=1.0) as guard:
            _run_on_a_loop(step)
    finally:
        stop.set()
        for t in rivals:
            t.join()
    assert guard.reports == []
    assert took[0] > 0.1, "the rivals did not slow the step: nothing was shown"


def test_a_short_wait_off_the_cpu_is_not_reported_but_a_blocking_second_is() -> None:
    with LoopGuard(cpu_limit_s=0.1, wall_limit_s=1.0) as guard:
        _run_on_a_loop(lambda: threading.Event().wait(0.3))
    assert guard.reports == []
    with LoopGuard(cpu_limit_s=0.1, wall_limit_s=1.0) as guard:
        _run_on_a_loop(lambda: threading.Event().wait(1.2))
    assert len(guard.reports) == 1
    assert "blocked the loop for 1." in guard.reports[0]


def test_a_garbage_collection_during_a_callback_is_not_counted_as_its_work() -> None:
    """A collection walks the whole test process's heap; its length says how much the
    session allocated, not what the callback that triggered it does."""
    heap = [[i] for i in range(4_000_000)]  # a heap whose full collection takes ~0.2 s
    spent: list[float] = []

    def collect() -> None:
        start = time.thread_time()
        gc.collect()
        spent.append(time.thread_time() - start)

    try:
        with LoopGuard(cpu_limit_s=0.1, wall_limit_s=1.0) as guard:
            _run_on_a_loop(collect)
    finally:
        del heap
    assert spent[0] > 0.1, "the collection was too quick to show anything"
    assert guard.reports == []
