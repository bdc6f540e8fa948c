"""The DNS server's UDP listener thread in process: what it cannot answer from the memo
waits for the event loop in a bounded queue, and a bug in it is logged, not fatal."""

from __future__ import annotations

import socket
from typing import Any

import dns.message
import pytest

from tests.conftest import wait_until
from waypost.dns.follower import Feed
from waypost.dns.server import MAX_BACKLOG, DnsServer, _UdpThread


class _StuckLoop:
    """An event loop that never gets round to what it is handed (an overloaded one)."""

    def __init__(self) -> None:
        self.handed = 0

    def call_soon_threadsafe(self, *args: Any) -> None:
        self.handed += 1


def test_a_flood_of_new_names_never_queues_without_bound() -> None:
    server = DnsServer(Feed(), listen=[])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    loop = _StuckLoop()
    udp = _UdpThread(server, sock, loop)  # type: ignore[arg-type]
    udp.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sent = 0
        while sent < MAX_BACKLOG + 1000:
            for _ in range(100):  # each a name never asked: none is in the memo
                query = dns.message.make_query(f"n{sent}.service.waypost", "A").to_wire()
                client.sendto(query, address)
                sent += 1
            wait_until(lambda n=sent: udp.queued + udp.dropped == n, 10, "the thread to read all")
        assert loop.handed == udp.queued == MAX_BACKLOG
        assert udp.dropped == sent - MAX_BACKLOG
        server._udp.append(udp)  # what /status counts
        status = server.status()
        assert (status.dropped, status.queries) == (sent - MAX_BACKLOG, sent - MAX_BACKLOG)
    finally:
        client.close()
        udp.stop()
        udp.join(5)
    assert not udp.is_alive()


def test_a_bug_in_the_listener_thread_does_not_end_udp_dns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    import dns.query

    from waypost.dns.server import _Cached
    from waypost.model import Instance

    async def go() -> None:
        feed = Feed()
        feed.catalog.load([(Instance(id="w", service="web", address="10.0.0.1", port=80), 1)], 1)
        server = DnsServer(feed, listen=[("127.0.0.1", 0)])
        await server.start()
        try:
            host, port = server.bound[0]
            query = dns.message.make_query("web.service.waypost", "A")
            query.id = 7
            wire = query.to_wire()

            def ask() -> dns.message.Message:
                return dns.query.udp(dns.message.from_wire(wire), host, port=port, timeout=3)

            assert (await asyncio.to_thread(ask)).answer
            # A memo entry no answer can be made from: the thread trips on it.
            server._memo[wire[2:]] = (_Cached(variants=()), len(wire), None)
            with pytest.raises(dns.exception.Timeout):
                await asyncio.to_thread(ask)
            server._memo.clear()
            reply = await asyncio.to_thread(ask)  # the same thread answers again
            assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["10.0.0.1"]
            assert server.status().errors >= 1
        finally:
            await server.stop()

    asyncio.run(go())
    assert "DNS UDP listener failed; it goes on" in caplog.text
