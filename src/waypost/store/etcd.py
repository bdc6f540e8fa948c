"""The etcd store: many stateless servers on one etcd cluster (``etcd://h1:2379,h2:2379``).

etcd holds everything, with consensus; Waypost adds none of its own. The mapping is one
to one (``docs/design/etcd.md``):

- an entry is the key ``{prefix}{kind}/{key}`` holding the model's JSON; a batch is one
  etcd transaction (one revision), its ``if_revision`` guards compares on the key's
  ``mod_revision`` (0: absent), a delete compares the key's version (present);
- the catalog's revision is etcd's revision; events are etcd's watch events on the
  prefix (``prev_kv`` gives a deleted entry's last value);
- a lease is an etcd lease (etcd expires it, also with no Waypost server running), with
  a record ``{prefix}_lease/{id}`` attached to it that keeps the TTL as granted (etcd
  counts whole seconds) and lists our leases apart from other users of the cluster.

Keys whose kind starts with ``_`` are ours but not entries: watches skip them. Calls go
to one endpoint at a time; a member that fails is skipped for the next one, and a call
that fails for a reason that may pass (no leader, an election, a dead member) is retried
until ``retry_s`` has passed, then fails with StoreError (503), never silently.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import grpc
import msgspec
from aetcd import rpc

from waypost.aio import settle
from waypost.errors import Conflict, Gone, InvalidInput, NotFound, StoreError, Unavailable
from waypost.members import Members
from waypost.model import MAX_LEASE_ID, Entry, Event
from waypost.store.base import (
    CHANGES_PAGE,
    Delete,
    Grant,
    LeaseState,
    Op,
    Progress,
    Put,
    Revoke,
    Stored,
    StoreOps,
    check_ttl,
    decode_record,
    gone,
    missing,
    whole_revisions,
)

log = logging.getLogger("waypost.store.etcd")

T = TypeVar("T")

DEFAULT_PREFIX = "/waypost/"
# One call's own timeout, and how long a call is retried over elections and dead members.
CALL_TIMEOUT_S = 5.0
RETRY_S = 10.0
RETRY_PAUSE_S = 0.05
# Snapshot pages (a big catalog is read in pieces at one revision).
RANGE_PAGE = 2000
# Responses as large as etcd sends (a revoked lease's deletes come in one watch response).
MAX_MESSAGE = 256 * 1024 * 1024
WATCH_RETRY_MAX_S = 2.0
OWN_WRITES_KEPT = 10_000
# A server that stops renewing its membership is taken for gone after this long.
MEMBER_TTL_S = 6.0
LEASE_TTLS_KEPT = 100_000

_encode = msgspec.json.Encoder().encode
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,  # "leader changed", "timed out" in some etcd versions
    grpc.StatusCode.CANCELLED,
}


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with ``prefix`` (etcd's rule)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def parse_endpoints(spec: str) -> list[str]:
    """``etcd://h1:2379,h2:2379[/prefix]`` (or the part after ``etcd://``) as host:port
    endpoints; InvalidInput when one is not HOST:PORT."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(
                f"store: {item!r} is not an etcd endpoint (use etcd://HOST:PORT,HOST:PORT)",
                field="store",
            )
        out.append(item)
    if not out:
        raise InvalidInput("store: etcd:// needs at least one HOST:PORT", field="store")
    return out


@dataclass(frozen=True, slots=True)
class EtcdSecurity:
    """How the store reaches a production etcd: TLS (``tls``, or any of the files), a CA
    that signs the members' certificates (empty: the system's), a client certificate
    and key for etcd's ``--client-cert-auth``, and a user and password for etcd's auth
    (``etcdctl auth enable``)."""

    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    user: str = ""
    password: str = ""

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.ca_file or self.cert_file)

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials (reads the files: call it off the event loop)."""
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidInput("etcd: a client certificate needs its key (and the key its "
                               "certificate)", field="etcd_cert")  # fmt: skip
        pem: dict[str, bytes | None] = {}
        for name, path in (("ca", self.ca_file), ("cert", self.cert_file), ("key", self.key_file)):
            if not path:
                pem[name] = None
                continue
            try:
                with open(path, "rb") as f:
                    pem[name] = f.read(1 << 20)
            except OSError as exc:
                raise InvalidInput(f"etcd_{name}: cannot read {path} ({exc.strerror})",
                                   field=f"etcd_{name}") from None  # fmt: skip
        return grpc.ssl_channel_credentials(
            root_certificates=pem["ca"], private_key=pem["key"], certificate_chain=pem["cert"]
        )


class _Token:
    """A member's etcd auth token (etcd's simple tokens are each member's own)."""

    def __init__(self) -> None:
        self.value = ""
        self.lock = asyncio.Lock()


