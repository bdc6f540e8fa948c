"""The in-memory catalog: every server's index of entries, fed by the store's changes.

Reads (API, DNS, UI) are answered from here; writes go to the store and come back as
events through ``apply``. The catalog keeps one global revision (the store's), the
revision of the last change to each service (so a blocking query on one service sleeps
through changes to others) and to each entry kind, a ring of recent events for event
streams, and wakes its listeners once per applied batch. It knows no HTTP and no DNS.

Revisions are positions, not counters: several events may share one (a batch, a lease
expiry) and some carry none of ours (etcd), so nothing here assumes one event per
revision, and everything that grows with traffic or with names ever seen is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
from collections.abc import Callable, Iterable, Sequence

from waypost.aio import settle
from waypost.model import (
    Entry,
    Event,
    Instance,
    Node,
    NodeStatus,
    Query,
    ServiceSummary,
    Status,
)
from waypost.query import matches

Listener = Callable[[int], None]

# Events kept in memory for event streams that resume from a recent revision; older ones
# are read back from the store.
DEFAULT_RECENT_EVENTS = 4096
# Services that had instances and have none now keep their last revision this long (in
# count), so a blocking query on a just-emptied service does not wake for nothing.
MAX_EMPTY_SERVICES = 10_000
KINDS = ("instance", "node", "service_config", "route")


# An index past any event of a revision: the whole revision is applied.
_WHOLE = 2**62


class Catalog:
    """Index of entries: instances by id, service, tag and node; other kinds by key."""

    def __init__(self, *, recent_events: int = DEFAULT_RECENT_EVENTS) -> None:
        self.revision = 0
        # The index (within ``revision``) of the last event applied: a follower that
        # gets a revision's events one at a time applies each once. After a load, or a
        # move past empty revisions, the whole revision counts as applied.
        self._last_index = _WHOLE
        self._by_id: dict[str, Instance] = {}
        self._mod: dict[str, int] = {}  # instance id -> mod revision (the hot path)
        self._other_mod: dict[tuple[str, str], int] = {}
        self._others: dict[str, dict[str, Entry]] = {k: {} for k in KINDS if k != "instance"}
        self._by_service: dict[str, dict[str, Instance]] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._by_node: dict[str, set[str]] = {}
        self._service_rev: dict[str, int] = {}
        self._empty_services: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._kind_rev: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._sorted: dict[str, list[Instance]] = {}
        # Answers kept until a change touches them, so a whole-registry answer costs the
        # services (or nodes) that changed, not every instance (issue 12: 1,000 services of
        # 200 instances took 180 ms a change with a dashboard watching).
        self._summaries: dict[str, ServiceSummary] = {}
        self._node_views: dict[str, Node] = {}
        self._recent: collections.deque[Event] = collections.deque(maxlen=recent_events)
        # Every event after this revision is in ``_recent``.
        self._recent_floor = 0
        self._listeners: list[Listener] = []
        # Revision waiters grouped by the revision they wait for, plus a heap of those
        # revisions (lowest wakes first). A waiter that times out leaves its group at once.
        self._waiters: dict[int, set[asyncio.Future[bool]]] = {}
        self._targets: list[int] = []
        self._in_targets: set[int] = set()

    # --- feeding -------------------------------------------------------------------------

    def load(self, entries: Iterable[tuple[Entry, int]], revision: int) -> None:
        """Replace the whole content with a snapshot taken at ``revision``.

        After a gap (a re-list), every service whose instances changed or vanished, and
        every kind that changed, takes ``revision`` as its own, so blocking queries wake
        and no cached answer outlives what it showed."""
        rows = list(entries)
        old = {("instance", k): v for k, v in self._mod.items()} | self._other_mod
        new = {(e.KIND, e.key): mod for e, mod in rows}
        old_instances = dict(self._by_id)
        changed_kinds = {k for (k, key), mod in old.items() if new.get((k, key)) != mod}
        changed_kinds |= {k for (k, key), mod in new.items() if old.get((k, key)) != mod}
        touched: set[str] = set()
        for (kind, key), mod in old.items():
            if kind == "instance" and new.get((kind, key)) != mod:
                touched.add(old_instances[key].service)
        self._by_id = {}
        self._mod = {}
        self._other_mod = {}
        self._others = {k: {} for k in KINDS if k != "instance"}
        self._by_service.clear()
        self._by_tag.clear()
        self._by_node.clear()
        self._sorted.clear()
        self._summaries.clear()
        self._node_views.clear()
        first = not old and self.revision == 0
        for entry, mod in rows:
            if isinstance(entry, Instance):
                self._index(entry, mod)
                if first or old.get(("instance", entry.id)) == mod:
                    # Unchanged (or a first load): the newest change among its instances.
                    since = self.service_revision(entry.service)
                    self._bump_service(entry.service, max(since, mod))
                else:
                    touched.add(entry.service)
            else:
                self._others[entry.KIND][entry.key] = entry
                self._other_mod[(entry.KIND, entry.key)] = mod
        bump = max(revision, self.revision)
        for service in touched:
            self._bump_service(service, bump)
        for kind in changed_kinds:
            self._kind_rev[kind] = (
                bump
                if not first
                else max((mod for (k, _), mod in new.items() if k == kind), default=0)
            )
        self.revision = revision
        self._last_index = _WHOLE
        self._recent.clear()
        self._recent_floor = revision
        self._notify()

    def relist(self, entries: Iterable[tuple[Entry, int]], revision: int) -> list[Event]:
        """Move to a snapshot taken at ``revision`` by its difference from what the
        catalog holds, applied as events at ``revision`` (returned): after a gap the
        store's event log cannot fill (etcd compacted past it), streams and blocking
        queries see every change once instead of a reset. A first load, or a snapshot
        older than the catalog, is a plain ``load``."""
        rows = list(entries)
        if (self.revision == 0 and not self._by_id) or revision <= self.revision:
            self.load(rows, revision)
            return []
        events: list[Event] = []
        seen: set[tuple[str, str]] = set()
        for entry, mod in sorted(rows, key=lambda r: (r[0].KIND, r[0].key)):
            ref = (entry.KIND, entry.key)
            seen.add(ref)
            have = (
                self._mod.get(entry.key) if entry.KIND == "instance" else self._other_mod.get(ref)
            )
            if have != mod:
                events.append(Event(revision=revision, type="put", entry=entry, index=len(events)))
        gone: list[Entry] = [i for i in self._by_id.values() if ("instance", i.id) not in seen]
        for kind, bucket in self._others.items():
            gone += [e for key, e in bucket.items() if (kind, key) not in seen]
        for entry in sorted(gone, key=lambda e: (e.KIND, e.key)):
            events.append(Event(revision=revision, type="delete", entry=entry, index=len(events)))
        self.apply(events, revision)
        # What changed keeps the revision of its own last change (compare-and-swap).
        for entry, mod in rows:
            if entry.KIND == "instance":
                if entry.key in self._mod:
                    self._mod[entry.key] = mod
            elif (entry.KIND, entry.key) in self._other_mod:
                self._other_mod[(entry.KIND, entry.key)] = mod
        return events

    def apply(self, events: Sequence[Event], revision: int | None = None) -> None:
        """Apply events in (revision, index) order; events at or before the last one
        applied are skipped (a revision may come whole, or an event at a time).
        ``revision`` moves the catalog past revisions with no event of ours."""
        start = self.revision
        start_index = self._last_index
        applied = False
        recent = self._recent
        full = recent.maxlen
        for ev in events:
            if ev.revision < start or (ev.revision == start and ev.index <= start_index):
                continue
            entry = ev.entry
            if isinstance(entry, Instance):
                old = self._by_id.get(entry.id)
                if old is not None:
                    self._unindex(old)
                    if old.service != entry.service:
                        self._bump_service(old.service, ev.revision)
                if ev.type == "put":
                    self._index(entry, ev.revision)
                self._bump_service(entry.service, ev.revision)
            else:
                bucket = self._others[entry.KIND]
                if entry.KIND == "node":
                    self._node_views.pop(entry.key, None)
                if ev.type == "put":
                    bucket[entry.key] = entry
                    self._other_mod[(entry.KIND, entry.key)] = ev.revision
                else:
                    bucket.pop(entry.key, None)
                    self._other_mod.pop((entry.KIND, entry.key), None)
            self._kind_rev[entry.KIND] = ev.revision
            self.revision = ev.revision
            self._last_index = ev.index
            if len(recent) == full:
                # The oldest event leaves the ring: events after its revision are all still
                # here, what is left of its own revision is not, so the floor is there.
                self._recent_floor = recent[0].revision
            recent.append(ev)
            applied = True
        if revision is not None and revision > self.revision:
            # Revisions with no event of ours (etcd): the ring stays complete.
            self.revision = revision
            self._last_index = _WHOLE
            applied = True
        if applied:
            self._notify()

    def _bump_service(self, service: str, revision: int) -> None:
        if service in self._by_service:
            self._service_rev[service] = revision  # (a live service is never among the empty)
            return
        # No instances left: keep the revision among the bounded empty ones.
        self._empty_services.pop(service, None)
        self._service_rev.pop(service, None)
        self._empty_services[service] = revision
        if len(self._empty_services) > MAX_EMPTY_SERVICES:
            self._empty_services.popitem(last=False)

    def _index(self, inst: Instance, mod: int) -> None:
        self._by_id[inst.id] = inst
        self._mod[inst.id] = mod
        if inst.service not in self._by_service:
            self._by_service[inst.service] = {}
            gone = self._empty_services.pop(inst.service, None)
            if gone is not None:
                self._service_rev[inst.service] = gone
        self._by_service[inst.service][inst.id] = inst
        self._sorted.pop(inst.service, None)
        self._summaries.pop(inst.service, None)
        for tag in inst.tags:
            self._by_tag.setdefault(tag, set()).add(inst.id)
        if inst.node:
            self._by_node.setdefault(inst.node, set()).add(inst.id)
            self._node_views.pop(inst.node, None)

    def _unindex(self, inst: Instance) -> None:
        del self._by_id[inst.id]
        self._mod.pop(inst.id, None)
        members = self._by_service.get(inst.service)
        if members is not None:
            members.pop(inst.id, None)
            if not members:
                del self._by_service[inst.service]
        self._sorted.pop(inst.service, None)
        self._summaries.pop(inst.service, None)
        for tag in inst.tags:
            ids = self._by_tag.get(tag)
            if ids is not None:
                ids.discard(inst.id)
                if not ids:
                    del self._by_tag[tag]
        if inst.node:
            self._node_views.pop(inst.node, None)
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
        targets = self._targets
        while targets and targets[0] <= self.revision:
            target = heapq.heappop(targets)
            self._in_targets.discard(target)
            group = self._waiters.pop(target, None)
            for fut in group or ():
                settle(fut, True)
        for listener in tuple(self._listeners):
            listener(self.revision)

    async def wait_for_revision(self, revision: int, timeout_s: float) -> bool:
        """Wait until the catalog has applied ``revision``; False on timeout."""
        if self.revision >= revision:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        group = self._waiters.get(revision)
        if group is None:
            group = self._waiters[revision] = set()
            if revision not in self._in_targets:
                self._in_targets.add(revision)
                heapq.heappush(self._targets, revision)
        group.add(fut)
        # A timer, not asyncio.wait_for: that costs a task per call on the write path.
        timer = loop.call_later(timeout_s, settle, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()
            group.discard(fut)
            if not group and self._waiters.get(revision) is group:
                del self._waiters[revision]
                self._compact_targets()

    def _compact_targets(self) -> None:
        # Revisions whose every waiter left stay in the heap until reached; rebuild it
        # when they dominate, so an idle catalog's heap stays as small as its waiters.
        if len(self._targets) > 64 and len(self._targets) > 2 * len(self._waiters):
            self._targets = list(self._waiters)
            self._in_targets = set(self._targets)
            heapq.heapify(self._targets)

    @property
    def waiting(self) -> int:
        """How many revision waiters are parked (and heap slots held): for bounds tests."""
        return sum(len(g) for g in self._waiters.values()) + len(self._targets)

    # --- reads ---------------------------------------------------------------------------

    def get(self, instance_id: str) -> Instance | None:
        """The instance with this id, if registered."""
        return self._by_id.get(instance_id)

    def entry(self, kind: str, key: str) -> Entry | None:
        """The entry of ``kind`` under ``key``, if there is one."""
        if kind == "instance":
            return self._by_id.get(key)
        return self._others.get(kind, {}).get(key)

    def entries(self, kind: str) -> list[Entry]:
        """Every entry of a kind other than instances, ordered by key."""
        bucket = self._others.get(kind, {})
        return [bucket[k] for k in sorted(bucket)]

    def mod_revision(self, instance_id: str, kind: str = "instance") -> int:
        """The revision of the last change to this entry (0 when unknown)."""
        if kind == "instance":
            return self._mod.get(instance_id, 0)
        return self._other_mod.get((kind, instance_id), 0)

    def service_revision(self, service: str) -> int:
        """The revision of the last change to any instance of ``service`` (0 if never)."""
        rev = self._service_rev.get(service)
        if rev is None:
            rev = self._empty_services.get(service, 0)
        return rev

    def kind_revision(self, kind: str) -> int:
        """The revision of the last change to any entry of ``kind``."""
        return self._kind_rev.get(kind, 0)

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
            if members:
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
        out = [inst for inst in candidates if matches(q, inst)]
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
        """One summary per service, ordered by name (each kept until its service changes)."""
        cached = self._summaries
        out = []
        for name in sorted(self._by_service):
            summary = cached.get(name)
            if summary is None:
                summary = cached[name] = self._summary(name)
            out.append(summary)
        return out

    def _summary(self, name: str) -> ServiceSummary:
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
        return ServiceSummary(
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

    def node(self, node_id: str) -> Node | None:
        """One node as ``nodes()`` lists it (registered, or named by instances)."""
        registered = self._others["node"].get(node_id)
        hosted = self._by_node.get(node_id, set())
        if registered is None and not hosted:
            return None
        return self._node_view(node_id, registered, hosted)

    def _node_view(self, node_id: str, registered: Entry | None, hosted: set[str]) -> Node:
        members = sorted((self._by_id[i] for i in hosted), key=_order)
        if isinstance(registered, Node):
            return Node(
                id=node_id,
                address=registered.address,
                meta=registered.meta,
                lease=registered.lease,
                status=registered.status,
                registered=True,
                instances=len(members),
                registered_at=registered.registered_at,
                updated_at=registered.updated_at,
                last_seen=max(
                    registered.last_seen, max((m.updated_at for m in members), default=0.0)
                ),
            )
        return Node(
            id=node_id,
            address=members[0].address if members else None,
            status=NodeStatus.ALIVE,
            registered=False,
            instances=len(members),
            last_seen=max((m.updated_at for m in members), default=0.0),
        )

    def nodes(self) -> list[Node]:
        """Registered nodes, and nodes that instances name but nobody registered (marked
        ``registered: false``), ordered by id."""
        registered = self._others["node"]
        cached = self._node_views
        out = []
        for i in sorted(set(registered) | set(self._by_node)):
            view = cached.get(i)
            if view is None:
                view = cached[i] = self._node_view(
                    i, registered.get(i), self._by_node.get(i, set())
                )
            out.append(view)
        return out

    def nodes_revision(self) -> int:
        """The revision of the last change that could alter ``nodes()``."""
        return max(self._kind_rev["node"], self._kind_rev["instance"])

    def service_count(self) -> int:
        """How many services have at least one instance."""
        return len(self._by_service)

    def node_count(self) -> int:
        """How many nodes are registered or host at least one instance."""
        registered = self._others["node"]
        return len(registered) + sum(1 for n in self._by_node if n not in registered)

    def events_since(self, revision: int) -> list[Event] | None:
        """Events after ``revision`` from memory, or None when memory does not reach back."""
        if revision >= self.revision:
            return []
        if revision < self._recent_floor:
            return None
        out = []
        for ev in reversed(self._recent):
            if ev.revision <= revision:
                break
            out.append(ev)
        out.reverse()
        return out


def _order(inst: Instance) -> tuple[str, str]:
    return (inst.service, inst.id)
