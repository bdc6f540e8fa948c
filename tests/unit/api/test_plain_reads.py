"""``plain_target`` (api/hot.py) against aiohttp's own request parser: whatever the plain
path takes, aiohttp would have read as exactly one GET of that target over HTTP/1.1,
keep-alive, no body, no upgrade; so answering it on the connection changes nothing.

Requests are built from pieces that sit on either side of every rule the pattern makes
(method and version case, odd bytes in targets and values, singletons repeated, bodies,
tokens, pipelining, bare line feeds, obs-fold), so both outcomes are common."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from unittest import mock

import pytest
from aiohttp import StreamReader
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from tests.conftest import until
from waypost.api.conns import ConnectionLimits
from waypost.api.hot import PlainConnection, plain_target

NAMES = st.sampled_from(
    [
        "Host", "host", "HOST", "User-Agent", "Accept", "accept-encoding", "X-Request-Id",
        "Connection", "Content-Length", "Transfer-Encoding", "Authorization",
        "X-Waypost-Token", "Upgrade", "Expect", "X-Other", "Ho st", "", "Host ", "Accept\x00",
        "Traceparent", "Via", "Te",
    ]
)  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(["x", "", " keep-alive ", "close", "keep-alive", "0", "5", "chunked", "*/*"]),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
)
LINE_END = st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"])
FIELDS = st.lists(
    st.tuples(NAMES, st.sampled_from([":", ": ", " :", ":\t"]), VALUES, LINE_END),
    max_size=6,
)
WILD = st.tuples(
    st.sampled_from(["GET", "GET", "get", "HEAD", "POST"]),
    st.sampled_from(
        ["/api/v1/services/web", "/api/v1/services", "/x?y=1", "/a%20b", "*", "http://h/x", "/é"]
    ),
    st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "http/1.1", "HTTP/2.0"]),
    FIELDS,
    st.sampled_from(["", "", "", "body", "GET / HTTP/1.1\r\n\r\n", " folded\r\n"]),
)
# Near misses: a plain read with one Host, common fields and printable values, and at
# most one wild field somewhere among them.
GOOD_FIELD = st.tuples(
    st.sampled_from(["User-Agent", "accept", "Accept-Encoding", "X-Request-Id", "Connection"]),
    st.just(": "),
    st.sampled_from(["keep-alive", "*/*", "gzip", "a b", "x\ty", ""]),
    st.just("\r\n"),
)
NEAR = st.builds(
    lambda target, fields, wild, at: (
        "GET",
        target,
        "HTTP/1.1",
        [*fields[:at], *wild, ("Host", ": ", "h", "\r\n"), *fields[at:]],
        "",
    ),
    st.sampled_from(["/api/v1/services/web", "/api/v1/nodes", "/x?y=1"]),
    st.lists(GOOD_FIELD, max_size=4),
    st.lists(st.tuples(NAMES, st.sampled_from([":", ": "]), VALUES, LINE_END), max_size=1),
    st.integers(0, 4),
)
REQUEST = st.one_of(WILD, NEAR)


def build(parts: tuple[str, str, str, list[tuple[str, str, str, str]], str]) -> bytes:
    method, target, version, fields, tail = parts
    head = f"{method} {target} {version}\r\n"
    for name, sep, value, end in fields:
        head += f"{name}{sep}{value}{end}"
    return (head + "\r\n" + tail).encode("latin-1")


def aiohttp_reads(data: bytes) -> list[tuple[RawRequestMessage, StreamReader]] | None:
    """The messages aiohttp's server-side parser finds in ``data`` (its settings), or None
    for a request it refuses."""

    async def parse() -> list[tuple[RawRequestMessage, StreamReader]] | None:
        parser = HttpRequestParser(
            mock.Mock(),
            asyncio.get_running_loop(),
            2**16,
            max_line_size=8190,
            max_headers=128,
            max_field_size=8190,
        )
        try:
            messages, upgraded, tail = parser.feed_data(data)
        except Exception:
            return None
        if upgraded or tail:
            return None
        return [(msg, payload) for msg, payload in messages]

    return asyncio.run(parse())


@settings(max_examples=400, deadline=None)
@given(REQUEST)
@example(("GET", "/api/v1/services/web", "HTTP/1.1", [("Host", ": ", "x", "\r\n")], ""))
@example(("GET", "/api/v1/services", "HTTP/1.1", [("Host", ":", "a", "\r\n")] * 2, ""))
def test_what_the_plain_path_takes_aiohttp_reads_as_one_plain_get(
    parts: tuple[str, str, str, list[tuple[str, str, str, str]], str],
) -> None:
    data = build(parts)
    target = plain_target(data)
    event("plain" if target is not None else "not plain")
    if target is None:
        return
    got = aiohttp_reads(data)
    assert got is not None, data
    assert len(got) == 1, data
    msg, payload = got[0]
    assert (msg.method, msg.path.encode(), msg.version) == ("GET", target, (1, 1)), data
    assert (msg.should_close, msg.upgrade, msg.chunked) == (False, False, False), data
    assert payload.is_eof(), data


def test_the_common_clients_requests_are_plain() -> None:
    """What wrk, curl, httpx and requests send for a read takes the plain path; with a
    token, a body, pipelined or cut short, it does not."""
    for data in [
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: 127.0.0.1:8500\r\n\r\n",
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/7.88.1\r\n"
        b"Accept: */*\r\n\r\n",
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        b"User-Agent: python-httpx/0.28.1\r\n\r\n",
    ]:
        assert plain_target(data) == b"/api/v1/services/web", data
    for data in [
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer x\r\n\r\n",
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: h\r\n",
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /api/v1/services/web HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET /api/v1/services/web HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /api/v1/services/web HTTP/1.1\r\nAccept: */*\r\n\r\n",
    ]:
        assert plain_target(data) is None, data


class Transport:
    """What a connection writes, and whether it was closed."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.append(b"".join(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default

    peer = "127.0.0.1"

    def abort(self) -> None:
        self.closed = True


