"""The in-memory catalog: every server's index of instances, fed by the store's changes.

Reads (API, DNS, UI) are answered from here; writes go to the store and come back as
events through ``apply``. The catalog keeps one global revision (the store's), the
revision of the last change to each service (so a blocking query on one service sleeps
through changes to others), a ring of recent events for event streams, and wakes its
listeners once per applied batch. It knows no HTTP and no DNS.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
from collections.abc import Callable, Iterable, Sequence

from waypost.model import Event, Instance, Node, NodeStatus, Query, ServiceSummary, Status
from waypost.versions import matches as version_matches

Listener = Callable[[int], None]

# Events kept in memory for event streams that resume from a recent revision; older ones
# are read back from the store.
DEFAULT_RECENT_EVENTS = 4096


class Catalog:
    """Index of instances by id, service, tag and node, at one revision."""

    def __init__(self, *, recent_events: int = DEFAULT_RECENT_EVENTS) -> None:
        self.revision = 0
        self._by_id: dict[str, Instance] = {}
        self._mod: dict[str, int] = {}
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._by_node: dict[str, set[str]] = {}
        self._service_rev: dict[str, int] = {}
        self._sorted: dict[str, list[Instance]] = {}
        self._recent: collections.deque[Event] = collections.deque(maxlen=recent_events)
        self._listeners: list[Listener] = []
        # (revision, sequence, future) as a heap: the lowest revision wakes first.
        self._revision_waiters: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._waiter_seq = 0

    # --- feeding -------------------------------------------------------------------------

    def load(self, instances: Iterable[tuple[Instance, int]], revision: int) -> None:
        """Replace the whole content with a snapshot taken at ``revision``."""
        self._by_id.clear()
        self._mod.clear()
        self._by_service.clear()
        self._by_tag.clear()
        self._by_node.clear()
        self._sorted.clear()
        self._recent.clear()
        for inst, mod in instances:
            self._index(inst, mod)
            self._service_rev[inst.service] = max(self._service_rev.get(inst.service, 0), mod)
        self.revision = revision
        self._notify()

    def apply(self, events: Sequence[Event]) -> None:
        """Apply events in revision order; events at or below the revision are skipped."""
        applied = False
        for ev in events:
            if ev.revision <= self.revision:
                continue
            inst = ev.instance
            old = self._by_id.get(inst.id)
            if old is not None:
                self._unindex(old)
            if ev.type == "put":
                self._index(inst, ev.revision)
            self._service_rev[inst.service] = ev.revision
            if old is not None and old.service != inst.service:
                self._service_rev[old.service] = ev.revision
            self.revision = ev.revision
            self._recent.append(ev)
            applied = True
        if applied:
            self._notify()

    def _index(self, inst: Instance, mod: int) -> None:
        self._by_id[inst.id] = inst
        self._mod[inst.id] = mod
        self._by_service.setdefault(inst.service, {})[inst.id] = inst
        self._sorted.pop(inst.service, None)
        for tag in inst.tags:
            self._by_tag.setdefault(tag, set()).add(inst.id)
        if inst.node:
            self._by_node.setdefault(inst.node, set()).add(inst.id)

    def _unindex(self, inst: Instance) -> None:
        del self._by_id[inst.id]
        self._mod.pop(inst.id, None)
        members = self._by_service.get(inst.service)
        if members is not None:
            members.pop(inst.id, None)
            if not members:
                del self._by_service[inst.service]
        self._sorted.pop(inst.service, None)
        for tag in inst.tags:
            ids = self._by_tag.get(tag)
            if ids is not None:
                ids.discard(inst.id)
                if not ids:
                    del self._by_tag[tag]
        if inst.node:
            ids = self._by_node.get(inst.node)
            if ids is not None:
                ids.discard(inst.id)
                if not ids:
                    del self._by_node[inst.node]

    # --- change notification -------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(revision)`` after every applied batch of changes."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    def _notify(self) -> None:
        waiters = self._revision_waiters
        while waiters and waiters[0][0] <= self.revision:
            _settle(heapq.heappop(waiters)[2], True)
        for listener in tuple(self._listeners):
            listener(self.revision)

    async def wait_for_revision(self, revision: int, timeout_s: float) -> bool:
        """Wait until the catalog has applied ``revision``; False on timeout."""
        if self.revision >= revision:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter_seq += 1
        heapq.heappush(self._revision_waiters, (revision, self._waiter_seq, fut))
        # A timer, not asyncio.wait_for: that costs a task per call on the write path.
        timer = loop.call_later(timeout_s, _settle, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()

    # --- reads ---------------------------------------------------------------------------

    def get(self, instance_id: str) -> Instance | None:
        """The instance with this id, if registered."""
        return self._by_id.get(instance_id)

    def mod_revision(self, instance_id: str) -> int:
        """The revision of the last change to this instance (0 when unknown)."""
        return self._mod.get(instance_id, 0)

    def service_revision(self, service: str) -> int:
        """The revision of the last change to any instance of ``service`` (0 if never)."""
        return self._service_rev.get(service, 0)

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[Instance]:
        """Every instance, in query order."""
        return sorted(self._by_id.values(), key=_order)

    def service_instances(self, service: str) -> list[Instance]:
        """The instances of one service, in query order (cached until the service changes)."""
        cached = self._sorted.get(service)
        if cached is None:
            members = self._by_service.get(service)
            cached = sorted(members.values(), key=_order) if members else []
            self._sorted[service] = cached
        return cached

    def query(self, q: Query) -> list[Instance]:
        """The instances matching every criterion of ``q``, ordered by (service, id)."""
        if q.id is not None:
            one = self._by_id.get(q.id)
            candidates: Iterable[Instance] = [one] if one is not None else []
            ordered = True
        elif q.service is not None:
            candidates = self.service_instances(q.service)
            ordered = True
        else:
            candidates = self._narrow(q)
            ordered = False
        out = [inst for inst in candidates if _matches(q, inst)]
        if not ordered:
            out.sort(key=_order)
        return out

    def _narrow(self, q: Query) -> Iterable[Instance]:
        """The smallest candidate set an index gives for ``q`` (no service named)."""
        sets: list[set[str]] = []
        if q.node is not None:
            sets.append(self._by_node.get(q.node, set()))
        for tag in q.tags:
            sets.append(self._by_tag.get(tag, set()))
        if not sets:
            return self._by_id.values()
        smallest = min(sets, key=len)
        return [self._by_id[i] for i in smallest]

    def services(self) -> list[ServiceSummary]:
        """One summary per service, ordered by name."""
        out = []
        for name in sorted(self._by_service):
            members = self._by_service[name].values()
            counts = dict.fromkeys(Status, 0)
            maintenance = 0
            tags: set[str] = set()
            versions: set[str] = set()
            kinds = set()
            for inst in members:
                counts[inst.effective_status] += 1
                maintenance += inst.maintenance
                tags.update(inst.tags)
                if inst.version:
                    versions.add(inst.version)
                kinds.add(inst.kind)
            out.append(
                ServiceSummary(
                    name=name,
                    instances=len(self._by_service[name]),
                    passing=counts[Status.PASSING],
                    warning=counts[Status.WARNING],
                    critical=counts[Status.CRITICAL],
                    unknown=counts[Status.UNKNOWN],
                    maintenance=maintenance,
                    tags=sorted(tags),
                    versions=sorted(versions),
                    kinds=sorted(kinds, key=lambda k: k.value),
                )
            )
        return out

    def nodes(self) -> list[Node]:
        """The nodes that host instances, ordered by id."""
        out = []
        for node_id in sorted(self._by_node):
            members = [self._by_id[i] for i in self._by_node[node_id]]
            members.sort(key=_order)
            out.append(
                Node(
                    id=node_id,
                    address=members[0].address if members else "",
                    status=NodeStatus.ALIVE,
                    last_seen=max((m.updated_at for m in members), default=0.0),
                    instances=len(members),
                )
            )
        return out

    def service_count(self) -> int:
        """How many services have at least one instance."""
        return len(self._by_service)

    def node_count(self) -> int:
        """How many nodes host at least one instance."""
        return len(self._by_node)

    def events_since(self, revision: int) -> list[Event] | None:
        """Events after ``revision`` from memory, or None when memory does not reach back."""
        if revision >= self.revision:
            return []
        recent = self._recent
        # Revisions are dense (each event takes the next number), so the ring reaches back
        # far enough exactly when it holds revision + 1 or anything before it.
        if not recent or recent[0].revision > revision + 1:
            return None
        out = []
        for ev in reversed(recent):
            if ev.revision <= revision:
                break
            out.append(ev)
        out.reverse()
        return out


def _settle(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _order(inst: Instance) -> tuple[str, str]:
    return (inst.service, inst.id)


def _matches(q: Query, inst: Instance) -> bool:
    """Whether ``inst`` meets every criterion of ``q``."""
    if q.service is not None and inst.service != q.service:
        return False
    if q.kind is not None and inst.kind is not q.kind:
        return False
    if q.node is not None and inst.node != q.node:
        return False
    if q.status and inst.effective_status not in q.status:
        return False
    if q.tags and not all(t in inst.tags for t in q.tags):
        return False
    if q.any_tags and not any(t in inst.tags for t in q.any_tags):
        return False
    for key, value in q.meta:
        if inst.meta.get(key) != value:
            return False
    return not (q.version is not None and not version_matches(inst.version, q.version))
