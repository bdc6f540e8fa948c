"""The DNS server: UDP and TCP listeners answering from a cache of wire bytes.

Each answer is built once per (name, type, EDNS, size class) by dnspython from the
zone, and kept until a catalog change touches one of its scopes (a service, a node,
an instance, an address, a custom domain); then it is dropped and built again on the
next query. Multi-record A/AAAA answers keep ``SHUFFLES`` weighted orders and rotate
through them. The cache is bounded (``MAX_CACHED``): when full it starts over.

Names outside our zones are refused, or relayed to ``recursors`` (tried in order, each
with a timeout). Malformed queries get FORMERR, other opcodes NOTIMP; responses (QR set)
and packets too short for a header are dropped. TCP connections have an idle timeout
and a cap; a query over TCP is never truncated.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from waypost.acl import AclState
from waypost.catalog import Catalog
from waypost.dns import wire
from waypost.dns.zone import SHUFFLES, Reply, Zone, stratified_orders
from waypost.errors import InvalidInput
from waypost.model import AclPolicy, AclToken, DnsStatus, Event, Instance, Node, ServiceConfig
from waypost.telemetry import SAMPLE_EVERY, Histogram
from waypost.zones import DEFAULT_CUSTOM_ZONES, DEFAULT_FORWARD_CLIENTS, CustomZones

log = logging.getLogger("waypost.dns")

MAX_CACHED = 50_000
MAX_MEMO = 20_000
# The UDP payload we advertise and the size classes answers are built for. A UDP answer
# is never larger than 1,232 bytes (DNS Flag Day 2020) whatever the query's EDNS says:
# a 48-byte query with EDNS 4096 once drew 3,248 bytes, a 68x amplifier for spoofed
# sources; now at most 26x, and a larger answer is truncated (TC) for TCP.
OUR_PAYLOAD = 1232
SIZE_CLASSES = (512, OUR_PAYLOAD)
TCP_MAX = 65535
TCP_IDLE_S = 10.0
TCP_MAX_CONNECTIONS = 512
# TCP connections one client address may hold; with every place taken, the connection
# idle the longest is closed for a new one (512 idle connections once locked every TCP
# client out for good).
TCP_PER_CLIENT = 32
RECURSOR_TIMEOUT_S = 2.0
# Forwarded queries in flight at once (each holds a socket to a recursor until it answers
# or times out): past this, a query to forward is dropped, as a full resolver drops, and
# counted. A flood of random names once took a server to 19,046 open files in a second,
# and every /health and write with it under systemd's 1,024.
MAX_FORWARDS = 256
# The least time between two log lines about dropped forwards.
DROP_LOG_INTERVAL_S = 10.0
BIND_ATTEMPTS = 20
# UDP queries a listener thread may hand to the event loop before it drops new ones
# (a flood of names never asked before must not queue without bound).
MAX_BACKLOG = 4096
# The pause of a UDP listener thread after a failed receive (or a bug), so that a socket
# that keeps failing does not spin a core.
RECEIVE_RETRY_S = 0.01
REFUSE_TYPES = {dns.rdatatype.AXFR, dns.rdatatype.IXFR}


def _rdtype(value: int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(value)


def size_class(payload: int) -> int:
    best = 512
    for c in SIZE_CLASSES:
        if c <= payload:
            best = c
    return best


# Query types counted by name in /metrics; any other is "other" (a fixed label set: what
# clients send must not grow the metrics).
QTYPE_NAMES = {
    int(t): t.name
    for t in (
        dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV, dns.rdatatype.TXT,
        dns.rdatatype.ANY, dns.rdatatype.NS, dns.rdatatype.SOA, dns.rdatatype.PTR,
        dns.rdatatype.CNAME, dns.rdatatype.MX, dns.rdatatype.HTTPS, dns.rdatatype.SVCB,
        dns.rdatatype.AXFR, dns.rdatatype.IXFR,
    )
}  # fmt: skip
# (query type, rcode): the labels of one count of ``DnsServer.query_counts``.
Label = tuple[str, str]
UNPARSED = "unknown"  # a query read no further than its header
# Seconds: a memo answer takes microseconds, a built one (dnspython) a fraction of a ms.
DNS_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
    0.25, 1.0,
)  # fmt: skip


def qtype_name(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, "other")


def _rcode_name(rcode: int) -> str:
    return dns.rcode.to_text(dns.rcode.Rcode.make(rcode))


@dataclass(slots=True)
class _Cached:
    variants: tuple[bytes, ...]
    label: Label = (UNPARSED, "NOERROR")
    turn: int = 0
    live: bool = True


@dataclass(slots=True)
class DnsStats:
    tcp_idle_closed: int = 0
    forward_refused: int = 0
    queries: int = 0
    cache_hits: int = 0
    answers_built: int = 0
    formerr: int = 0
    refused: int = 0
    forwarded: int = 0
    forward_failures: int = 0
    forward_dropped: int = 0
    truncated: int = 0
    tcp_connections: int = 0
    tcp_rejected: int = 0
    errors: int = 0
    # Answers by (query type, rcode), and the time to answer on the event loop.
    by_type: dict[Label, int] = dataclasses.field(default_factory=dict)
    seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(DNS_BUCKETS))

    def count(self, label: Label) -> None:
        self.by_type[label] = self.by_type.get(label, 0) + 1


# A memo entry: the cached answer, where the question ends, and (for an answer with a
# single variant) the whole reply after the ID, ready to send.
_Memo = tuple[_Cached, int, bytes | None]


def _memo_reply(data: bytes, hit: _Memo) -> bytes:
    """The answer to ``data``, a query whose bytes after the ID were seen before."""
    entry, end, tail = hit
    if tail is not None:
        return data[:2] + tail
    variants = entry.variants
    entry.turn += 1
    cached = variants[entry.turn % len(variants)]
    return b"".join(
        (data[:2], bytes((cached[2] | (data[2] & 1),)), cached[3:12], data[12:end], cached[end:])
    )


def _check_free(family: socket.AddressFamily, host: str, port: int) -> None:
    """Raise EADDRINUSE if another process holds ``port`` (UDP or TCP), even one that
    set SO_REUSEPORT: a second server must not silently share a first one's port."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))


