"""An in-memory store: the same semantics as SQLite, kept in dicts, lost on exit."""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Sequence

from waypost.errors import Unavailable
from waypost.model import Entry, Event
from waypost.store.base import (
    CHANGES_PAGE,
    DEFAULT_EVENT_MAX,
    DEFAULT_EVENT_WINDOW_S,
    ChangeFeed,
    Clock,
    LeaseClock,
    LeaseExpiry,
    LeaseState,
    LocalLeases,
    Op,
    Stored,
    StoreOps,
    apply_ops,
    gone,
    monotonic,
    watch_with_backlog,
    whole_revisions,
)

Ref = tuple[str, str]
_Row = tuple[Entry, int, int | None]


class _DictTx:
    """Writes staged over the committed rows, applied only when the whole batch passes."""

    def __init__(self, rows: dict[Ref, _Row], leases: LeaseClock) -> None:
        self._rows = rows
        self._leases = leases
        self.staged: dict[Ref, _Row | None] = {}
        self.granted: dict[int, float] = {}
        self.revoked: set[int] = set()

    def _row(self, ref: Ref) -> _Row | None:
        if ref in self.staged:
            return self.staged[ref]
        return self._rows.get(ref)

    def get(self, kind: str, key: str) -> Stored | None:
        row = self._row((kind, key))
        return (row[0], row[1]) if row is not None else None

    def put(self, entry: Entry, revision: int, lease: int | None) -> None:
        self.staged[(entry.KIND, entry.key)] = (entry, revision, lease)

    def delete(self, kind: str, key: str) -> None:
        self.staged[(kind, key)] = None

    def lease_exists(self, lease_id: int) -> bool:
        if lease_id in self.revoked:
            return False
        return lease_id in self.granted or lease_id in self._leases

    def grant(self, lease_id: int, ttl_s: float) -> None:
        self.granted[lease_id] = ttl_s

    def revoke(self, lease_id: int) -> list[Entry]:
        self.revoked.add(lease_id)
        out = []
        state = self._leases.state(lease_id, 0.0)
        refs = set(state[2]) if state is not None else set()
        refs |= {ref for ref, row in self.staged.items() if row is not None and row[2] == lease_id}
        for ref in sorted(refs):
            row = self._row(ref)
            if row is not None and row[2] == lease_id:
                out.append(row[0])
                self.staged[ref] = None
        return out


class MemoryStore(LocalLeases, StoreOps):
    """Store in process memory; for tests and throw-away dev servers."""

    kind = "memory"

    def __init__(
        self,
        *,
        event_window_s: float = DEFAULT_EVENT_WINDOW_S,
        event_max: int = DEFAULT_EVENT_MAX,
        clock: Clock = monotonic,
    ) -> None:
        self._rows: dict[Ref, _Row] = {}
        self._log: collections.deque[tuple[float, Event]] = collections.deque()
        self._revision = 0
        self._floor = 0  # events at or below this revision are pruned
        self._window_s = event_window_s
        self._max = event_max
        self._feed = ChangeFeed()
        self._open = False
        self._clock = clock
        self._leases = LeaseClock()
        self._expiry = LeaseExpiry(self._leases, self.revoke, clock)
        self.skipped_records = 0

    @property
    def compacted(self) -> int:
        return self._floor

    async def open(self) -> None:
        self._open = True
        self._expiry.start()

    async def close(self) -> None:
        self._open = False
        await self._expiry.stop()
        self._feed.close()

    def _check_open(self) -> None:
        if not self._open:
            raise Unavailable("the memory store is closed")

    async def apply(self, ops: Sequence[Op]) -> int:
        self._check_open()
        tx = _DictTx(self._rows, self._leases)
        events = apply_ops(tx, ops, self._revision)
        now = self._clock()
        for lease_id in tx.revoked:
            self._leases.remove(lease_id)
        for lease_id, ttl_s in tx.granted.items():
            self._leases.add(lease_id, ttl_s, now)
        for ref, row in tx.staged.items():
            old = self._rows.get(ref)
            if old is not None:
                self._leases.detach(old[2], ref)
            if row is None:
                self._rows.pop(ref, None)
            else:
                self._rows[ref] = row
                self._leases.attach(row[2], ref)
        if tx.granted:
            self._expiry.poke()
        if not events:
            return self._revision
        wall = time.time()
        for ev in events:
            self._log.append((wall, ev))
        self._revision = events[-1].revision
        self._prune(wall)
        self._feed.publish(events)
        return self._revision

    def _prune(self, now: float) -> None:
        log = self._log
        while log and (len(log) > self._max or log[0][0] < now - self._window_s):
            _, ev = log.popleft()
            self._floor = ev.revision
        # Never keep half a revision: what is left of the floor's revision goes too.
        while log and log[0][1].revision <= self._floor:
            log.popleft()

    async def snapshot(self) -> tuple[int, list[Stored]]:
        self._check_open()
        return self._revision, [(e, r) for e, r, _ in self._rows.values()]

    async def changes(self, since: int, limit: int = CHANGES_PAGE) -> list[Event]:
        self._check_open()
        if since < self._floor:
            raise gone(since, self._floor)
        return whole_revisions([ev for _, ev in self._log if ev.revision > since], limit)

    def watch(self, since: int) -> AsyncIterator[list[Event]]:
        return watch_with_backlog(self, self._feed, since)

    async def ping(self) -> None:
        self._check_open()

    # --- leases (the rest in LocalLeases) -----------------------------------------------

    async def lease(self, lease_id: int) -> LeaseState:
        ttl_s, remaining_s, refs = self._lease_state(lease_id)
        return LeaseState(id=lease_id, ttl_s=ttl_s, remaining_s=remaining_s, entries=sorted(refs))
