"""DNS worker processes: more cores for DNS (``--dns-workers N``).

The server answers DNS itself and starts N-1 workers that bind the same ports with
SO_REUSEPORT (the kernel spreads queries over them by source address and port). Each
worker keeps its own catalog from the server's HTTP API and event stream
(``follower.Feed``), so answers agree across workers within the stream's delay. A worker
that dies is started again; all stop with the server.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from waypost.aio import cancel_all, until_signalled
from waypost.client import AsyncClient
from waypost.dns.follower import Feed, follow
from waypost.dns.server import DnsServer

log = logging.getLogger("waypost.dns.workers")

RESTART_S = 1.0


def worker_command(
    server_url: str,
    listen: Sequence[str],
    *,
    domain: str,
    ttl: str,
    allow_warning: bool,
    recursors: Sequence[str],
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "waypost",
        "dns-worker",
        "--server",
        server_url,
        "--dns",
        ",".join(listen),
        "--dns-domain",
        domain,
        "--dns-ttl",
        ttl,
    ]
    if allow_warning:
        cmd.append("--dns-allow-warning")
    for r in recursors:
        cmd += ["--recursor", r]
    return cmd


class DnsWorkers:
    """``count`` worker processes running ``command``, kept running until ``stop``."""

    def __init__(self, command: list[str], count: int) -> None:
        self.command = command
        self.count = count
        self._procs: list[asyncio.subprocess.Process | None] = [None] * count
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0

    async def start(self) -> None:
        started = [asyncio.Event() for _ in range(self.count)]
        self._tasks = [
            asyncio.create_task(self._keep(n, started[n]), name=f"dns-worker-{n}")
            for n in range(self.count)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)

    async def _keep(self, n: int, started: asyncio.Event) -> None:
        while True:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdout=asyncio.subprocess.PIPE
            )
            self._procs[n] = proc
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if b"serving" in line:
                started.set()
            code = await proc.wait()
            self._procs[n] = None
            self.restarts += 1
            log.warning("DNS worker %d exited (%s); starting it again", n, code)
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


async def run_worker(
    server_url: str,
    listen: Sequence[tuple[str, int]],
    *,
    domain: str,
    ttl_s: float,
    allow_warning: bool,
    recursors: Sequence[tuple[str, int]],
) -> None:
    """One worker: follow the server, answer DNS on ``listen`` (shared), until SIGTERM."""
    feed = Feed()
    client = AsyncClient(server_url)
    dns_server = DnsServer(
        feed,
        listen=listen,
        domain=domain,
        ttl_s=ttl_s,
        allow_warning=allow_warning,
        recursors=recursors,
        join=True,
    )
    follower = asyncio.create_task(follow(feed, client), name="dns-follow")
    await dns_server.start()
    print(f"waypost dns-worker: serving dns {','.join(dns_server.addresses())}", flush=True)
    try:
        await until_signalled()
    finally:
        await cancel_all([follower])
        await dns_server.stop()
        await client.aclose()
