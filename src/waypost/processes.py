"""Worker processes kept running: the server's DNS workers and HTTP workers.

``Workers`` starts ``count`` copies of one command, waits until each prints a line with
``serving`` (as every Waypost process does once it listens), and starts again any that
exits, ``RESTART_S`` later, until ``stop``; ``start`` fails after ``START_TIMEOUT_S`` if
the first copies never serve. Each worker's stdin is a pipe from this process, so a
worker can tell when the process that started it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from waypost.aio import cancel_all
from waypost.errors import WaypostError

log = logging.getLogger("waypost.processes")

RESTART_S = 1.0
START_TIMEOUT_S = 30.0


class Workers:
    """``count`` processes running ``command`` (with ``env``), named ``what`` in logs."""

    def __init__(
        self,
        command: list[str],
        count: int,
        *,
        what: str = "worker",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = command
        self.count = count
        self.what = what
        self.env = dict(env) if env is not None else None
        self._procs: list[asyncio.subprocess.Process | None] = [None] * count
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return [p.pid for p in self._procs if p is not None and p.returncode is None]

    async def start(self) -> None:
        started = [asyncio.Event() for _ in range(self.count)]
        self._tasks = [
            asyncio.create_task(self._keep(n, started[n]), name=f"{self.what}-{n}")
            for n in range(self.count)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), START_TIMEOUT_S)
        except TimeoutError:
            raise WaypostError(
                f"the {self.what}s did not start within {START_TIMEOUT_S:g} s "
                "(their errors are in the log above)"
            ) from None

    async def _keep(self, n: int, started: asyncio.Event) -> None:
        while True:
            try:
                # stdin is a pipe this process holds: when it dies, the worker reads EOF.
                proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=self.env,
                )
                self._procs[n] = proc
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                if b"serving" in line:
                    started.set()
                code = await proc.wait()
                log.warning("%s %d exited (%s); starting it again", self.what, n, code)
            except asyncio.CancelledError:
                raise
            except Exception:  # cannot start it (out of processes, memory): try again
                log.exception("%s %d could not be started; trying again", self.what, n)
            self._procs[n] = None
            self.restarts += 1
            await asyncio.sleep(RESTART_S)

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        for proc in self._procs:
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self._procs = [None] * self.count
