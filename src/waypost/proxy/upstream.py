"""The proxy's upstream side: HTTP/1.1 connections kept alive per endpoint, on asyncio
protocols with llhttp (httptools) parsing the answers.

aiohttp's client spends most of a proxied request's CPU on machinery a proxy does not use
(cookie jars, redirects, auto headers, per-request timers and objects); measured here it
held the proxy at 0.16x nginx. This side does only what a proxy needs: one write per
request head (and body when it is small), one parser per connection, the answer's head
handed over as soon as it is parsed, its body read whole or streamed with flow control
both ways.

A connection carries one request at a time. It goes back to its endpoint's idle list
when its answer was read to the end and both sides allow keep-alive; anything else closes
it. An idle connection the endpoint closed meanwhile is noticed when a request sent on it
gets no answer byte at all: an idempotent request is then sent again once on a new
connection (what Go's and nginx's clients do), so the caller sees no error for it.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import cast

import httptools

from waypost.errors import UpstreamFailed

MAX_IDLE_PER_ENDPOINT = 256
IDLE_TIMEOUT_S = 30.0
STREAM_HIGH_WATER = 256 * 1024  # buffered answer bytes above which reading pauses
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class UpstreamError(UpstreamFailed):
    """The endpoint could not be reached or broke the exchange; ``kind`` is
    ``connect-failure``, ``reset`` or ``timeout`` (the retry policy's words)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class _Connection(asyncio.Protocol):
    """One kept-alive connection to one endpoint."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int, bool]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        # The exchange in progress.
        self.head: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.got_bytes = False
        self.until_close = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self.more: asyncio.Future[None] | None = None  # a streaming reader waiting
        self.paused = False
        self._can_write: asyncio.Future[None] | None = None

    # --- asyncio -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("reset", "the endpoint switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("reset", f"bad answer from the endpoint: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close: an answer without length ends here (the parser is told below)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        # An answer with neither length nor chunks ends where the connection does.
        head_done = self.head is not None and self.head.done()
        if not self.complete and head_done and self.error is None:
            self.complete = self.until_close
        if not self.complete:
            detail = str(exc) if exc else "the endpoint closed the connection"
            self._fail(UpstreamError("reset", detail))
        self._wake()
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_exception(UpstreamError("reset", "connection lost while sending"))

    def pause_writing(self) -> None:
        if self._can_write is None or self._can_write.done():
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    async def drain(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            await self._can_write

    # --- llhttp callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200 and self.status != 101:  # 1xx interim: wait for the real one
            self.headers = []
            return
        self.keep_alive = self.parser.should_keep_alive()
        names = {k.lower() for k, _ in self.headers}
        self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > STREAM_HIGH_WATER and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.complete = True
        self._wake()

    # --- the exchange ----------------------------------------------------------------------

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self.more is not None and not self.more.done():
            self.more.set_result(None)

    def begin(self) -> asyncio.Future[None]:
        self.head = asyncio.get_running_loop().create_future()
        self.headers = []
        self.status = 0
        self.body.clear()
        self.buffered = 0
        self.complete = False
        self.got_bytes = False
        self.until_close = False
        self.error = None
        return self.head

    def take(self) -> bytes:
        data = b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def wait_more(self, timeout_s: float | None) -> None:
        self.more = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                await self.more
        finally:
            self.more = None


class UpstreamResponse:
    """An endpoint's answer: ``status``, ``headers`` (raw pairs), ``content_length``;
    ``read()`` it whole or iterate ``chunks()``, then ``release()``."""

    def __init__(self, conn: _Connection, method: str, read_timeout_s: float | None) -> None:
        self._conn = conn
        self._method = method
        self._timeout = read_timeout_s
        self.status = conn.status
        self.headers = conn.headers
        self.keep_alive = conn.keep_alive
        if method == "HEAD":
            # llhttp cannot be told the answer is to a HEAD: it would wait for the body
            # its Content-Length announces. The answer ends here; the connection too.
            conn.complete = True
            self.keep_alive = False
        self.content_length: int | None = None
        for name, value in conn.headers:
            if name.lower() == b"content-length":
                try:
                    self.content_length = int(value)
                except ValueError:
                    self.content_length = None
        self._released = False

    async def _more(self) -> None:
        """Wait for more of the body (UpstreamError on a failure or a stall)."""
        conn = self._conn
        if conn.error is not None:
            raise conn.error
        try:
            await conn.wait_more(self._timeout)
        except TimeoutError:
            conn._fail(UpstreamError("timeout", "the answer's body stalled"))
            raise UpstreamError("timeout", "the answer's body stalled") from None

    async def read(self) -> bytes:
        while not self._conn.complete:
            await self._more()
        return self._conn.take()

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.body:
                yield conn.take()
                continue
            if conn.complete:
                return
            await self._more()

    def release(self) -> None:
        """Give the connection back (kept alive when its answer was read to the end)."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.complete and self.keep_alive and not conn.closed and conn.error is None:
            self._conn.pool._park(conn)
        elif conn.transport is not None:
            conn.transport.close()


class UpstreamPool:
    """Connections to every endpoint, kept alive; ``request()`` sends one."""

    def __init__(
        self, *, connect_timeout_s: float = 5.0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        # Endpoints whose meta says ``scheme: https`` are dialed over TLS with this context
        # (the system's trust store when None).
        self.tls = tls
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._reaper: asyncio.TimerHandle | None = None
        self.opened = 0

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def _park(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_ENDPOINT:
            if conn.transport is not None:
                conn.transport.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        conn.reused = True
        idle.append(conn)
        if self._reaper is None:
            self._reaper = loop.call_later(IDLE_TIMEOUT_S, self._reap)

    def _reap(self) -> None:
        """Close connections idle for longer than IDLE_TIMEOUT_S."""
        self._reaper = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - IDLE_TIMEOUT_S
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if c.idle_since <= cutoff]:
                if conn.transport is not None:
                    conn.transport.close()
        if self._idle:
            self._reaper = loop.call_later(IDLE_TIMEOUT_S, self._reap)

    async def _connect(self, host: str, port: int, secure: bool = False) -> _Connection:
        loop = asyncio.get_running_loop()
        key = (host, port, secure)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if secure:
                    ctx = self.tls or ssl.create_default_context()
                    _, proto = await loop.create_connection(
                        lambda: _Connection(self, key), host, port, ssl=ctx, server_hostname=host
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: _Connection(self, key), host, port
                    )
        except TimeoutError:
            raise UpstreamError(
                "connect-failure", f"connecting to {host}:{port} timed out"
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamError(
                "connect-failure", f"TLS with {host}:{port} failed: {exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise UpstreamError(
                "connect-failure", f"cannot connect to {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.opened += 1
        self._all.add(proto)
        return proto

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        timeout_s: float | None,
        secure: bool = False,
    ) -> UpstreamResponse:
        """Send the request; the answer once its head has arrived (within
        ``timeout_s``, which also bounds each wait for its body)."""
        for again in (False, True):
            conn = await self._connect(host, port, secure)
            try:
                return await self._exchange(conn, method, target, headers, body, timeout_s)
            except UpstreamError as exc:
                # A kept-alive connection the endpoint had closed: nothing came back.
                stale = (
                    conn.reused
                    and not conn.got_bytes
                    and exc.kind == "reset"
                    and (body is None or isinstance(body, bytes))
                    and method in IDEMPOTENT
                )
                if again or not stale:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        timeout_s: float | None,
    ) -> UpstreamResponse:
        assert conn.transport is not None
        head = conn.begin()
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in headers]
        streamed = body is not None and not isinstance(body, bytes)
        if streamed:
            lines.append("Transfer-Encoding: chunked\r\n")
        elif body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body) if isinstance(body, bytes) else 0}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")
        try:
            async with asyncio.timeout(timeout_s):
                if isinstance(body, bytes):
                    conn.transport.write(data + body if len(body) < 65536 else data)
                    if len(body) >= 65536:
                        conn.transport.write(body)
                elif body is not None:
                    conn.transport.write(data)
                    await self._send_chunked(conn, body)
                else:
                    conn.transport.write(data)
                await head
        except TimeoutError:
            conn._fail(UpstreamError("timeout", "no answer in time"))
            raise UpstreamError(
                "timeout", f"no answer within {timeout_s:g} s" if timeout_s else "no answer"
            ) from None
        except asyncio.CancelledError:
            if conn.transport is not None:
                conn.transport.close()
            raise
        return UpstreamResponse(conn, method, timeout_s)

    async def _send_chunked(self, conn: _Connection, body: AsyncIterator[bytes]) -> None:
        assert conn.transport is not None
        async for chunk in body:
            if conn.closed:
                raise conn.error or UpstreamError("reset", "connection lost while sending")
            if chunk:
                conn.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await conn.drain()
        conn.transport.write(b"0\r\n\r\n")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost


def header_pairs(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