class _TokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds the member's auth token to every call (etcd reads it from ``token``)."""

    def __init__(self, token: _Token) -> None:
        self.token = token

    def _details(self, details: Any) -> Any:
        if not self.token.value:
            return details
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("token", self.token.value)
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def _auth_expired(exc: grpc.aio.AioRpcError) -> bool:
    """etcd refused the token (expired, or issued by a member that restarted)."""
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in details


@dataclass(slots=True)
class _Member:
    endpoint: str
    channel: grpc.aio.Channel
    kv: Any
    watch: Any
    lease: Any
    maintenance: Any
    auth: Any = None
    token: _Token = field(default_factory=_Token)


class EtcdStore(StoreOps):
    """The store on an etcd v3 cluster (3.4 and later)."""

    kind = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        retry_s: float = RETRY_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        security: EtcdSecurity | None = None,
    ) -> None:
        self.security = security or EtcdSecurity()
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise InvalidInput("store: the etcd prefix starts and ends with '/'", field="store")
        self.endpoints = list(endpoints)
        self.prefix = prefix.encode()
        self._end = prefix_end(self.prefix)
        self.retry_s = retry_s
        self.call_timeout_s = call_timeout_s
        self._members: list[_Member] = []
        self._current = 0
        self._open = False
        self._compacted = 0
        self._keepalive: _KeepAlive | None = None
        self._group: _GroupCommit | None = None
        # Entries this process just wrote, by key, with the bytes written: when the
        # watch brings the same bytes back, the entry is reused instead of decoded.
        self._own: dict[bytes, tuple[bytes, Entry]] = {}
        # Leases' TTLs as granted (they never change): a keep-alive needs no read.
        self._ttls: dict[int, float] = {}
        self._membership: asyncio.Task[None] | None = None
        self._member_lease = 0
        # The highest revision etcd has shown us, and the watches open now: a revision
        # that goes back means etcd's data was replaced (a restore, a new cluster).
        self._high = 0
        # Times etcd's history was seen to go back (each re-lists every watch).
        self.resets = 0
        self._streams: set[_WatchStream] = set()
        self.skipped_records = 0

    # --- connection ------------------------------------------------------------------------

    @property
    def compacted(self) -> int:
        return self._compacted

    @property
    def endpoint(self) -> str:
        """The member calls go to now (``/status`` shows it)."""
        return self.endpoints[self._current]

    async def open(self) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        sec = self.security
        creds = await asyncio.to_thread(sec.credentials) if sec.uses_tls else None
        self._members = []
        for endpoint in self.endpoints:
            token = _Token()
            interceptors = [_TokenInterceptor(token)] if sec.user else None
            if creds is not None:
                channel = grpc.aio.secure_channel(
                    endpoint, creds, options=options, interceptors=interceptors
                )
            else:
                channel = grpc.aio.insecure_channel(
                    endpoint, options=options, interceptors=interceptors
                )
            self._members.append(
                _Member(
                    endpoint,
                    channel,
                    rpc.KVStub(channel),
                    rpc.WatchStub(channel),
                    rpc.LeaseStub(channel),
                    rpc.MaintenanceStub(channel),
                    rpc.AuthStub(channel),
                    token,
                )
            )
        self._current = random.randrange(len(self._members))
        self._open = True
        self._keepalive = _KeepAlive(self)
        self._group = _GroupCommit(self)
        try:
            await self.ping()
        except BaseException:
            await self.close()
            raise

    # --- servers sharing the store ---------------------------------------------------------

    async def join(self, members: Members, ttl_s: float = MEMBER_TTL_S) -> None:
        """Take part among the servers on this prefix: a key ``_server/{me}`` on a lease
        of its own, kept alive, and the live set read back into ``members``."""
        self._membership = asyncio.create_task(
            self._keep_member(members, ttl_s), name="waypost-etcd-member"
        )

    async def _keep_member(self, members: Members, ttl_s: float) -> None:
        key = self.prefix + b"_server/" + members.me.encode()
        start = self.prefix + b"_server/"
        lease = 0
        while True:
            try:
                if lease and await self._renew(lease) <= 0:
                    log.warning("this server's membership lease %d ended; joining again", lease)
                    lease = 0
                if not lease:
                    lease = random.randrange(1, MAX_LEASE_ID)
                    await self._join_once(key, lease, ttl_s)
                    self._member_lease = lease
                floor = self._high
                resp = await self._call(
                    self._range(rpc.RangeRequest(key=start, range_end=prefix_end(start)))
                )
                self._saw(int(resp.header.revision), floor)
                members.update(kv.key[len(start) :].decode("utf-8", "replace") for kv in resp.kvs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("keeping this server's membership failed (%s); retrying", exc)
            await asyncio.sleep(ttl_s / 3)

    async def _join_once(self, key: bytes, lease: int, ttl_s: float) -> None:
        grant = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl_s)), ID=lease)
        await self._call(lambda m: m.lease.LeaseGrant(grant, timeout=self.call_timeout_s))
        put = rpc.PutRequest(key=key, value=b"", lease=lease)
        await self._call(lambda m: m.kv.Put(put, timeout=self.call_timeout_s))

    async def _renew(self, lease_id: int) -> int:
        assert self._keepalive is not None
        return await self._keepalive.renew(lease_id)

    async def close(self) -> None:
        if self._group is not None:
            await self._group.close()
        if self._membership is not None:
            self._membership.cancel()
            with contextlib.suppress(BaseException):
                await self._membership
            self._membership = None
            if self._member_lease and self._open:
                # Leaving: the others take over this server's share now, not at the TTL.
                with contextlib.suppress(Exception):
                    req = rpc.LeaseRevokeRequest(ID=self._member_lease)
                    await self._members[self._current].lease.LeaseRevoke(req, timeout=2.0)
        self._open = False
        if self._keepalive is not None:
            await self._keepalive.close()
            self._keepalive = None
        for member in self._members:
            with contextlib.suppress(Exception):
                await member.channel.close()
        self._members = []

    def _check_open(self) -> None:
        if not self._open:
            raise Unavailable("the etcd store is closed")

    def _member(self) -> _Member:
        self._check_open()
        return self._members[self._current]

    def _skip(self, member: _Member, why: str) -> None:
        """The member failed: the next call goes to the next one."""
        if self._members and self._members[self._current] is member and len(self._members) > 1:
            self._current = (self._current + 1) % len(self._members)
            log.warning("etcd member %s failed (%s); using %s", member.endpoint, why, self.endpoint)

    async def _call(
        self, fn: Callable[[_Member], Awaitable[T]], *, retry_s: float | None = None
    ) -> T:
        """Run one call on the current member, retried on the next members until
        ``retry_s`` (the store's by default) when it fails for a reason that may pass."""
        loop = asyncio.get_running_loop()
        retry_s = self.retry_s if retry_s is None else retry_s
        deadline = loop.time() + retry_s
        pause = RETRY_PAUSE_S
        while True:
            member = self._member()
            try:
                await self._authenticate(member)
                return await fn(member)
            except grpc.aio.AioRpcError as exc:
                if self.security.user and _auth_expired(exc) and member.token.value:
                    member.token.value = ""  # sign in again, then retry
                    if loop.time() + pause > deadline:
                        raise StoreError(f"etcd: {exc.details() or exc.code().name}") from None
                    await asyncio.sleep(pause)
                    continue
                mapped = _mapped(exc)
                if mapped is not None:
                    raise mapped from None
                if exc.code() not in _RETRYABLE and "leader" not in (exc.details() or ""):
                    raise StoreError(f"etcd: {exc.details() or exc.code().name}") from None
                self._skip(member, exc.details() or exc.code().name)
                if loop.time() + pause > deadline:
                    raise StoreError(
                        f"etcd did not answer within {retry_s:g}s "
                        f"({exc.details() or exc.code().name})"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def _authenticate(self, member: _Member) -> None:
        """Sign in to ``member`` with the store's user when it has no token yet (a wrong
        user or password is final: StoreError, not retried)."""
        sec = self.security
        if not sec.user or member.token.value:
            return
        async with member.token.lock:
            if member.token.value:
                return
            req = rpc.AuthenticateRequest(name=sec.user, password=sec.password)
            try:
                resp = await member.auth.Authenticate(req, timeout=self.call_timeout_s)
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or exc.code().name
                if "authentication failed" in details or "not enabled" in details:
                    raise StoreError(f"etcd refused user {sec.user!r}: {details}") from None
                raise
            member.token.value = str(resp.token)

    def _remember(self, key: bytes, value: bytes, entry: Entry) -> None:
        if len(self._own) >= OWN_WRITES_KEPT:
            self._own.clear()  # writes whose events never came (a failed batch): start over
        self._own[key] = (value, entry)

    def _saw(self, revision: int, floor: int) -> None:
        """etcd answered a linearizable request at ``revision``; ``floor`` is the highest
        revision seen before that request was sent. Only an answer below its floor shows
        etcd's history went back: answers to requests in flight together may come in any
        order, and a watch answer may lag a transaction's (so watches are not checked)."""
        if revision >= floor:
            self._high = max(self._high, revision)
            return
        why = (
            f"etcd's revision went back from {floor} to {revision}: its data was "
            "replaced (a restore from backup, or a new cluster); listing again"
        )
        log.error(why)
        self.resets += 1
        self._high = revision
        for stream in list(self._streams):
            stream.reset(why)

    def _key(self, kind: str, key: str) -> bytes:
        return self.prefix + kind.encode() + b"/" + key.encode()

    def _split(self, raw: bytes) -> tuple[str, str] | None:
        """(kind, key) of one of our keys, None for our bookkeeping keys."""
        rest = raw[len(self.prefix) :].decode("utf-8", "replace")
        kind, sep, key = rest.partition("/")
        if not sep or kind.startswith("_"):
            return None
        return kind, key

    def _decode(self, raw_key: bytes, value: bytes) -> Entry | None:
        ref = self._split(raw_key)
        if ref is None:
            return None
        entry = decode_record(ref[0], ref[1], value)
        if entry is None:
            self.skipped_records += 1
        return entry

    # --- reads -----------------------------------------------------------------------------

    async def ping(self) -> None:
        """Quick (``/health`` waits for it): every member tried once, for up to 2 s."""
        await self._call(
            lambda m: m.kv.Range(
                rpc.RangeRequest(key=self.prefix, range_end=self._end, count_only=True),
                timeout=min(self.call_timeout_s, 2.0),
            ),
            retry_s=min(self.retry_s, 2.0),
        )

    async def snapshot(self) -> tuple[int, list[Stored]]:
        rows: list[Stored] = []
        revision = 0
        start = self.prefix
        while True:
            req = rpc.RangeRequest(
                key=start, range_end=self._end, limit=RANGE_PAGE, revision=revision
            )
            floor = self._high
            resp = await self._call(self._range(req))
            if revision == 0:
                revision = resp.header.revision
                self._saw(int(revision), floor)
            for kv in resp.kvs:
                entry = self._decode(kv.key, kv.value)
                if entry is not None:
                    rows.append((entry, kv.mod_revision))
            if not resp.more or not resp.kvs:
                return revision, rows
            start = resp.kvs[-1].key + b"\x00"

    def _range(self, req: Any) -> Callable[[_Member], Awaitable[Any]]:
        timeout = self.call_timeout_s
        return lambda m: m.kv.Range(req, timeout=timeout)

    async def revision(self) -> int:
        """etcd's current revision."""
        resp = await self._call(
            lambda m: m.kv.Range(
                rpc.RangeRequest(key=self.prefix, range_end=self._end, count_only=True),
                timeout=self.call_timeout_s,
            )
        )
        return int(resp.header.revision)

    def _events(self, raw: Sequence[Any]) -> list[Event]:
        """Our events among etcd's (bookkeeping keys left out), each revision's numbered
        from 0. A delete whose last value etcd no longer has is Gone: re-list."""
        out: list[Event] = []
        index = 0
        last_rev = -1
        for ev in raw:
            kv = ev.kv
            if self._split(kv.key) is None:
                continue
            if ev.type == rpc.Event.PUT:
                own = self._own.pop(kv.key, None)
                # Our own write coming back: the entry it was made from, not a decode.
                entry = own[1] if own is not None and own[0] == kv.value else None
                if entry is None:
                    entry = self._decode(kv.key, kv.value)
                kind: Literal["put", "delete"] = "put"
            else:
                if not ev.HasField("prev_kv"):
                    raise Gone(
                        f"etcd no longer has the value deleted at revision {kv.mod_revision}",
                        field="index",
                    )
                entry = self._decode(kv.key, ev.prev_kv.value)
                kind = "delete"
            if entry is None:
                continue
            if kv.mod_revision != last_rev:
                index = 0
                last_rev = kv.mod_revision
            out.append(Event(revision=kv.mod_revision, type=kind, entry=entry, index=index))
            index += 1
        return out

    def watch(self, since: int) -> AsyncIterator[list[Event]]:
        return self._watch(since)

    async def _watch(self, since: int) -> AsyncIterator[list[Event]]:
        """etcd's watch from ``since + 1``, resumed from the last revision seen after a
        disconnect (on the next member); Gone when etcd compacted past it."""
        last = since
        pause = RETRY_PAUSE_S
        while True:
            member = self._member()
            stream = _WatchStream(self, member, last + 1)
            try:
                async for batch in stream.batches():
                    pause = RETRY_PAUSE_S
                    if batch:
                        last = batch[-1].revision
                        yield batch
                    elif isinstance(batch, Progress) and batch.revision > last:
                        last = batch.revision
                        yield batch
            except grpc.aio.AioRpcError as exc:
                if _auth_expired(exc):
                    member.token.value = ""  # sign in again before the next watch
                self._skip(member, exc.details() or exc.code().name)
                log.warning("etcd watch broke (%s); resuming from %d", exc.details(), last)
            finally:
                await stream.close()
            self._check_open()
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_RETRY_MAX_S)

    async def changes(self, since: int, limit: int = CHANGES_PAGE) -> list[Event]:
        """Events after ``since`` from etcd's history: a watch from ``since + 1`` read up
        to a marker written now (etcd 3.4's progress answers may come before the events
        they should follow; a key of ours under the prefix cannot)."""
        marker = self.prefix + b"_marker"
        resp = await self._call(
            lambda m: m.kv.Put(rpc.PutRequest(key=marker, value=b""), timeout=self.call_timeout_s)
        )
        upto = int(resp.header.revision)
        if since >= upto - 1:
            return []
        member = self._member()
        stream = _WatchStream(self, member, since + 1, marker_at=upto)
        out: list[Event] = []
        try:
            async with asyncio.timeout(self.retry_s):
                async for batch in stream.batches():
                    out += batch
                    if stream.done or len(out) > limit:
                        break
        except grpc.aio.AioRpcError as exc:
            raise StoreError(f"etcd: {exc.details() or exc.code().name}") from None
        except TimeoutError:
            raise StoreError(f"etcd did not give its history within {self.retry_s:g}s") from None
        finally:
            await stream.close()
        return whole_revisions(out, limit)

    # --- writes ----------------------------------------------------------------------------

    async def apply(self, ops: Sequence[Op]) -> int:
        self._check_open()
        if ops and all(isinstance(op, Put) and op.if_revision is None for op in ops):
            assert self._group is not None
            return await self._group.submit(ops)  # type: ignore[arg-type]
        granted: list[int] = []
        try:
            for op in ops:
                if isinstance(op, Grant):
                    await self._grant(op.lease, op.ttl_s)
                    granted.append(op.lease)
            revision, revoked = await self._txn(ops)
        except BaseException:
            for lease_id in granted:  # the batch failed: so did its grants
                with contextlib.suppress(Exception):
                    await self._revoke_only(lease_id)
            raise
        for lease_id in revoked:
            with contextlib.suppress(NotFound):
                await self._revoke_only(lease_id)
        return revision

    async def _txn(self, ops: Sequence[Op]) -> tuple[int, list[int]]:
        """The entry operations of a batch as one transaction; its revision, and the
        leases to revoke now that what they held is deleted."""
        compares: list[Any] = []
        checked: dict[bytes, tuple[Entry | None, str, str, int | None, str]] = {}
        writes: dict[bytes, Any] = {}
        revoked: list[int] = []
        for op in ops:
            if isinstance(op, Put):
                key = self._key(op.entry.KIND, op.entry.key)
                if op.if_revision is not None and key not in checked:
                    checked[key] = (op.entry, op.entry.KIND, op.entry.key, op.if_revision, "put")
                    compares.append(_compare_mod(key, op.if_revision))
                value = _encode(op.entry)
                self._remember(key, value, op.entry)
                writes[key] = rpc.RequestOp(
                    request_put=rpc.PutRequest(key=key, value=value, lease=op.lease or 0)
                )
            elif isinstance(op, Delete):
                key = self._key(op.kind, op.id)
                if key not in checked and key not in writes:
                    checked[key] = (None, op.kind, op.id, op.if_revision, "delete")
                    if op.if_revision is not None:
                        compares.append(_compare_mod(key, op.if_revision))
                    compares.append(_compare_exists(key))
                writes[key] = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
            elif isinstance(op, Revoke):
                state = await self._ttl(op.lease, keys=True)
                if state is None:
                    raise NotFound(f"lease {op.lease} does not exist", field="lease")
                for key in state.keys:
                    if key.startswith(self.prefix) and key not in writes:
                        compares.append(
                            rpc.Compare(
                                result=rpc.Compare.EQUAL,
                                target=rpc.Compare.LEASE,
                                key=key,
                                lease=op.lease,
                            )
                        )
                        writes[key] = rpc.RequestOp(
                            request_delete_range=rpc.DeleteRangeRequest(key=key)
                        )
                revoked.append(op.lease)
        if not writes:
            return await self.revision(), revoked
        failure = [
            rpc.RequestOp(request_range=rpc.RangeRequest(key=key, keys_only=True))
            for key in checked
        ]
        req = rpc.TxnRequest(compare=compares, success=list(writes.values()), failure=failure)
        floor = self._high
        resp = await self._call(lambda m: m.kv.Txn(req, timeout=self.call_timeout_s))
        self._saw(int(resp.header.revision), floor)
        if resp.succeeded:
            return int(resp.header.revision), revoked
        # Which compare failed: the same error the other stores give.
        for (_entry, kind, name, want, action), got in zip(
            checked.values(), resp.responses, strict=False
        ):
            kvs = got.response_range.kvs
            have = kvs[0].mod_revision if kvs else 0
            if action == "delete" and not kvs:
                raise missing(kind, name)
            if want is not None and have != want:
                raise Conflict(
                    f"{kind} {name!r} is at revision {have}, not {want}: it changed meanwhile",
                    field="id",
                )
        raise Conflict("a lease's entries changed meanwhile; try again", field="lease")

    # --- leases ----------------------------------------------------------------------------

    async def _grant(self, lease_id: int, ttl_s: float) -> None:
        ttl_s = check_ttl(ttl_s)
        req = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl_s)), ID=lease_id)
        self._ttls.pop(lease_id, None)
        resp = await self._call(lambda m: m.lease.LeaseGrant(req, timeout=self.call_timeout_s))
        if resp.error:
            if "exist" in resp.error:
                raise Conflict(f"lease {lease_id} exists already", field="lease")
            raise StoreError(f"etcd: {resp.error}")
        record = self.prefix + b"_lease/" + str(lease_id).encode()
        put = rpc.PutRequest(key=record, value=_encode({"ttl_s": ttl_s}), lease=lease_id)
        await self._call(lambda m: m.kv.Put(put, timeout=self.call_timeout_s))

    async def grant(self, ttl_s: float, *, lease_id: int | None = None) -> int:
        self._check_open()
        lease_id = lease_id or random.randrange(1, MAX_LEASE_ID)
        await self._grant(lease_id, ttl_s)
        return lease_id

    async def _revoke_only(self, lease_id: int) -> int:
        self._ttls.pop(lease_id, None)  # the id may be granted again, with another TTL
        req = rpc.LeaseRevokeRequest(ID=lease_id)
        resp = await self._call(lambda m: m.lease.LeaseRevoke(req, timeout=self.call_timeout_s))
        return int(resp.header.revision)

    async def revoke(self, lease_id: int) -> int:
        """etcd deletes what the lease holds, in one revision."""
        self._check_open()
        return await self._revoke_only(lease_id)

    async def keepalive(self, lease_id: int) -> float:
        self._check_open()
        assert self._keepalive is not None
        ttl = await self._keepalive.renew(lease_id)
        if ttl <= 0:
            self._ttls.pop(lease_id, None)
            raise NotFound(f"lease {lease_id} does not exist", field="lease")
        granted = self._ttls.get(lease_id)
        if granted is None:
            granted = await self._lease_record(lease_id)
            if granted is not None:
                if len(self._ttls) >= LEASE_TTLS_KEPT:
                    self._ttls.clear()
                self._ttls[lease_id] = granted
        return granted if granted is not None else float(ttl)

    async def _lease_record(self, lease_id: int) -> float | None:
        key = self.prefix + b"_lease/" + str(lease_id).encode()
        resp = await self._call(
            lambda m: m.kv.Range(rpc.RangeRequest(key=key), timeout=self.call_timeout_s)
        )
        if not resp.kvs:
            return None
        try:
            data = msgspec.json.decode(resp.kvs[0].value)
            return float(data["ttl_s"])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            return None

    async def _ttl(self, lease_id: int, *, keys: bool) -> Any:
        req = rpc.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        resp = await self._call(lambda m: m.lease.LeaseTimeToLive(req, timeout=self.call_timeout_s))
        return None if resp.TTL < 0 else resp

    async def lease(self, lease_id: int) -> LeaseState:
        self._check_open()
        state = await self._ttl(lease_id, keys=True)
        if state is None:
            raise NotFound(f"lease {lease_id} does not exist", field="lease")
        entries = sorted(ref for key in state.keys if (ref := self._ref(key)) is not None)
        ttl_s = await self._lease_record(lease_id)
        return LeaseState(
            id=lease_id,
            ttl_s=ttl_s if ttl_s is not None else float(state.grantedTTL),
            remaining_s=float(max(state.TTL, 0)),
            entries=entries,
        )

    def _ref(self, key: bytes) -> tuple[str, str] | None:
        return self._split(key) if key.startswith(self.prefix) else None

    async def leases(self) -> list[LeaseState]:
        """Our live leases: those with a record under the prefix."""
        self._check_open()
        start = self.prefix + b"_lease/"
        resp = await self._call(
            lambda m: m.kv.Range(
                rpc.RangeRequest(key=start, range_end=prefix_end(start)),
                timeout=self.call_timeout_s,
            )
        )
        out = []
        for kv in resp.kvs:
            try:
                lease_id = int(kv.key[len(start) :])
                ttl_s = float(msgspec.json.decode(kv.value)["ttl_s"])
            except (ValueError, KeyError, TypeError, msgspec.DecodeError):
                continue
            state = await self._ttl(lease_id, keys=False)
            if state is not None:
                out.append(
                    LeaseState(id=lease_id, ttl_s=ttl_s, remaining_s=float(max(state.TTL, 0)))
                )
        return sorted(out, key=lambda s: s.id)


