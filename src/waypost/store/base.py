"""The store protocol: the source of truth behind every catalog.

A store holds instances, gives every change the next global revision, keeps an event log
for a window so watches resume, and streams its changes in revision order. Writes are
batches of operations applied all or nothing; an operation may name the revision it
expects (compare-and-swap, as etcd's ``mod_revision`` transactions). Every backend
passes the same conformance suite (``tests/unit/store/``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from msgspec import Struct

from waypost.errors import Conflict, Gone, NotFound, Unavailable
from waypost.model import Event, Instance

# How long, and how many, events are kept for watches to resume from (Consul keeps no
# log at all; etcd keeps history until compaction). An hour covers a server restart and
# a client's reconnect storm; the count bounds disk use under a heavy write rate.
DEFAULT_EVENT_WINDOW_S = 3600.0
DEFAULT_EVENT_MAX = 100_000
# How many events one ``changes`` call returns at most.
CHANGES_PAGE = 1000


class Put(Struct, frozen=True, kw_only=True):
    """Register or replace an instance; ``if_revision`` 0 means it must not exist yet."""

    instance: Instance
    if_revision: int | None = None


class Delete(Struct, frozen=True, kw_only=True):
    """Remove an instance; unknown ids fail the batch with NotFound."""

    id: str
    if_revision: int | None = None


Op = Put | Delete


class Store(Protocol):
    """What the server needs of a backend."""

    kind: str
    """Short name shown by ``/status``: ``sqlite``, ``memory``, ``etcd``."""

    @property
    def compacted(self) -> int:
        """Events at or below this revision are pruned: a watch from before it is Gone."""

    async def open(self) -> None:
        """Connect or create; afterwards the store serves."""

    async def close(self) -> None:
        """Flush and release; pending watches end."""

    async def apply(self, ops: Sequence[Op]) -> int:
        """Apply ``ops`` all or nothing, durably; return the revision of the last one."""

    async def snapshot(self) -> tuple[int, list[tuple[Instance, int]]]:
        """Every instance with its mod revision, and the revision of the snapshot."""

    async def changes(self, since: int, limit: int = CHANGES_PAGE) -> list[Event]:
        """Events after ``since`` in order, at most ``limit``; Gone when pruned past."""

    def watch(self, since: int) -> AsyncIterator[list[Event]]:
        """Batches of events after ``since``, in order, live, until the store closes."""

    async def ping(self) -> None:
        """Return when the store answers; raise StoreError when it does not."""

    async def put(self, instance: Instance, *, if_revision: int | None = None) -> int:
        """Register or replace one instance (see ``StoreOps``)."""

    async def delete(self, instance_id: str, *, if_revision: int | None = None) -> int:
        """Remove one instance (see ``StoreOps``)."""

    async def list(self) -> list[Instance]:
        """Every stored instance, ordered by id (see ``StoreOps``)."""


class StoreOps:
    """The single-operation conveniences every store gets from ``apply`` and ``snapshot``."""

    async def apply(self, ops: Sequence[Op]) -> int:
        raise NotImplementedError

    async def snapshot(self) -> tuple[int, list[tuple[Instance, int]]]:
        raise NotImplementedError

    async def put(self, instance: Instance, *, if_revision: int | None = None) -> int:
        """Register or replace one instance; return its revision."""
        return await self.apply([Put(instance=instance, if_revision=if_revision)])

    async def delete(self, instance_id: str, *, if_revision: int | None = None) -> int:
        """Remove one instance (NotFound when unknown); return the revision."""
        return await self.apply([Delete(id=instance_id, if_revision=if_revision)])

    async def list(self) -> list[Instance]:
        """Every stored instance, ordered by id."""
        _, rows = await self.snapshot()
        return sorted((inst for inst, _ in rows), key=lambda i: i.id)


class Tx(Protocol):
    """What ``apply_ops`` needs of a transaction: read and write one instance row."""

    def get(self, instance_id: str) -> tuple[Instance, int] | None: ...

    def put(self, inst: Instance, revision: int) -> None: ...

    def delete(self, instance_id: str) -> None: ...


def apply_ops(tx: Tx, ops: Sequence[Op], revision: int) -> list[Event]:
    """Run ``ops`` against ``tx`` after ``revision``; return the events. The caller owns
    atomicity (rolls ``tx`` back if this raises)."""
    events: list[Event] = []
    for op in ops:
        if isinstance(op, Put):
            if op.if_revision is not None:  # a blind put needs no read
                _check_precondition(op.instance.id, tx.get(op.instance.id), op.if_revision)
            revision += 1
            tx.put(op.instance, revision)
            events.append(Event(revision=revision, type="put", instance=op.instance))
        else:
            current = tx.get(op.id)
            if current is None:
                raise NotFound(f"instance {op.id!r} is not registered", field="id")
            _check_precondition(op.id, current, op.if_revision)
            revision += 1
            tx.delete(op.id)
            events.append(Event(revision=revision, type="delete", instance=current[0]))
    return events


def gone(since: int, floor: int) -> Gone:
    """The error for a watch that starts before the kept log."""
    return Gone(
        f"revision {since} is older than the kept event log (from {floor}); "
        "re-list and watch from the listed index",
        field="index",
    )


def _check_precondition(iid: str, current: tuple[Instance, int] | None, want: int | None) -> None:
    if want is None:
        return
    have = current[1] if current is not None else 0
    if have != want:
        raise Conflict(
            f"instance {iid!r} is at revision {have}, not {want}: it changed meanwhile",
            field="id",
        )


_CLOSED: list[Event] = []


class ChangeFeed:
    """Fans batches of committed events out to live watchers, in commit order."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[list[Event]]] = set()

    def subscribe(self) -> asyncio.Queue[list[Event]]:
        q: asyncio.Queue[list[Event]] = asyncio.Queue()
        self._queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[list[Event]]) -> None:
        self._queues.discard(q)

    def publish(self, events: list[Event]) -> None:
        for q in self._queues:
            q.put_nowait(events)

    def close(self) -> None:
        for q in self._queues:
            q.put_nowait(_CLOSED)


async def watch_with_backlog(
    store: Store, feed: ChangeFeed, since: int
) -> AsyncIterator[list[Event]]:
    """The watch every local store offers: the logged backlog, then live batches.

    Subscribing before reading the backlog means no event falls between the two; events
    seen twice (in both) are dropped by revision.
    """
    q = feed.subscribe()
    try:
        last = since
        while True:
            backlog = await store.changes(last)
            if not backlog:
                break
            last = backlog[-1].revision
            yield backlog
        while True:
            batch = await q.get()
            if batch is _CLOSED:
                raise Unavailable("the store closed")
            fresh = [ev for ev in batch if ev.revision > last]
            if fresh:
                last = fresh[-1].revision
                yield fresh
    finally:
        feed.unsubscribe(q)
