"""DNS garbage never crashes or stalls the server: hypothesis drives the answering code
with arbitrary and mutated packets, then a real server takes 100,000 malformed packets
and a flood of TCP connections, and answers a good query right after."""

from __future__ import annotations

import random
import select
import socket
import struct

import dns.exception
import dns.message
import dns.query
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess, instance
from waypost.catalog import Catalog
from waypost.dns.server import DnsServer
from waypost.model import Instance
from waypost.registry import Registry
from waypost.store.memory import MemoryStore

GOOD = dns.message.make_query("web.service.waypost", "A", use_edns=0).to_wire()


def _server() -> DnsServer:
    catalog = Catalog()
    rows = [
        (Instance(id=f"web-{n}", service="web", address=f"10.0.0.{n}", port=80, tags=("a",)), n)
        for n in (1, 2, 3)
    ]
    catalog.load(rows, 3)
    registry = Registry(MemoryStore(), catalog, node_name="t")
    return DnsServer(registry, listen=[])


SERVER = _server()


def _mutate(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data = data[: rng.randrange(len(data) + 1)]
        elif choice == 2:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        elif choice == 3 and len(data) > 12:
            data[12:14] = b"\xc0\x0c"  # a compression pointer to itself
        elif choice == 4 and len(data) >= 6:
            data[4:6] = struct.pack(">H", rng.randrange(65536))  # any question count
        elif choice == 5:
            labels = b"".join(b"\x01a" for _ in range(rng.randrange(60, 200)))
            data = data[:12] + labels + b"\x00\x00\x01\x00\x01"
    return bytes(data)


def _check(data: bytes, result: object) -> None:
    if result is None or isinstance(result, tuple):
        return
    assert isinstance(result, bytes)
    assert result[:2] == data[:2]  # every answer carries the query's id
    assert result[2] & 0x80  # and is a response
    dns.message.from_wire(result)  # and is well formed


@settings(max_examples=1500)
@given(st.binary(max_size=600))
def test_any_bytes(data: bytes) -> None:
    _check(data, SERVER.answer(data, None))


@settings(max_examples=1500)
@given(st.integers(0, 2**32))
def test_mutated_queries(seed: int) -> None:
    data = _mutate(random.Random(seed), GOOD)
    _check(data, SERVER.answer(data, None))
    _check(data, SERVER.answer(data, 65535))


def _flood(server: ServerProcess, n: int) -> None:
    assert server.dns is not None
    rng = random.Random(20261123)
    bases = [
        GOOD,
        dns.message.make_query("web.service.waypost", "SRV").to_wire(),
        dns.message.make_query("nope.example", "TXT").to_wire(),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        sent = 0
        while sent < n:
            if rng.random() < 0.2:
                packet = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
            else:
                packet = _mutate(rng, rng.choice(bases))
            try:
                s.sendto(packet, server.dns)
            except BlockingIOError:  # the socket buffer is full: wait until it drains
                assert select.select([], [s], [], 5)[1], "the socket never drained"
                continue
            sent += 1
            try:
                while True:
                    s.recv(65535)
            except BlockingIOError:
                pass


def test_100k_malformed_packets_then_a_good_answer(server: ServerProcess, http: object) -> None:
    import httpx

    assert isinstance(http, httpx.Client)
    http.put("/api/v1/instances/web-1", json=instance("web-1", address="10.0.0.1"))
    _flood(server, 100_000)
    assert server.dns is not None
    # Right after, the server's socket buffer may still be full of the flood (the kernel
    # drops what does not fit): ask as every resolver does, again after a second.
    reply = None
    for _ in range(5):
        try:
            query = dns.message.make_query("web.service.waypost", "A")
            reply = dns.query.udp(query, server.dns[0], port=server.dns[1], timeout=1)
            break
        except dns.exception.Timeout:
            continue
    assert reply is not None
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rd.to_text() for rd in reply.answer[0]] == ["10.0.0.1"]
    assert server.proc is not None
    assert server.proc.poll() is None


def test_tcp_floods_are_capped_and_idle_ones_closed(server: ServerProcess, http: object) -> None:
    import httpx

    assert isinstance(http, httpx.Client)
    http.put("/api/v1/instances/web-1", json=instance("web-1", address="10.0.0.1"))
    assert server.dns is not None
    held = []
    try:
        for _ in range(600):  # past the cap of 512
            conn = socket.create_connection(server.dns, timeout=5)
            held.append(conn)
        # A half-sent frame and a lying length do not stall anyone.
        held[0].sendall(b"\x00\x40\x12")
        held[1].sendall(b"\xff\xff" + GOOD)
        # Still answering, over UDP and (once some are closed) TCP.
        reply = dns.query.udp(
            dns.message.make_query("web.service.waypost", "A"),
            server.dns[0],
            port=server.dns[1],
            timeout=5,
        )
        assert [rd.to_text() for rd in reply.answer[0]] == ["10.0.0.1"]
    finally:
        for conn in held:
            conn.close()
    reply = dns.query.tcp(
        dns.message.make_query("web.service.waypost", "A"),
        server.dns[0],
        port=server.dns[1],
        timeout=5,
    )
    assert [rd.to_text() for rd in reply.answer[0]] == ["10.0.0.1"]