def _unavailable(details: str) -> grpc.aio.AioRpcError:
    """A gRPC error the store's retry treats as "try the next member"."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )


def _compare_mod(key: bytes, revision: int) -> Any:
    return rpc.Compare(
        result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, key=key, mod_revision=revision
    )


def _compare_exists(key: bytes) -> Any:
    return rpc.Compare(result=rpc.Compare.GREATER, target=rpc.Compare.VERSION, key=key, version=0)


def _mapped(exc: grpc.aio.AioRpcError) -> Exception | None:
    """etcd's answers that are final (not worth a retry), as our errors."""
    details = exc.details() or ""
    if "lease already exists" in details:
        return Conflict(f"lease exists already ({details})", field="lease")
    if "lease not found" in details:
        return NotFound(f"lease does not exist ({details})", field="lease")
    if "too many operations in txn" in details:
        return InvalidInput(
            "the batch has more operations than etcd's --max-txn-ops allows "
            "(raise it on the etcd members)",
            field="ops",
        )
    if "request is too large" in details:
        return InvalidInput(
            "the batch is larger than etcd's --max-request-bytes allows", field="ops"
        )
    if "compacted" in details:
        return Gone(f"etcd compacted that revision ({details})", field="index")
    if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return InvalidInput(f"etcd refused the request: {details}", field="ops")
    return None


