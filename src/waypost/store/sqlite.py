"""The embedded default: SQLite in WAL mode, one writer thread, group commit.

Durability: every batch is committed with ``synchronous=FULL`` (the WAL is fsynced)
before its caller hears back, so an acknowledged write survives ``kill -9`` and power
loss. Throughput: the writer thread drains every batch queued while it was busy into one
transaction, each batch inside its own SAVEPOINT (so one batch's conflict does not undo
another's), and so concurrent writers share one fsync. Reads run on the same thread; no
SQLite call ever runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from waypost.errors import StoreError, Unavailable, WaypostError
from waypost.model import Event, Instance
from waypost.store.base import (
    CHANGES_PAGE,
    DEFAULT_EVENT_MAX,
    DEFAULT_EVENT_WINDOW_S,
    ChangeFeed,
    Delete,
    Op,
    StoreOps,
    apply_ops,
    gone,
    watch_with_backlog,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id       TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    data     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY,
    type     TEXT NOT NULL,
    ts       REAL NOT NULL,
    data     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
SCHEMA_VERSION = 1
# Prune the event log at most this often; pruning is a cheap indexed range delete.
PRUNE_EVERY_S = 1.0
# Background checkpoint period, and the WAL size (pages of 4 KiB) at which a commit
# checkpoints by itself if the background thread cannot.
CHECKPOINT_EVERY_S = 0.5
BACKSTOP_CHECKPOINT_PAGES = 25_000
# At most this many batches share one transaction, to bound a commit's latency.
MAX_GROUP = 512

_encode = msgspec.json.Encoder().encode
_decode_instance = msgspec.json.Decoder(Instance).decode


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
        self.encoded: dict[int, bytes] = {}  # id(instance) -> JSON, reused for the event row

    def get(self, instance_id: str) -> tuple[Instance, int] | None:
        row = self._cur.execute(
            "SELECT data, revision FROM instances WHERE id = ?", (instance_id,)
        ).fetchone()
        return (_decode_instance(row[0]), row[1]) if row else None

    def put(self, inst: Instance, revision: int) -> None:
        data = self.encoded[id(inst)] = _encode(inst)
        self._cur.execute(
            "INSERT INTO instances(id, revision, data) VALUES (?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET revision = excluded.revision, data = excluded.data",
            (inst.id, revision, data),
        )

    def encode(self, inst: Instance) -> bytes:
        return self.encoded.get(id(inst)) or _encode(inst)

    def delete(self, instance_id: str) -> None:
        self._cur.execute("DELETE FROM instances WHERE id = ?", (instance_id,))


class SqliteStore(StoreOps):
    """Store in one SQLite file; the default for a single server."""

    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        event_window_s: float = DEFAULT_EVENT_WINDOW_S,
        event_max: int = DEFAULT_EVENT_MAX,
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
        self._closed = True
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

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
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="waypost-sqlite", daemon=True
        )
        self._thread.start()
        await ready
        self._closed = False
        self._stop_checkpoints.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="waypost-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    async def close(self) -> None:
        if self._thread is None:
            return
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
        conn.executescript(SCHEMA)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this Waypost reads {SCHEMA_VERSION}"
            )
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            self._revision = int(meta.get("revision", 0))
            self._floor = int(meta.get("floor", 0))
        except (sqlite3.Error, OSError, WaypostError) as exc:
            err = exc if isinstance(exc, WaypostError) else _store_error(exc, self.path)
            self._call(ready.set_exception, err)
            return
        self._call(ready.set_result, None)
        try:
            self._serve(conn)
        finally:
            self._closed = True
            conn.close()

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
            jobs = [first]
            stop = False
            while len(jobs) < MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                jobs.append(nxt)
            writes = [j for j in jobs if isinstance(j, _Job) and j.ops is not None]
            reads = [j for j in jobs if isinstance(j, _Job) and j.fn is not None]
            if writes:
                self._commit_group(conn, writes)
            for job in reads:
                assert job.fn is not None
                try:
                    result = job.fn(conn)
                except WaypostError as exc:
                    self._resolve(job.fut, exc)
                except (sqlite3.Error, OSError) as exc:
                    self._resolve(job.fut, _store_error(exc, self.path))
                else:
                    self._resolve(job.fut, result)
            if stop:
                return

    def _commit_group(self, conn: sqlite3.Connection, writes: list[_Job]) -> None:
        start_revision = self._revision
        outcomes: list[tuple[_Job, list[Event] | WaypostError]] = []
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            for job in writes:
                assert job.ops is not None
                # Only deletes and conditional puts can fail; a batch of blind puts needs
                # no savepoint (two statements saved per registration).
                guarded = any(
                    isinstance(op, Delete) or op.if_revision is not None for op in job.ops
                )
                if guarded:
                    cur.execute("SAVEPOINT batch")
                try:
                    tx = _SqliteTx(cur)
                    events = apply_ops(tx, job.ops, self._revision)
                    now = time.time()
                    cur.executemany(
                        "INSERT INTO events(revision, type, ts, data) VALUES (?, ?, ?, ?)",
                        [(ev.revision, ev.type, now, tx.encode(ev.instance)) for ev in events],
                    )
                except WaypostError as exc:
                    if guarded:
                        cur.execute("ROLLBACK TO batch")
                        cur.execute("RELEASE batch")
                    outcomes.append((job, exc))
                    continue
                if guarded:
                    cur.execute("RELEASE batch")
                if events:
                    self._revision = events[-1].revision
                outcomes.append((job, events))
            cur.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('revision', ?)", (self._revision,)
            )
            conn.commit()
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            self._revision = start_revision
            err = _store_error(exc, self.path)
            for job in writes:
                self._resolve(job.fut, err)
            return
        committed: list[Event] = []
        settled: list[tuple[asyncio.Future[Any], object]] = []
        for job, outcome in outcomes:
            if isinstance(outcome, WaypostError):
                settled.append((job.fut, outcome))
            else:
                committed.extend(outcome)
                settled.append((job.fut, outcome[-1].revision if outcome else self._revision))
        # One wake-up of the event loop per group, not one per batch: each
        # call_soon_threadsafe writes to the loop's self-pipe.
        self._call(self._finish, settled, committed)
        self._maybe_prune(conn)

    def _maybe_prune(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        try:
            by_count = self._revision - self._max
            by_time = conn.execute(
                "SELECT MAX(revision) FROM events WHERE ts < ?", (now - self._window_s,)
            ).fetchone()[0]
            floor = max(by_count, by_time or 0, self._floor)
            if floor > self._floor:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DELETE FROM events WHERE revision <= ?", (floor,))
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
        self, settled: list[tuple[asyncio.Future[Any], object]], committed: list[Event]
    ) -> None:
        """On the loop: publish a committed group's events, then answer its writers."""
        if committed:
            self._feed.publish(committed)
        for fut, result in settled:
            _settle(fut, result)

    def _resolve(self, fut: asyncio.Future[Any], result: object) -> None:
        self._call(_settle, fut, result)

    # --- the async face ------------------------------------------------------------------

    def _submit(
        self, job_ops: Sequence[Op] | None, fn: Callable[[sqlite3.Connection], T] | None
    ) -> asyncio.Future[Any]:
        if self._closed:  # also set when the writer thread ends, whatever the reason
            raise Unavailable("the SQLite store is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put(_Job(fut, ops=job_ops, fn=fn))
        return fut

    async def apply(self, ops: Sequence[Op]) -> int:
        result: int = await self._submit(list(ops), None)
        return result

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result: T = await self._submit(None, fn)
        return result

    async def snapshot(self) -> tuple[int, list[tuple[Instance, int]]]:
        def read(conn: sqlite3.Connection) -> tuple[int, list[tuple[Instance, int]]]:
            rows = conn.execute("SELECT data, revision FROM instances").fetchall()
            return self._revision, [(_decode_instance(d), r) for d, r in rows]

        return await self._read(read)

    async def changes(self, since: int, limit: int = CHANGES_PAGE) -> list[Event]:
        def read(conn: sqlite3.Connection) -> list[Event]:
            if since < self._floor:
                raise gone(since, self._floor)
            rows = conn.execute(
                "SELECT revision, type, data FROM events WHERE revision > ? "
                "ORDER BY revision LIMIT ?",
                (since, limit),
            ).fetchall()
            return [Event(revision=r, type=t, instance=_decode_instance(d)) for r, t, d in rows]

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


def _settle(fut: asyncio.Future[Any], result: object) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def _store_error(exc: BaseException, path: Path) -> StoreError:
    return StoreError(f"SQLite store {path}: {exc}")
