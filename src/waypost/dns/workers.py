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
from waypost.processes import Workers

log = logging.getLogger("waypost.dns.workers")


def worker_command(
    server_url: str,
    listen: Sequence[str],
    *,
    domain: str,
    custom_zones: str,
    forward_clients: str,
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
        "--dns-custom-zones",
        custom_zones,
        "--dns-forward-clients",
        forward_clients,
        "--dns-ttl",
        ttl,
    ]
    if allow_warning:
        cmd.append("--dns-allow-warning")
    for r in recursors:
        cmd += ["--recursor", r]
    return cmd


class DnsWorkers(Workers):
    """``count`` DNS worker processes running ``command``, kept running until ``stop``."""

    def __init__(self, command: list[str], count: int) -> None:
        super().__init__(command, count, what="DNS worker")


async def run_worker(
    server_url: str,
    listen: Sequence[tuple[str, int]],
    *,
    domain: str,
    custom_zones: str,
    forward_clients: str,
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
        custom_zones=custom_zones,
        forward_clients=forward_clients,
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