_END = object()


class _WatchStream:
    """One etcd watch on the store's prefix from ``start``: batches of our events, one
    per watch response (etcd never splits a revision without ``fragment``). A reader
    task hands the responses over through a short queue (gRPC's flow control still
    holds etcd back when we fall behind), so that ``reset`` can end the stream at once
    when etcd's data was replaced under us."""

    def __init__(
        self, store: EtcdStore, member: _Member, start: int, *, marker_at: int | None = None
    ) -> None:
        self.store = store
        self.member = member
        self.start = start
        self.marker_at = marker_at
        self.done = False
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._responses: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._reset: str | None = None

    async def _iter_requests(self) -> AsyncIterator[Any]:
        while True:
            req = await self._requests.get()
            if req is None:
                return
            yield req

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                await self._responses.put(resp)
            await self._responses.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._responses.put(exc)

    def reset(self, why: str) -> None:
        """End the stream with Gone (the caller lists again)."""
        self._reset = why
        with contextlib.suppress(asyncio.QueueFull):
            self._responses.put_nowait(_END)

    async def batches(self) -> AsyncIterator[list[Event]]:
        store = self.store
        create = rpc.WatchCreateRequest(
            key=store.prefix,
            range_end=store._end,
            start_revision=self.start,
            prev_kv=True,
        )
        self._requests.put_nowait(rpc.WatchRequest(create_request=create))
        await store._authenticate(self.member)
        self._call = self.member.watch.Watch(self._iter_requests())
        self._reader = asyncio.ensure_future(self._read())
        store._streams.add(self)
        try:
            while True:
                resp = await self._responses.get()
                if self._reset is not None:
                    raise Gone(self._reset, field="index")
                if resp is _END:
                    return
                if isinstance(resp, Exception):
                    raise resp
                if resp.compact_revision:
                    store._compacted = max(store._compacted, int(resp.compact_revision))
                    raise gone(self.start - 1, int(resp.compact_revision))
                if resp.canceled:
                    raise StoreError(f"etcd cancelled the watch: {resp.cancel_reason}")
                if not resp.events:
                    continue
                if self.marker_at is not None:
                    raw = [ev for ev in resp.events if ev.kv.mod_revision < self.marker_at]
                    if len(raw) < len(resp.events):
                        self.done = True
                    yield store._events(raw)
                    if self.done:
                        return
                    continue
                batch = store._events(resp.events)
                if batch:
                    yield batch
                # Events of ours end before the response's last (bookkeeping keys, or
                # entries that could not be read): say how far the stream has come.
                reached = int(resp.events[-1].kv.mod_revision)
                if not batch or batch[-1].revision < reached:
                    yield Progress(reached)
        finally:
            store._streams.discard(self)

    async def close(self) -> None:
        self._requests.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