class Inner(asyncio.Protocol):
    """aiohttp's handler, as the connection hands over to it: the calls it gets."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        self.calls.append(f"data {data.decode()}")

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")


class Site:
    def __init__(
        self, reads: Callable[[bytes], bytes | None], limits: ConnectionLimits | None = None
    ) -> None:
        self.reads = reads
        self.limits = limits or ConnectionLimits()
        self.plain: set[PlainConnection] = set()
        self.inner = Inner()
        self.handler = lambda: self.inner


def connection(reads: Callable[[bytes], bytes | None]) -> tuple[PlainConnection, Site, Transport]:
    site, transport = Site(reads), Transport()
    conn = PlainConnection(site)  # type: ignore[arg-type]
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, site, transport


def test_a_connection_answers_plain_reads_until_paused_then_hands_over_for_good() -> None:
    async def run() -> None:
        conn, site, transport = connection(lambda data: b"answer" if data == b"plain" else None)
        conn.data_received(b"plain")
        assert transport.out == [b"answer"]
        assert site.inner.calls == []
        # Writing paused (the client does not read): even a plain read is aiohttp's,
        # which is told it is paused before it sees the bytes.
        conn.pause_writing()
        conn.data_received(b"plain")
        assert site.inner.calls == ["made", "pause", "data plain"]
        conn.resume_writing()
        conn.data_received(b"plain")  # for good
        assert site.inner.calls[-2:] == ["resume", "data plain"]
        assert transport.out == [b"answer"]
        assert conn not in site.plain
        conn.connection_lost(None)
        assert site.inner.calls[-1] == "lost"

    asyncio.run(run())


def test_a_failing_plain_read_is_logged_and_answered_by_aiohttp(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(data: bytes) -> bytes | None:
        raise RuntimeError("bug")

    async def run() -> None:
        conn, site, transport = connection(broken)
        conn.data_received(b"plain")
        assert site.inner.calls == ["made", "data plain"]
        assert transport.out == []

    asyncio.run(run())
    assert "plain read" in caplog.text


def test_stopping_closes_the_connections_that_never_needed_aiohttp() -> None:
    async def run() -> None:
        conn, site, transport = connection(lambda data: b"answer")
        assert site.plain == {conn}
        conn.close()
        assert transport.closed

    asyncio.run(run())


def test_one_client_holds_at_most_its_share_and_a_closed_one_frees_it() -> None:
    """The listener's limits hold on every connection, plain or handed over: past the
    per-client cap a new connection is closed at once; another address is not affected."""

    async def run() -> None:
        site = Site(lambda data: None, ConnectionLimits(per_client=3, total=5))
        conns = []
        for _ in range(4):
            transport = Transport()
            conn = PlainConnection(site)  # type: ignore[arg-type]
            conn.connection_made(transport)  # type: ignore[arg-type]
            conns.append((conn, transport))
        assert [t.closed for _, t in conns] == [False, False, False, True]
        assert site.limits.refused_per_client == 1
        other = Transport()
        other.peer = "127.0.0.2"
        PlainConnection(site).connection_made(other)  # type: ignore[arg-type]
        assert not other.closed
        conns[0][0].connection_lost(None)  # one closes: its place is free again
        again = Transport()
        PlainConnection(site).connection_made(again)  # type: ignore[arg-type]
        assert not again.closed
        fifth = Transport()
        fifth.peer = "10.0.0.4"
        PlainConnection(site).connection_made(fifth)  # type: ignore[arg-type]
        assert not fifth.closed
        # Five open: the total cap refuses any address.
        third = Transport()
        third.peer = "10.0.0.3"
        PlainConnection(site).connection_made(third)  # type: ignore[arg-type]
        assert third.closed
        assert (site.limits.open, site.limits.refused_total) == (5, 1)
        # A refused connection's loss releases nothing it never held.
        conns[3][0].connection_lost(None)
        assert site.limits.open == 5
        for conn, _ in conns[1:3]:
            conn.connection_lost(None)
        assert site.limits.status().open == 3

    asyncio.run(run())


def test_a_connection_that_never_completes_a_head_is_closed() -> None:
    """Slowloris: a header byte every few seconds never finishes a request head."""

    async def run() -> None:
        site = Site(lambda data: None, ConnectionLimits(first_head_timeout_s=0.05))
        slow, slow_t = PlainConnection(site), Transport()
        slow.connection_made(slow_t)  # type: ignore[arg-type]
        slow.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
        done, done_t = PlainConnection(site), Transport()
        done.connection_made(done_t)  # type: ignore[arg-type]
        done.data_received(b"GET / HTTP/1.1\r\nHost: x\r")  # the head ends across reads
        done.data_received(b"\n\r\n")
        await until(lambda: slow_t.closed, "the slow connection to be closed", timeout_s=5)
        assert site.limits.slow_heads == 1
        assert not done_t.closed
        slow.connection_lost(None)
        done.connection_lost(None)
        assert site.limits.open == 0

    asyncio.run(run())
