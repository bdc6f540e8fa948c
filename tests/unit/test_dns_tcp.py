"""The DNS server's TCP side in process: an idle connection is closed after its idle
timeout, an active one is served as long as it asks."""

from __future__ import annotations

import asyncio
import struct

import dns.message

from waypost.dns.follower import Feed
from waypost.dns.server import DnsServer
from waypost.model import Instance


def test_idle_tcp_connections_are_closed() -> None:
    async def go() -> None:
        feed = Feed()
        feed.catalog.load([(Instance(id="w", service="web", address="10.0.0.1", port=80), 1)], 1)
        server = DnsServer(feed, listen=[("127.0.0.1", 0)], tcp_idle_s=0.3)
        await server.start()
        try:
            host, port = server.bound[0]
            reader, writer = await asyncio.open_connection(host, port)
            query = dns.message.make_query("web.service.waypost", "A").to_wire()
            for _ in range(3):  # asking keeps it open
                writer.write(struct.pack(">H", len(query)) + query)
                await writer.drain()
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                reply = dns.message.from_wire(await reader.readexactly(size))
                assert reply.answer[0][0].to_text() == "10.0.0.1"
            # Then silence: the server hangs up after its idle timeout.
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            writer.close()
        finally:
            await server.stop()

    asyncio.run(go())