class _GroupCommit:
    """Plain puts (no compare, no grant) of concurrent batches go out together, as one
    etcd transaction, while earlier ones are in flight: one gRPC call and one watch
    response for many registrations (Python's gRPC costs ~100 us a call; a registration
    storm is many small independent batches). Each batch still applies whole, and its
    caller gets the revision that holds it; batches that touch the same key go in
    different transactions. If a shared transaction fails, each batch is tried alone,
    so one batch's error (a lease that ended) is never another's."""

    MAX_OPS = 100  # etcd refuses more than --max-txn-ops (128 by default)
    MAX_IN_FLIGHT = 1  # measured: 1 in flight 7.5-8.7k/s, 2: 7.0-7.3k, 4: 5.8k (wrk, 3 members)

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self._queue: collections.deque[tuple[Sequence[Put], asyncio.Future[int]]] = (
            collections.deque()
        )
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Every writer not answered yet, queued or in flight.
        self._waiting: set[asyncio.Future[int]] = set()

    async def submit(self, puts: Sequence[Put]) -> int:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)
        self._queue.append((puts, fut))
        self._pump()
        return await fut

    def _pump(self) -> None:
        while self._in_flight < self.MAX_IN_FLIGHT and self._queue:
            group: list[tuple[Sequence[Put], asyncio.Future[int]]] = []
            keys: set[tuple[str, str]] = set()
            count = 0
            while self._queue:
                puts, fut = self._queue[0]
                refs = {(p.entry.KIND, p.entry.key) for p in puts}
                if group and (count + len(puts) > self.MAX_OPS or refs & keys):
                    break
                self._queue.popleft()
                if fut.cancelled():
                    continue
                group.append((puts, fut))
                keys |= refs
                count += len(puts)
            if not group:
                continue
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, group: list[tuple[Sequence[Put], asyncio.Future[int]]]) -> None:
        try:
            try:
                ops = [op for puts, _ in group for op in puts]
                revision, _ = await self.store._txn(ops)
            except Exception as exc:
                if len(group) == 1:
                    settle(group[0][1], exc)
                    return
                for puts, fut in group:  # alone, each gets its own answer
                    try:
                        settle(fut, (await self.store._txn(puts))[0])
                    except Exception as own:
                        settle(fut, own)
                return
            for _, fut in group:
                settle(fut, revision)
        finally:
            # Whatever ended this (the store closing cancels it): no writer waits forever.
            for _, fut in group:
                settle(fut, Unavailable("the etcd store closed before the write was answered"))
            self._in_flight -= 1
            self._pump()

    async def close(self) -> None:
        """Stop what is in flight and answer every writer still waiting (a task cancelled
        before it ran never reaches its own ``finally``)."""
        self._queue.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fut in list(self._waiting):
            settle(fut, Unavailable("the etcd store closed before the write was answered"))


