"""An in-memory store: the same semantics as SQLite, kept in dicts, lost on exit."""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator, Sequence

from waypost.errors import Unavailable
from waypost.model import Event, Instance
from waypost.store.base import (
    CHANGES_PAGE,
    DEFAULT_EVENT_MAX,
    DEFAULT_EVENT_WINDOW_S,
    ChangeFeed,
    Op,
    StoreOps,
    apply_ops,
    gone,
    watch_with_backlog,
)


class _DictTx:
    """Writes staged over the committed rows, applied only when the whole batch passes."""

    def __init__(self, rows: dict[str, tuple[Instance, int]]) -> None:
        self._rows = rows
        self.staged: dict[str, tuple[Instance, int] | None] = {}

    def get(self, instance_id: str) -> tuple[Instance, int] | None:
        if instance_id in self.staged:
            return self.staged[instance_id]
        return self._rows.get(instance_id)

    def put(self, inst: Instance, revision: int) -> None:
        self.staged[inst.id] = (inst, revision)

    def delete(self, instance_id: str) -> None:
        self.staged[instance_id] = None


class MemoryStore(StoreOps):
    """Store in process memory; for tests and throw-away dev servers."""

    kind = "memory"

    def __init__(
        self,
        *,
        event_window_s: float = DEFAULT_EVENT_WINDOW_S,
        event_max: int = DEFAULT_EVENT_MAX,
    ) -> None:
        self._rows: dict[str, tuple[Instance, int]] = {}
        self._log: collections.deque[tuple[float, Event]] = collections.deque()
        self._revision = 0
        self._floor = 0  # events at or below this revision are pruned
        self._window_s = event_window_s
        self._max = event_max
        self._feed = ChangeFeed()
        self._open = False

    @property
    def compacted(self) -> int:
        return self._floor

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        self._feed.close()

    def _check_open(self) -> None:
        if not self._open:
            raise Unavailable("the memory store is closed")

    async def apply(self, ops: Sequence[Op]) -> int:
        self._check_open()
        tx = _DictTx(self._rows)
        events = apply_ops(tx, ops, self._revision)
        for iid, row in tx.staged.items():
            if row is None:
                self._rows.pop(iid, None)
            else:
                self._rows[iid] = row
        now = time.time()
        for ev in events:
            self._log.append((now, ev))
        if events:
            self._revision = events[-1].revision
        self._prune(now)
        self._feed.publish(events)
        return self._revision

    def _prune(self, now: float) -> None:
        while self._log and (len(self._log) > self._max or self._log[0][0] < now - self._window_s):
            _, ev = self._log.popleft()
            self._floor = ev.revision

    async def snapshot(self) -> tuple[int, list[tuple[Instance, int]]]:
        self._check_open()
        return self._revision, list(self._rows.values())

    async def changes(self, since: int, limit: int = CHANGES_PAGE) -> list[Event]:
        self._check_open()
        if since < self._floor:
            raise gone(since, self._floor)
        return [ev for _, ev in self._log if ev.revision > since][:limit]

    def watch(self, since: int) -> AsyncIterator[list[Event]]:
        return watch_with_backlog(self, self._feed, since)

    async def ping(self) -> None:
        self._check_open()