def _header_only(data: bytes, rcode: int, *, qd: bytes = b"") -> bytes:
    """A reply carrying only a header (and ``qd``, a question, if given)."""
    flags = 0x80 | (data[2] & 0x79)  # QR, the query's opcode and RD
    return (
        data[:2] + bytes((flags, rcode & 0x0F)) + struct.pack(">HHHH", 1 if qd else 0, 0, 0, 0) + qd
    )


class CatalogSource(Protocol):
    """Where answers come from: a catalog and the listeners told of its changes (the
    server's Registry, or a worker's Feed)."""

    catalog: Catalog
    listeners: list[Callable[[Sequence[Event] | None], None]]


class DnsServer:
    """Answers DNS for a registry's catalog on ``listen`` (HOST:PORT each)."""

    def __init__(
        self,
        registry: CatalogSource,
        *,
        listen: Sequence[tuple[str, int]],
        domain: str = "waypost",
        custom_zones: str = DEFAULT_CUSTOM_ZONES,
        ttl_s: float = 5.0,
        allow_warning: bool = False,
        recursors: Sequence[tuple[str, int]] = (),
        reuse_port: bool = False,
        join: bool = False,
        tcp_idle_s: float = TCP_IDLE_S,
        acl: AclState | None = None,
        forward_clients: str = DEFAULT_FORWARD_CLIENTS,
    ) -> None:
        self.registry = registry
        self.tcp_idle_s = tcp_idle_s
        self.forward_clients = ClientNetworks(forward_clients, field="dns_forward_clients")
        # reuse_port: bind with SO_REUSEPORT, so that workers can share the ports; join:
        # this process is such a worker (the server bound the ports first).
        self.reuse_port = reuse_port or join
        self.join = join
        self.listen = list(listen)
        hosts = [h for h, _ in self.listen if h not in ("0.0.0.0", "::")]
        self.zone = Zone(
            registry.catalog,
            domain=domain,
            custom_zones=CustomZones(custom_zones, own=domain),
            ttl_s=ttl_s,
            allow_warning=allow_warning,
            ns_addresses=hosts or ["127.0.0.1"],
            acl=acl,
        )
        self.recursors = list(recursors)
        self._forwarding = 0
        self._drop_logged = -DROP_LOG_INTERVAL_S
        self.stats = DnsStats()
        self._cache: dict[tuple[bytes, int, int, bool, int], _Cached] = {}
        # The exact bytes after the ID (flags, counts, question, OPT) of queries seen to
        # their cached answer: a repeated query skips parsing. One memo for UDP, one for
        # TCP (no size cap). Entries dropped by a change are marked dead.
        self._memo: dict[bytes, _Memo] = {}
        self._memo_tcp: dict[bytes, _Memo] = {}
        self._scopes: dict[str, set[tuple[bytes, int, int, bool, int]]] = {}
        self._udp: list[_UdpThread] = []
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_open = 0
        self._tcp_by_client: dict[str, int] = {}
        # Connections waiting for their next query, the longest idle first.
        self._tcp_idle: collections.OrderedDict[object, asyncio.StreamWriter] = (
            collections.OrderedDict()
        )
        self.bound: list[tuple[str, int]] = []
        self._rng = random.Random()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.registry.listeners.append(self._on_batch)
        loop = asyncio.get_running_loop()
        try:
            for host, port in self.listen:
                await self._bind(loop, host, port)
        except BaseException:
            await self.stop()
            raise

    async def _bind(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        """UDP and TCP on one port. Port 0 takes a free UDP port, which TCP may have in
        use (a client's local port): then another one is tried."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if self.reuse_port and not self.join and port != 0:
            _check_free(family, host, port)
        for attempt in range(BIND_ATTEMPTS if port == 0 else 1):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
                bound_port = sock.getsockname()[1]
                server = await asyncio.start_server(
                    self._tcp,
                    host,
                    bound_port,
                    family=family,
                    reuse_address=True,
                    reuse_port=self.reuse_port or None,
                )
            except OSError:
                sock.close()
                if port != 0 or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            udp = _UdpThread(self, sock, loop)
            udp.start()
            self._udp.append(udp)
            self._servers.append(server)
            self.bound.append((host, bound_port))
            return

    async def stop(self) -> None:
        if self._on_batch in self.registry.listeners:
            self.registry.listeners.remove(self._on_batch)
        for udp in self._udp:
            udp.stop()
        for udp in self._udp:
            await asyncio.to_thread(udp.join)
        self._udp = []
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers = []
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self, workers: int = 1) -> DnsStatus:
        """Listeners and counters, for ``GET /status``."""
        counts = {
            f.name: getattr(self.stats, f.name)
            for f in dataclasses.fields(self.stats)
            if f.name not in ("by_type", "seconds")
        }
        counts["dropped"] = sum(udp.dropped for udp in self._udp)
        counts["queries"] += counts["dropped"]
        for udp in self._udp:
            counts["queries"] += udp.hits
            counts["cache_hits"] += udp.hits
        return DnsStatus(
            listeners=self.addresses(),
            workers=workers,
            cached_answers=len(self._cache),
            **counts,
        )

    def query_counts(self) -> tuple[dict[Label, int], Histogram]:
        """Answers by (query type, rcode) and their latency, this process's event loop and
        UDP threads together (``/metrics``; forwarded queries are counted apart)."""
        counts = dict(self.stats.by_type)
        merged = Histogram(DNS_BUCKETS)
        parts = [self.stats.seconds, *(udp.seconds for udp in self._udp)]
        for part in parts:
            merged.sum += part.sum
            merged.counts = [a + b for a, b in zip(merged.counts, part.counts, strict=True)]
        for udp in self._udp:
            for label, n in list(udp.by_type.items()):
                counts[label] = counts.get(label, 0) + n
        return counts, merged

    def addresses(self) -> list[str]:
        return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.bound]

    # --- the cache -----------------------------------------------------------------------

    def _on_batch(self, batch: Sequence[Event] | None) -> None:
        if batch is None:
            self._forget_all()
            return
        if not self._scopes:
            return  # no cached answer any change could touch (none asked, or all dropped)
        scopes: set[str] = set()
        for ev in batch:
            entry = ev.entry
            if isinstance(entry, Instance):
                catalog = self.zone.catalog
                scopes |= self.zone.instance_changed(
                    entry.id, catalog.changed_from.get(entry.id, entry), catalog.get(entry.id)
                )
            elif isinstance(entry, Node):
                scopes.add(f"node:{entry.id}")
            elif isinstance(entry, ServiceConfig):
                scopes.add(f"service:{entry.service}")
            elif isinstance(entry, AclPolicy | AclToken):
                self._forget_all()  # what the anonymous token may read changed
                return
        for scope in scopes:
            for key in self._scopes.pop(scope, ()):
                self._drop(key)
            if scope.startswith(("service:", "node:", "instance:")):
                # Names are matched case-insensitively: drop the lower-case spelling too.
                for key in self._scopes.pop(scope.lower(), ()):
                    self._drop(key)

    def _drop(self, key: tuple[bytes, int, int, bool, int]) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            entry.live = False  # the memo may still point at it

    def _forget_all(self) -> None:
        for entry in self._cache.values():
            entry.live = False
        self._cache.clear()
        self._scopes.clear()
        self._memo.clear()
        self._memo_tcp.clear()

    def _remember(
        self, key: tuple[bytes, int, int, bool, int], entry: _Cached, scopes: set[str]
    ) -> None:
        if len(self._cache) >= MAX_CACHED:
            self._forget_all()
        self._cache[key] = entry
        for scope in scopes:
            self._scopes.setdefault(scope, set()).add(key)

    # --- answering -----------------------------------------------------------------------

    def answer(self, data: bytes, limit: int | None) -> bytes | tuple[str, bytes] | None:
        """The reply to ``data`` (``limit``: the transport's size cap, None for UDP
        where the query's EDNS says). None: drop it. ``("forward", data)``: relay it."""
        self.stats.queries += 1
        memo = self._memo if limit is None else self._memo_tcp
        hit = memo.get(data[2:])
        if hit is not None and hit[0].live:
            self.stats.cache_hits += 1
            self.stats.count(hit[0].label)
            return _memo_reply(data, hit)
        q = wire.parse(data)
        if q is None:
            return self._slow(data, limit)
        return self._fast(data, q, limit)

    def safe_answer(self, data: bytes, limit: int | None) -> bytes | tuple[str, bytes] | None:
        """``answer``, with a bug in it answered SERVFAIL (and logged), never raised."""
        start = time.perf_counter()
        try:
            return self.answer(data, limit)
        except Exception:
            self.stats.errors += 1
            self.stats.count((UNPARSED, "SERVFAIL"))
            log.exception("DNS answer failed")
            return _header_only(data, dns.rcode.SERVFAIL) if len(data) >= 12 else None
        finally:
            self.stats.seconds.observe(time.perf_counter() - start)

    def _fast(self, data: bytes, q: wire.Question, limit: int | None) -> bytes | tuple[str, bytes]:
        if q.qclass != dns.rdataclass.IN or q.qtype in REFUSE_TYPES:
            return self._refuse(data, q)
        cap = limit if limit is not None else size_class(q.payload if q.edns else 512)
        key = (q.name, q.qtype, q.qclass, q.edns, cap)
        entry = self._cache.get(key)
        if entry is None:
            built = self._build(q.name, q.qtype, q.edns, cap)
            if built is None:
                return self._refuse(data, q)
            entry = built
        else:
            self.stats.cache_hits += 1
        self.stats.count(entry.label)
        memo = self._memo if limit is None else self._memo_tcp
        if len(memo) >= MAX_MEMO:
            memo.clear()
        variants = entry.variants
        if len(variants) == 1:
            reply = wire.patch(variants[0], data, q)
            memo[data[2:]] = (entry, q.end, reply[2:])
            return reply
        memo[data[2:]] = (entry, q.end, None)
        entry.turn += 1
        return wire.patch(variants[entry.turn % len(variants)], data, q)

    def _refuse(self, data: bytes, q: wire.Question) -> bytes | tuple[str, bytes]:
        if self.recursors:
            return ("forward", data)
        self.stats.refused += 1
        self.stats.count((qtype_name(q.qtype), "REFUSED"))
        return _header_only(data, dns.rcode.REFUSED, qd=data[12 : q.end])

    def _build(self, name_wire: bytes, qtype: int, edns: bool, cap: int) -> _Cached | None:
        try:
            name = dns.name.from_wire(name_wire, 0)[0]
        except dns.exception.DNSException:
            return None
        self.zone.serial = (self.zone.catalog.revision & 0xFFFFFFFF) or 1
        reply = self.zone.resolve(name, qtype)
        if reply is None:
            return None
        self.stats.answers_built += 1
        variants = self._render(name, qtype, reply, edns, cap)
        entry = _Cached(variants=variants, label=(qtype_name(qtype), _rcode_name(reply.rcode)))
        self._remember((name_wire, qtype, dns.rdataclass.IN, edns, cap), entry, reply.scopes)
        return entry

    def _render(
        self, name: dns.name.Name, qtype: int, reply: Reply, edns: bool, cap: int
    ) -> tuple[bytes, ...]:
        orders: list[list[int] | None] = [None]
        if len(reply.weights) > 1 and reply.answer:
            orders = list(stratified_orders(reply.weights, SHUFFLES, self._rng))
        out = []
        for order in orders:
            msg = dns.message.Message(id=0)
            msg.flags = dns.flags.QR | dns.flags.AA
            msg.set_rcode(dns.rcode.Rcode(reply.rcode))
            msg.question = [dns.rrset.RRset(name, dns.rdataclass.IN, _rdtype(qtype))]
            answer = list(reply.answer)
            if order is not None:
                first = answer[0]
                items = list(first)
                shuffled = dns.rrset.RRset(first.name, first.rdclass, first.rdtype)
                for i in order:
                    shuffled.add(items[i], first.ttl)
                answer[0] = shuffled
            msg.answer = answer
            msg.authority = list(reply.authority)
            msg.additional = list(reply.additional)
            if edns:
                msg.use_edns(0, 0, OUR_PAYLOAD)
            try:
                # want_shuffle=False: dnspython would reorder each RRset at random;
                # the order is ours to choose (the weighted orders above).
                out.append(msg.to_wire(max_size=cap, want_shuffle=False))
            except dns.exception.TooBig:
                self.stats.truncated += 1
                msg.answer, msg.authority, msg.additional = [], [], []
                msg.flags |= dns.flags.TC
                out.append(msg.to_wire(max_size=cap))
        return tuple(out)

    def _slow(self, data: bytes, limit: int | None) -> bytes | tuple[str, bytes] | None:
        """Everything the fast path does not take: dnspython reads it, or it is FORMERR."""
        if len(data) < 12 or data[2] & 0x80:
            return None  # no header to answer, or a response: never answer those
        opcode = (data[2] >> 3) & 0x0F
        if opcode != dns.opcode.QUERY:
            self.stats.count((UNPARSED, "NOTIMP"))
            return _header_only(data, dns.rcode.NOTIMP)
        try:
            msg = dns.message.from_wire(data, question_only=False)
        except dns.message.BadEDNS:
            return self._badvers(data)
        except Exception:  # malformed in any way at all
            self.stats.formerr += 1
            self.stats.count((UNPARSED, "FORMERR"))
            return _header_only(data, dns.rcode.FORMERR)
        if len(msg.question) != 1:
            self.stats.formerr += 1
            self.stats.count((UNPARSED, "FORMERR"))
            return _header_only(data, dns.rcode.FORMERR)
        if msg.edns > 0:
            return self._badvers(data)
        # A valid query the fast path did not take (say, a compressed question, more
        # additional records): answer it as the question asks, re-encoded plainly.
        question = msg.question[0]
        plain = dns.message.make_query(question.name, question.rdtype, question.rdclass)
        plain.id = msg.id
        plain.flags = msg.flags
        if msg.edns >= 0:
            plain.use_edns(0, 0, max(msg.payload, 512))
        again = plain.to_wire()
        q = wire.parse(again)
        if q is None:
            self.stats.formerr += 1
            self.stats.count((UNPARSED, "FORMERR"))
            return _header_only(data, dns.rcode.FORMERR)
        return self._fast(again, q, limit)

    def _badvers(self, data: bytes) -> bytes:
        self.stats.count((UNPARSED, "BADVERS"))
        msg = dns.message.Message(id=struct.unpack(">H", data[:2])[0])
        msg.flags = dns.flags.QR
        msg.use_edns(0, 0, OUR_PAYLOAD)
        msg.set_rcode(dns.rcode.BADVERS)
        return msg.to_wire()

    # --- forwarding ----------------------------------------------------------------------

    def _forward_slot(self) -> bool:
        """Take one of the ``MAX_FORWARDS`` places for a forwarded query; False (and the
        drop counted, and logged now and then) when all are taken."""
        if self._forwarding < MAX_FORWARDS:
            self._forwarding += 1
            return True
        self.stats.forward_dropped += 1
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_INTERVAL_S:
            self._drop_logged = now
            log.warning(
                "DNS: %d queries being forwarded already; dropping more (%d dropped so far)",
                MAX_FORWARDS,
                self.stats.forward_dropped,
            )
        return False

    async def forward(self, data: bytes, tcp: bool, client: str) -> bytes | None:
        """Relay a query to the recursors in order; the first answer, or SERVFAIL. None
        (no answer: the client retries) while ``MAX_FORWARDS`` are in flight. A client
        outside ``forward_clients`` is answered REFUSED, as for a name outside our zones
        with no recursors."""
        if not self.forward_clients.contains(client):
            self.stats.forward_refused += 1
            self.stats.refused += 1
            q = wire.parse(data)
            return _header_only(data, dns.rcode.REFUSED, qd=data[12 : q.end] if q else b"")
        if not self._forward_slot():
            return None
        try:
            return await self._forward(data, tcp)
        finally:
            self._forwarding -= 1

    async def _forward(self, data: bytes, tcp: bool) -> bytes | None:
        for host, port in self.recursors:
            try:
                async with asyncio.timeout(RECURSOR_TIMEOUT_S):
                    answer = await (
                        _tcp_ask(host, port, data) if tcp else _udp_ask(host, port, data)
                    )
                if answer[:2] == data[:2]:
                    self.stats.forwarded += 1
                    return answer
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("recursor %s:%d failed: %s", host, port, exc)
            self.stats.forward_failures += 1
        return _header_only(data, dns.rcode.SERVFAIL, qd=b"") if len(data) >= 12 else None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- TCP -----------------------------------------------------------------------------

    def _make_room(self) -> bool:
        """With every TCP place taken: close the connection idle the longest (RFC 7766
        lets a server close idle connections when it must); False if none is idle."""
        if not self._tcp_idle:
            return False
        _, oldest = self._tcp_idle.popitem(last=False)
        self.stats.tcp_idle_closed += 1
        oldest.transport.abort()
        return True

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        held = self._tcp_by_client.get(client, 0)
        if held >= TCP_PER_CLIENT or (
            self._tcp_open >= TCP_MAX_CONNECTIONS and not self._make_room()
        ):
            self.stats.tcp_rejected += 1
            writer.close()
            return
        self._tcp_open += 1
        self._tcp_by_client[client] = held + 1
        self.stats.tcp_connections += 1
        me = object()
        try:
            while True:
                self._tcp_idle[me] = writer  # waiting for a query: may make room
                async with asyncio.timeout(self.tcp_idle_s):
                    head = await reader.readexactly(2)
                    self._tcp_idle.pop(me, None)
                    data = await reader.readexactly(struct.unpack(">H", head)[0])
                result = self.safe_answer(data, TCP_MAX)
                if isinstance(result, tuple):
                    result = await self.forward(result[1], tcp=True, client=client)
                if result is None:
                    break
                writer.write(struct.pack(">H", len(result)) + result)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._tcp_idle.pop(me, None)
            self._tcp_open -= 1
            left = self._tcp_by_client.get(client, 1) - 1
            if left > 0:
                self._tcp_by_client[client] = left
            else:
                self._tcp_by_client.pop(client, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class ClientNetworks:
    """Client addresses as CIDR networks (comma list; ``*``: any; empty: none)."""

    def __init__(self, text: str, *, field: str) -> None:
        self.any = False
        nets = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if part == "*":
                self.any = True
                continue
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise InvalidInput(f"{field}: {part!r} is not a network such as "
                                   "10.0.0.0/8", field=field) from None  # fmt: skip
        self.networks = tuple(nets)

    def contains(self, address: str) -> bool:
        if self.any:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


class _UdpThread(threading.Thread):
    """Reads one UDP socket in a thread of its own (a blocking ``recvfrom`` loop costs
    less per packet than the event loop's readiness callbacks: 1.0-1.07x dnsmasq against
    0.8x, ``bench/dns.py``). A repeated query, found in the server's memo, is answered
    here; anything else is handed to the event loop, which answers (and forwards) there
    and sends with the same socket. The thread holds no state of its own beyond a
    counter: the memo is read under the GIL, and its entries are marked dead by the
    loop when a change drops them."""

    def __init__(self, server: DnsServer, sock: socket.socket, loop: asyncio.AbstractEventLoop):
        super().__init__(name=f"dns-udp-{sock.getsockname()[1]}", daemon=True)
        self.server = server
        self.sock = sock
        self.loop = loop
        # Each counter has one writer: hits, queued and dropped this thread, handled the
        # event loop; queued - handled is what waits for the loop.
        self.hits = 0
        self.queued = 0
        self.handled = 0
        self.dropped = 0
        # This thread's answers from the memo by (query type, rcode), and the time of one
        # in SAMPLE_EVERY (written here only; summed at scrape time).
        self.by_type: dict[Label, int] = {}
        self.seconds = Histogram(DNS_BUCKETS)
        self._stopping = False

    def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._serve()
                except Exception:  # a bug must not end UDP DNS: log it and go on
                    self.server.stats.errors += 1
                    log.exception("DNS UDP listener failed; it goes on")
                    time.sleep(RECEIVE_RETRY_S)
        finally:
            self.sock.close()

    def _serve(self) -> None:
        recv = self.sock.recvfrom
        send = self.sock.sendto
        memo = self.server._memo
        slow = self._slow
        reply = _memo_reply
        call = self.loop.call_soon_threadsafe
        by_type = self.by_type
        clock = time.perf_counter
        observe = self.seconds.observe
        while True:
            try:
                data, addr = recv(65535)
            except OSError as exc:
                if self._stopping:
                    return
                log.debug("DNS UDP receive failed: %s", exc)
                time.sleep(RECEIVE_RETRY_S)  # a socket that keeps failing must not spin
                continue
            if self._stopping:
                return
            hit = memo.get(data[2:])
            if hit is not None:
                entry, _, tail = hit
                if entry.live:
                    self.hits += 1
                    timed = not self.hits % SAMPLE_EVERY
                    start = clock() if timed else 0.0
                    label = entry.label
                    by_type[label] = by_type.get(label, 0) + 1
                    try:
                        send(data[:2] + tail if tail is not None else reply(data, hit), addr)
                    except OSError as exc:
                        log.debug("DNS UDP send failed: %s", exc)
                    if timed:
                        observe(clock() - start)
                    continue
            if self.queued - self.handled >= MAX_BACKLOG:
                self.dropped += 1  # as a full socket buffer would: the client retries
                continue
            self.queued += 1
            try:
                call(slow, data, addr)
            except RuntimeError:  # the loop is closed: the server is going away
                self._stopping = True
                return

    def _slow(self, data: bytes, addr: Any) -> None:
        """On the event loop: everything the memo did not answer."""
        self.handled += 1
        server = self.server
        result = server.safe_answer(data, None)
        if result is None:
            return
        if isinstance(result, tuple):
            server.spawn(self._relay(result[1], addr))
            return
        self._send(result, addr)

    async def _relay(self, data: bytes, addr: Any) -> None:
        answer = await self.server.forward(data, tcp=False, client=str(addr[0]))
        if answer is not None:
            self._send(answer, addr)

    def _send(self, data: bytes, addr: Any) -> None:
        if self._stopping:
            return
        try:
            self.sock.sendto(data, socket.MSG_DONTWAIT, addr)
        except OSError as exc:
            log.debug("DNS UDP send failed: %s", exc)

    def stop(self) -> None:
        """Wake the thread (a shut-down socket returns from ``recvfrom``); it closes
        the socket on its way out."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _Once(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _udp_ask(host: str, port: int, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Once, remote_addr=(host, port))
    try:
        transport.sendto(data)
        return await proto.done
    finally:
        transport.close()


async def _tcp_ask(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack(">H", len(data)) + data)
        await writer.drain()
        head = await reader.readexactly(2)
        return await reader.readexactly(struct.unpack(">H", head)[0])
    finally:
        writer.close()