class _KeepAlive:
    """Lease keep-alives over one LeaseKeepAlive stream per member, kept open: etcd
    answers a stream's requests in order, so answers are matched to requests by their
    place in line. A broken stream fails what waits on it (the store's retry moves to
    the next member) and the next renewal opens another."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self._member: _Member | None = None
        self._call: Any = None
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting: collections.deque[asyncio.Future[int]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None

    async def renew(self, lease_id: int) -> int:
        """The lease's TTL after renewing it (0 or less: it does not exist)."""
        return await self.store._call(lambda m: self._renew_on(m, lease_id))

    async def _renew_on(self, member: _Member, lease_id: int) -> int:
        if self._member is not member or self._reader is None or self._reader.done():
            await self._open(member)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._requests.put_nowait(rpc.LeaseKeepAliveRequest(ID=lease_id))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.store.call_timeout_s)
        except TimeoutError:
            await self.close()  # a stream that stopped answering: open another next time
            raise StoreError(
                f"etcd did not answer a keep-alive within {self.store.call_timeout_s:g}s"
            ) from None

    async def _open(self, member: _Member) -> None:
        await self.close()
        self._member = member
        self._requests = asyncio.Queue()
        requests = self._requests

        async def outgoing() -> AsyncIterator[Any]:
            while True:
                req = await requests.get()
                if req is None:
                    return
                yield req

        self._call = member.lease.LeaseKeepAlive(outgoing())
        self._reader = asyncio.ensure_future(self._read(self._call))

    async def _read(self, call: Any) -> None:
        error: BaseException = _unavailable("the etcd keep-alive stream ended")
        try:
            async for resp in call:
                if self._waiting:
                    fut = self._waiting.popleft()
                    if not fut.done():
                        fut.set_result(int(resp.TTL))
        except asyncio.CancelledError:
            error = _unavailable("the etcd keep-alive stream was closed")
            raise
        except Exception as exc:
            error = exc
        finally:
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(error)
                    fut.exception()  # a waiter that gave up must not leave a log behind

    async def close(self) -> None:
        self._requests.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        self._member = None
