"""The embedded default: SQLite in WAL mode, one writer thread, group commit.

Durability: every batch is committed with ``synchronous=FULL`` (the WAL is fsynced)
before its caller hears back, so an acknowledged write survives ``kill -9`` and power
loss. Throughput: the writer thread drains every batch queued while it was busy into one
transaction, each batch that can fail inside its own SAVEPOINT (so one batch's conflict
does not undo another's), and so concurrent writers share one fsync. Reads run on the
same thread; no SQLite call ever runs on the event loop. Whatever goes wrong on that
thread, every caller waiting on it gets an answer (an error, never silence).

Leases are rows too (granted and revoked durably); their deadlines live in memory on a
monotonic clock, so after a restart each lease gets a fresh TTL, as etcd gives them after
a leader change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from waypost.aio import settle
from waypost.compact import decode_stored_rows
from waypost.errors import StoreError, StoreFull, Unavailable, WaypostError
from waypost.model import SCHEMA_VERSION, Entry, Event, Instance
from waypost.store.base import (
    CHANGES_PAGE,
    DEFAULT_EVENT_MAX,
    DEFAULT_EVENT_WINDOW_S,
    ChangeFeed,
    Clock,
    Grant,
    LeaseClock,
    LeaseExpiry,
    LeaseState,
    LocalLeases,
    Op,
    Put,
    Revoke,
    Stored,
    StoreOps,
    apply_ops,
    decode_record,
    gone,
    monotonic,
    watch_with_backlog,
)

T = TypeVar("T")
log = logging.getLogger("waypost.store.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    revision INTEGER NOT NULL,
    lease    INTEGER,
    schema   INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_lease ON entries(lease) WHERE lease IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    pos      INTEGER PRIMARY KEY,
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    type     TEXT NOT NULL,
    ts       REAL NOT NULL,
    mark     INTEGER NOT NULL,
    schema   INTEGER NOT NULL,
    data     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events(ts) WHERE mark = 1;
CREATE TABLE IF NOT EXISTS leases (
    id     INTEGER PRIMARY KEY,
    ttl_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
# 1: the foundation (instances only, one event per revision); 2: typed entries, events
# with their place in a revision, leases.
DB_VERSION = 2
# Prune the event log at most this often; pruning is a cheap indexed range delete.
PRUNE_EVERY_S = 1.0
# Background checkpoint period, and the WAL size (pages of 4 KiB) at which a commit
# checkpoints by itself if the background thread cannot.
CHECKPOINT_EVERY_S = 0.5
BACKSTOP_CHECKPOINT_PAGES = 25_000
# At most this many batches share one transaction, to bound a commit's latency.
MAX_GROUP = 512
# An event's position is one integer, its rowid (revision << POS_BITS | index in the
# revision), so the log needs no index besides its time column: a composite key cost a
# second b-tree insert per event.
POS_BITS = 24


# The time column is indexed for the events that open a new second (``mark = 1``): the
# window is cut by time through the index (never a scan), and the index costs one entry a
# second instead of one an event (an entry per event cost 8-10 us of CPU per write).
NEWEST_BEFORE_SQL = (
    "SELECT pos FROM events INDEXED BY events_by_time WHERE mark = 1 AND ts < ? "
    "ORDER BY ts DESC LIMIT 1"
)


def _pos(revision: int, index: int) -> int:
    return (revision << POS_BITS) | index


def _after(revision: int) -> int:
    """The highest position of a revision: events after it come after this."""
    return _pos(revision, (1 << POS_BITS) - 1)


_encode = msgspec.json.Encoder().encode


class _Job:
    __slots__ = ("fn", "fut", "ops")

    def __init__(
        self,
        fut: asyncio.Future[Any],
        ops: Sequence[Op] | None = None,
        fn: Callable[[sqlite3.Connection], Any] | None = None,
    ) -> None:
        self.fut = fut
        self.ops = ops
        self.fn = fn


_STOP = object()


class _SqliteTx:
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur
        self.encoded: dict[int, bytes] = {}  # id(entry) -> JSON, reused for the event row

    def get(self, kind: str, key: str) -> Stored | None:
        row = self._cur.execute(
            "SELECT data, revision FROM entries WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        if row is None:
            return None
        entry = decode_record(kind, key, row[0])
        return (entry, row[1]) if entry is not None else None

    def put(self, entry: Entry, revision: int, lease: int | None) -> None:
        data = self.encoded[id(entry)] = _encode(entry)
        # REPLACE rewrites the whole row of a WITHOUT ROWID table in one b-tree step.
        self._cur.execute(
            "INSERT OR REPLACE INTO entries(kind, key, revision, lease, schema, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry.KIND, entry.key, revision, lease, SCHEMA_VERSION, data),
        )

    def encode(self, entry: Entry) -> bytes:
        return self.encoded.get(id(entry)) or _encode(entry)

    def delete(self, kind: str, key: str) -> None:
        self._cur.execute("DELETE FROM entries WHERE kind = ? AND key = ?", (kind, key))

    def lease_exists(self, lease_id: int) -> bool:
        row = self._cur.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone()
        return row is not None

    def grant(self, lease_id: int, ttl_s: float) -> None:
        self._cur.execute(
            "INSERT INTO leases(id, ttl_ms) VALUES (?, ?)", (lease_id, round(ttl_s * 1000))
        )

    def revoke(self, lease_id: int) -> list[Entry]:
        rows = self._cur.execute(
            "SELECT kind, key, data FROM entries WHERE lease = ? ORDER BY kind, key", (lease_id,)
        ).fetchall()
        self._cur.execute("DELETE FROM entries WHERE lease = ?", (lease_id,))
        self._cur.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
        out = []
        for kind, key, data in rows:
            entry = decode_record(kind, key, data)
            if entry is not None:
                out.append(entry)
        return out


def _migrate(conn: sqlite3.Connection, version: int, path: Path) -> None:
    """Bring an older database up to DB_VERSION in one transaction (nothing is lost)."""
    if version == 1:
        log.info("upgrading %s from layout 1 to %d", path, DB_VERSION)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE events RENAME TO events_v1")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        for iid, revision, data in conn.execute("SELECT id, revision, data FROM instances"):
            conn.execute(
                "INSERT INTO entries(kind, key, revision, lease, schema, data) "
                "VALUES ('instance', ?, ?, NULL, 1, ?)",
                (iid, revision, data),
            )
        for revision, type_, ts, data in conn.execute(
            "SELECT revision, type, ts, data FROM events_v1"
        ):
            try:
                key = str(msgspec.json.decode(data).get("id", ""))
            except (msgspec.DecodeError, AttributeError):
                key = ""
            conn.execute(
                "INSERT INTO events(pos, kind, key, type, ts, mark, schema, data) "
                "VALUES (?, 'instance', ?, ?, ?, 1, 1, ?)",
                (_pos(revision, 0), key, type_, ts, data),
            )
        conn.execute("DROP TABLE events_v1")
        conn.execute("DROP TABLE instances")
        conn.execute(f"PRAGMA user_version={DB_VERSION}")
        conn.commit()
        return
    raise StoreError(f"{path} has layout version {version}; this Waypost reads {DB_VERSION}")


class SqliteStore(LocalLeases, StoreOps):
    """Store in one SQLite file; the default for a single server."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        event_window_s: float = DEFAULT_EVENT_WINDOW_S,
        event_max: int = DEFAULT_EVENT_MAX,
        clock: Clock = monotonic,
    ) -> None:
        self.path = Path(path)
        self._window_s = event_window_s
        self._max = event_max
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._feed = ChangeFeed()
        self._revision = 0  # owned by the writer thread once open
        self._floor = 0
        self._last_prune = 0.0
        self._marked_second = 0  # the second of the last event marked for the time index
        self._closed = True
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._clock = clock
        self._leases = LeaseClock()
        self._expiry = LeaseExpiry(self._leases, self.revoke, clock)
        self.skipped_records = 0

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def compacted(self) -> int:
        return self._floor

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        ready: asyncio.Future[list[tuple[int, int]]] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="waypost-sqlite", daemon=True
        )
        self._thread.start()
        leases = await ready
        self._closed = False
        now = self._clock()
        for lease_id, ttl_ms in leases:
            self._leases.add(lease_id, ttl_ms / 1000, now)
        self._stop_checkpoints.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="waypost-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()
        self._expiry.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._expiry.stop()
        self._closed = True
        self._stop_checkpoints.set()
        self._queue.put(_STOP)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._thread.join)
        if self._checkpointer is not None:
            await loop.run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        self._thread = None
        self._feed.close()

    # --- the writer thread ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so what we acknowledge survives power
        # loss too (NORMAL would survive a process crash only).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        # Checkpoints run on their own thread (``_checkpoints``) so that a commit never
        # pays for copying the WAL back; this automatic one is only a backstop.
        conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={DB_VERSION}")
        elif version != DB_VERSION:
            _migrate(conn, version, self.path)
        return conn

    def _run(self, ready: asyncio.Future[list[tuple[int, int]]]) -> None:
        try:
            conn = self._connect()
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            self._revision = int(meta.get("revision", 0))
            self._floor = int(meta.get("floor", 0))
            leases = conn.execute("SELECT id, ttl_ms FROM leases").fetchall()
        except (sqlite3.Error, OSError, WaypostError) as exc:
            err = exc if isinstance(exc, WaypostError) else _store_error(exc, self.path)
            self._call(settle, ready, err)
            return
        self._call(settle, ready, leases)
        try:
            self._serve(conn)
        finally:
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self._fail_pending(Unavailable("the SQLite store is closed"))

    def _fail_pending(self, err: WaypostError) -> None:
        """Answer every job still queued (the thread is ending): nobody waits forever."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Job):
                self._resolve(job.fut, err)

    def _checkpoints(self) -> None:
        """Copy the WAL back into the database in the background (PASSIVE never blocks
        the writer), then truncate it at close."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the backstop autocheckpoint still bounds the WAL
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY_S):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if self._thread is not None:
                self._thread.join()
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs = first if isinstance(first, list) else [first]  # (submit_each's)
            stop = False
            while len(jobs) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                if isinstance(nxt, list):
                    jobs += nxt
                else:
                    jobs.append(nxt)
            writes = [j for j in jobs if isinstance(j, _Job) and j.ops is not None]
            reads = [j for j in jobs if isinstance(j, _Job) and j.fn is not None]
            if writes:
                try:
                    self._commit_group(conn, writes)
                except Exception as exc:  # a bug, not a database error: answer, go on
                    log.exception("SQLite commit group failed")
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                    err = StoreError(f"SQLite store {self.path}: internal error ({exc})")
                    for job in writes:
                        self._resolve(job.fut, err)
            for job in reads:
                assert job.fn is not None
                try:
                    result = job.fn(conn)
                except WaypostError as exc:
                    self._resolve(job.fut, exc)
                except Exception as exc:
                    self._resolve(job.fut, _store_error(exc, self.path))
                else:
                    self._resolve(job.fut, result)
            if stop:
                return

    def _commit_group(self, conn: sqlite3.Connection, writes: list[_Job]) -> None:
        start_revision = self._revision
        outcomes: list[tuple[_Job, list[Event] | WaypostError]] = []
        lease_ops: list[Op] = []
        cur = conn.cursor()
        now = time.time()
        try:
            cur.execute("BEGIN IMMEDIATE")
            blind: list[tuple[_Job, Entry]] = []
            for job in writes:
                ops = job.ops
                assert ops is not None
                if len(ops) == 1:
                    op = ops[0]
                    if type(op) is Put and op.if_revision is None and op.lease is None:
                        # A registration: one blind put, nothing to check, no savepoint;
                        # those in a row go to SQLite together.
                        blind.append((job, op.entry))
                        continue
                if blind:
                    outcomes += self._blind_puts(cur, blind, now)
                    blind = []
                # Only blind puts cannot fail; a batch of them needs no savepoint (two
                # statements saved per registration).
                guarded = False
                for op in ops:
                    if type(op) is not Put or op.if_revision is not None or op.lease is not None:
                        guarded = True
                        break
                if guarded:
                    cur.execute("SAVEPOINT batch")
                try:
                    tx = _SqliteTx(cur)
                    events = apply_ops(tx, ops, self._revision)
                    cur.executemany(
                        "INSERT INTO events(pos, kind, key, type, ts, mark, schema, data) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                _pos(ev.revision, ev.index),
                                ev.entry.KIND,
                                ev.entry.key,
                                ev.type,
                                now,
                                self._mark(now),
                                SCHEMA_VERSION,
                                tx.encode(ev.entry),
                            )
                            for ev in events
                        ],
                    )
                except WaypostError as exc:
                    if not guarded:
                        raise  # a blind put failed: the transaction is suspect, undo it all
                    cur.execute("ROLLBACK TO batch")
                    cur.execute("RELEASE batch")
                    outcomes.append((job, exc))
                    continue
                if guarded:
                    cur.execute("RELEASE batch")
                    lease_ops += [op for op in ops if type(op) is Grant or type(op) is Revoke]
                if events:
                    self._revision = events[-1].revision
                outcomes.append((job, events))
            if blind:
                outcomes += self._blind_puts(cur, blind, now)
            cur.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('revision', ?)", (self._revision,)
            )
            conn.commit()
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            self._revision = start_revision
            if isinstance(exc, WaypostError):
                err: WaypostError = exc
            elif isinstance(exc, sqlite3.Error | OSError):
                err = _store_error(exc, self.path)
            else:
                raise
            for job in writes:
                self._resolve(job.fut, err)
            return
        committed: list[Event] = []
        settled: list[tuple[asyncio.Future[Any], object]] = []
        failed = {id(job) for job, outcome in outcomes if isinstance(outcome, WaypostError)}
        if failed:  # a failed job's grants and revocations never happened
            lease_ops = [
                op
                for job, _ in outcomes
                if id(job) not in failed
                for op in job.ops or ()
                if type(op) is Grant or type(op) is Revoke
            ]
        for job, outcome in outcomes:
            if isinstance(outcome, WaypostError):
                settled.append((job.fut, outcome))
            else:
                committed.extend(outcome)
                settled.append((job.fut, outcome[-1].revision if outcome else self._revision))
        # One wake-up of the event loop per group, not one per batch: each
        # call_soon_threadsafe writes to the loop's self-pipe.
        self._call(self._finish, settled, committed, lease_ops)
        self._maybe_prune(conn)

    def _mark(self, now: float) -> int:
        """1 for the first event of each second (indexed by time), else 0."""
        second = int(now)
        if second == self._marked_second:
            return 0
        self._marked_second = second
        return 1

    def _blind_puts(
        self, cur: sqlite3.Cursor, puts: list[tuple[_Job, Entry]], now: float
    ) -> list[tuple[_Job, list[Event] | WaypostError]]:
        """Registrations in a row, each at a revision of its own: two statements for the
        lot (what ``apply_ops`` would do for each blind put, without its machinery: this
        is the hottest write)."""
        entries, events = [], []
        outcomes: list[tuple[_Job, list[Event] | WaypostError]] = []
        revision = self._revision
        for job, entry in puts:
            revision += 1
            data = _encode(entry)
            kind, key = entry.KIND, entry.key
            entries.append((kind, key, revision, SCHEMA_VERSION, data))
            events.append(
                (revision << POS_BITS, kind, key, now, self._mark(now), SCHEMA_VERSION, data)
            )
            outcomes.append((job, [Event(revision=revision, type="put", entry=entry)]))
        cur.executemany(
            "INSERT OR REPLACE INTO entries(kind, key, revision, lease, schema, data) "
            "VALUES (?, ?, ?, NULL, ?, ?)",
            entries,
        )
        cur.executemany(
            "INSERT INTO events(pos, kind, key, type, ts, mark, schema, data) "
            "VALUES (?, ?, ?, 'put', ?, ?, ?, ?)",
            events,
        )
        self._revision = revision
        return outcomes

    def _maybe_prune(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        try:
            by_count = self._revision - self._max
            row = conn.execute(NEWEST_BEFORE_SQL, (now - self._window_s,)).fetchone()
            floor = max(by_count, (row[0] if row else 0) >> POS_BITS, self._floor)
            if floor > self._floor:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM events WHERE pos <= ?", (_after(floor),))
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('floor', ?)", (floor,)
                )
                conn.commit()
                self._floor = floor
        except sqlite3.Error:
            # Pruning is housekeeping; a failure here costs disk, not correctness.
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()

    def _call(self, fn: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(fn, *args)

    def _finish(
        self,
        settled: list[tuple[asyncio.Future[Any], object]],
        committed: list[Event],
        lease_ops: list[Op],
    ) -> None:
        """On the loop: track the group's leases, publish its events, answer its writers."""
        now = self._clock()
        for op in lease_ops:
            if isinstance(op, Grant):
                self._leases.add(op.lease, op.ttl_s, now)
                self._expiry.poke()
            elif isinstance(op, Revoke):
                self._leases.remove(op.lease)
        if committed:
            self._feed.publish(committed)
        for fut, result in settled:
            settle(fut, result)

    def _resolve(self, fut: asyncio.Future[Any], result: object) -> None:
        self._call(settle, fut, result)

    # --- the async face ------------------------------------------------------------------

    def _submit(
        self, job_ops: Sequence[Op] | None, fn: Callable[[sqlite3.Connection], T] | None
    ) -> asyncio.Future[Any]:
        self._check_open()  # closed is also set when the writer thread ends, for any reason
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(fut, ops=job_ops, fn=fn))
        return fut

    async def apply(self, ops: Sequence[Op]) -> int:
        result: int = await self._submit(list(ops), None)
        return result

    def submit_each(self, jobs: Sequence[Sequence[Op]]) -> list[Awaitable[int]]:
        """The writer thread's futures for ``jobs``, handed over at once: one wake-up of
        the writer for the lot, no task needed to await them."""
        self._check_open()
        loop = asyncio.get_running_loop()
        handed = [_Job(loop.create_future(), ops=list(ops), fn=None) for ops in jobs]
        if handed:
            self._queue.put(handed)
        futures: list[Awaitable[int]] = [job.fut for job in handed]
        return futures

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._submit(None, fn)
        return result

    async def snapshot(self) -> tuple[int, list[Stored]]:
        def read(conn: sqlite3.Connection) -> tuple[int, list[Stored]]:
            out: list[Stored] = []

            def unreadable(key: str, data: bytes) -> Instance | None:
                entry = decode_record("instance", key, data)
                if entry is None:
                    self.skipped_records += 1
                return entry if isinstance(entry, Instance) else None

            # Instances first, a page at a time (the raw rows of a million records never
            # sit in memory at once next to what they decode into), then the rest.
            cur = conn.execute("SELECT key, data, revision FROM entries WHERE kind = 'instance'")
            while rows := cur.fetchmany(4096):
                out += decode_stored_rows(rows, unreadable)
            cur = conn.execute(
                "SELECT kind, key, data, revision FROM entries WHERE kind != 'instance'"
            )
            for kind, key, data, revision in cur:
                entry = decode_record(kind, key, data)
                if entry is None:
                    self.skipped_records += 1
                else:
                    out.append((entry, revision))
            return self._revision, out

        return await self._read(read)

    async def changes(self, since: int, limit: int = CHANGES_PAGE) -> list[Event]:
        def read(conn: sqlite3.Connection) -> list[Event]:
            if since < self._floor:
                raise gone(since, self._floor)
            rows = conn.execute(
                "SELECT pos, kind, key, type, data FROM events WHERE pos > ? ORDER BY pos LIMIT ?",
                (_after(since), limit),
            ).fetchall()
            if len(rows) == limit:  # finish the last revision: never half of one
                last = rows[-1][0]
                rows += conn.execute(
                    "SELECT pos, kind, key, type, data FROM events "
                    "WHERE pos > ? AND pos <= ? ORDER BY pos",
                    (last, _after(last >> POS_BITS)),
                ).fetchall()
            out = []
            mask = (1 << POS_BITS) - 1
            for pos, kind, key, type_, data in rows:
                entry = decode_record(kind, key, data)
                if entry is not None:
                    out.append(
                        Event(revision=pos >> POS_BITS, type=type_, entry=entry, index=pos & mask)
                    )
            return out

        return await self._read(read)

    def watch(self, since: int) -> AsyncIterator[list[Event]]:
        return watch_with_backlog(self, self._feed, since)

    async def ping(self) -> None:
        def read(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT value FROM meta LIMIT 1").fetchall()
            if not self.path.exists():
                raise StoreError(f"the database file {self.path} has disappeared")

        try:
            await asyncio.wait_for(self._read(read), 5.0)
        except TimeoutError:
            raise StoreError("the SQLite store did not answer within 5 s") from None

    # --- leases (the rest in LocalLeases) -----------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the SQLite store is closed")

    async def lease(self, lease_id: int) -> LeaseState:
        ttl_s, remaining_s, _ = self._lease_state(lease_id)

        def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT kind, key FROM entries WHERE lease = ? ORDER BY kind, key", (lease_id,)
            ).fetchall()
            return [(k, key) for k, key in rows]

        refs = await self._read(read)
        return LeaseState(id=lease_id, ttl_s=ttl_s, remaining_s=remaining_s, entries=refs)


def _store_error(exc: BaseException, path: Path) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", 0) if isinstance(exc, sqlite3.Error) else 0
    full = code == sqlite3.SQLITE_FULL
    if full or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        return StoreFull(
            f"SQLite store {path}: the disk is full; writes are refused until space is "
            "freed (reads go on)"
        )
    return StoreError(f"SQLite store {path}: {exc}")
