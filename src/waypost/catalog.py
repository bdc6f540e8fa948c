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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import msgspec

from waypost.aio import settle
from waypost.compact import compact
from waypost.model import (
    Entry,
    Event,
    Instance,
    Kind,
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
KINDS = ("instance", "node", "service_config", "route", "kv", "acl_policy", "acl_token")


# An index past any event of a revision: the whole revision is applied.
_WHOLE = 2**62
_STATUSES = tuple(Status)


class _ServiceCounts:
    """What a service summary counts, kept as instances come and go (no scan)."""

    __slots__ = ("kinds", "maintenance", "status", "tags", "versions")

    def __init__(self) -> None:
        self.status: dict[Status, int] = dict.fromkeys(_STATUSES, 0)
        self.maintenance = 0
        self.tags: collections.Counter[str] = collections.Counter()
        self.versions: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[Kind] = collections.Counter()

    def add(self, inst: Instance, sign: int) -> None:
        status = Status.CRITICAL if inst.maintenance else inst.status
        self.status[status] += sign
        if inst.maintenance:
            self.maintenance += sign
        tags, versions, kinds = self.tags, self.versions, self.kinds
        if sign > 0:
            for tag in inst.tags:
                tags[tag] += 1
            if inst.version:
                versions[inst.version] += 1
            kinds[inst.kind] += 1
            return
        for tag in inst.tags:
            _drop(tags, tag)
        if inst.version:
            _drop(versions, inst.version)
        _drop(kinds, inst.kind)


def _drop(counter: collections.Counter[Any], key: Any) -> None:
    n = counter[key] - 1
    if n > 0:
        counter[key] = n
    else:
        counter.pop(key, None)


class _NodeFacts:
    """What a node's view takes from its instances: the newest update among them and
    the first of them in query order (whose address an unregistered node shows). Kept
    on adds; a removal of the instance holding either marks them for a recount over
    that node's instances alone."""

    __slots__ = ("first", "last_seen", "stale")

    def __init__(self) -> None:
        self.first: tuple[str, str] | None = None
        self.last_seen = 0.0
        self.stale = False


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
        self._counts: dict[str, _ServiceCounts] = {}
        # For DNS: instance ids by address (lower case) and by custom domain (lower case,
        # no final dot), and the ids that are not lower case by their lower-case form.
        self._by_address: dict[str, set[str]] = {}
        self._by_domain: dict[str, set[str]] = {}
        self._folded: dict[str, set[str]] = {}
        # Ids by effective status other than passing, and by kind other than service:
        # the few that queries across services ask for ("what is critical?"), found
        # without a scan; the common value is not indexed (its answer is most of them).
        self._by_status: dict[Status, set[str]] = {}
        self._by_kind: dict[Kind, set[str]] = {}
        # What the last ``apply`` changed, as each instance was before it (None: it was
        # not registered), for listeners that index by old values (DNS).
        self.changed_from: dict[str, Instance | None] = {}
        self._node_facts: dict[str, _NodeFacts] = {}
        # The names of services (nodes) in order, kept until one comes or goes.
        self._service_names: list[str] | None = None
        self._node_names: list[str] | None = None
        self._recent: collections.deque[Event] = collections.deque(maxlen=recent_events)
        # Every event after this revision is in ``_recent``.
        self._recent_floor = 0
        self._listeners: list[Listener] = []
        # Revision waiters grouped by the revision they wait for, plus a heap of those
        # revisions (lowest wakes first). A waiter that times out leaves its group at once.
        self._waiters: dict[int, set[asyncio.Future[bool]]] = {}
        # Waiters that ``poke`` may wake early (event streams, to send a notice).
        self._wakeable: set[asyncio.Future[bool]] = set()
        self._targets: list[int] = []
        self._in_targets: set[int] = set()

    # --- feeding -------------------------------------------------------------------------

    def load(self, entries: Iterable[tuple[Entry, int]], revision: int) -> None:
        """Replace the whole content with a snapshot taken at ``revision``.

        After a gap (a re-list), every service whose instances changed or vanished, and
        every kind that changed, takes ``revision`` as its own, so blocking queries wake
        and no cached answer outlives what it showed."""
        rows = entries if isinstance(entries, list) else list(entries)
        if not self._by_id and not self._other_mod and self.revision == 0:
            self._first_load(rows, revision)
            return
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
        self._counts.clear()
        self._node_facts.clear()
        self._by_address.clear()
        self._by_domain.clear()
        self._folded.clear()
        self._by_status.clear()
        self._by_kind.clear()
        self.changed_from = {}
        self._service_names = None
        self._node_names = None
        for entry, mod in rows:
            if isinstance(entry, Instance):
                self._index(entry, mod)
                if old.get(("instance", entry.id)) == mod:
                    # Unchanged: the newest change among its instances.
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
            self._kind_rev[kind] = bump
        self.revision = revision
        self._last_index = _WHOLE
        self._recent.clear()
        self._recent_floor = revision
        self._notify()

    def _first_load(self, rows: list[tuple[Entry, int]], revision: int) -> None:
        """``load`` into an empty catalog: one pass, each service and kind taking the
        newest change among its entries. ``_index`` inlined, as a server's start at a
        million instances spends its time here (3.4 µs an instance through ``_index``,
        2 µs inlined)."""
        service_rev = self._service_rev
        kind_rev = self._kind_rev
        by_id, mods, by_service = self._by_id, self._mod, self._by_service
        counts, by_tag, by_node, node_facts = (
            self._counts,
            self._by_tag,
            self._by_node,
            self._node_facts,
        )
        others, other_mod = self._others, self._other_mod
        by_address = self._by_address
        critical, passing, service_kind = Status.CRITICAL, Status.PASSING, Kind.SERVICE
        newest_instance = last_mod = 0
        for entry, mod in rows:
            if not isinstance(entry, Instance):
                others[entry.KIND][entry.key] = entry
                other_mod[(entry.KIND, entry.key)] = mod
                if mod > kind_rev[entry.KIND]:
                    kind_rev[entry.KIND] = mod
                continue
            iid, service = entry.id, entry.service
            by_id[iid] = entry
            if mod == last_mod:
                mod = last_mod  # one int object for the instances of one revision
            last_mod = mod
            mods[iid] = mod
            if mod > newest_instance:
                newest_instance = mod
            members = by_service.get(service)
            if members is None:
                members = by_service[service] = {}
                c = counts[service] = _ServiceCounts()
            else:
                c = counts[service]
            members[iid] = entry
            if mod > service_rev.get(service, 0):
                service_rev[service] = mod
            if entry.maintenance:
                c.status[critical] += 1
                c.maintenance += 1
            else:
                c.status[entry.status] += 1
            c.kinds[entry.kind] += 1
            if entry.version:
                c.versions[entry.version] += 1
            for tag in entry.tags:
                c.tags[tag] += 1
                ids = by_tag.get(tag)
                if ids is None:
                    ids = by_tag[tag] = set()
                ids.add(iid)
            address = entry.address.lower()
            ids = by_address.get(address)
            if ids is None:
                ids = by_address[address] = set()
            ids.add(iid)
            if (
                entry.domain
                or entry.maintenance
                or entry.status is not passing
                or entry.kind is not service_kind
                or iid.lower() != iid
            ):
                self._index_names(entry)  # (rare: done again, harmlessly, for the address)
            node = entry.node
            if node:
                hosted = by_node.get(node)
                if hosted is None:
                    hosted = by_node[node] = set()
                    facts = node_facts[node] = _NodeFacts()
                else:
                    facts = node_facts[node]
                hosted.add(iid)
                if entry.updated_at > facts.last_seen:
                    facts.last_seen = entry.updated_at
                first = facts.first
                if first is None or service < first[0] or (service == first[0] and iid < first[1]):
                    facts.first = (service, iid)
        if newest_instance > kind_rev["instance"]:
            kind_rev["instance"] = newest_instance
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
        changed_from: dict[str, Instance | None] = {}
        self.changed_from = changed_from
        recent = self._recent
        full = recent.maxlen
        for ev in events:
            if ev.revision < start or (ev.revision == start and ev.index <= start_index):
                continue
            entry = ev.entry
            if isinstance(entry, Instance):
                old = self._by_id.get(entry.id)
                if entry.id not in changed_from:
                    changed_from[entry.id] = old
                if old is not None:
                    self._unindex(old)
                    if old.service != entry.service:
                        self._bump_service(old.service, ev.revision)
                if ev.type == "put":
                    self._index(compact(entry), ev.revision)
                self._bump_service(entry.service, ev.revision)
            else:
                bucket = self._others[entry.KIND]
                if entry.KIND == "node":
                    self._node_views.pop(entry.key, None)
                    if (ev.type == "put") != (entry.key in bucket):
                        self._node_names = None
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
        service = inst.service
        members = self._by_service.get(service)
        if members is None:
            members = self._by_service[service] = {}
            self._counts[service] = _ServiceCounts()
            self._service_names = None
            gone = self._empty_services.pop(service, None)
            if gone is not None:
                self._service_rev[service] = gone
        members[inst.id] = inst
        self._counts[service].add(inst, 1)
        self._sorted.pop(service, None)
        self._summaries.pop(service, None)
        for tag in inst.tags:
            ids = self._by_tag.get(tag)
            if ids is None:
                ids = self._by_tag[tag] = set()
            ids.add(inst.id)
        self._index_names(inst)
        node = inst.node
        if node:
            hosted = self._by_node.get(node)
            if hosted is None:
                hosted = self._by_node[node] = set()
                if node not in self._others["node"]:
                    self._node_names = None
            hosted.add(inst.id)
            facts = self._node_facts.get(node)
            if facts is None:
                facts = self._node_facts[node] = _NodeFacts()
            if not facts.stale:
                facts.last_seen = max(facts.last_seen, inst.updated_at)
                here = (service, inst.id)
                if facts.first is None or here < facts.first:
                    facts.first = here
            self._node_views.pop(node, None)

    def _index_names(self, inst: Instance) -> None:
        iid = inst.id
        status = inst.effective_status
        if status is not Status.PASSING:
            self._by_status.setdefault(status, set()).add(iid)
        if inst.kind is not Kind.SERVICE:
            self._by_kind.setdefault(inst.kind, set()).add(iid)
        address = inst.address.lower()
        ids = self._by_address.get(address)
        if ids is None:
            ids = self._by_address[address] = set()
        ids.add(iid)
        if inst.domain:
            self._by_domain.setdefault(domain_key(inst.domain), set()).add(iid)
        folded = iid.lower()
        if folded != iid:
            self._folded.setdefault(folded, set()).add(iid)

    def _unindex_names(self, inst: Instance) -> None:
        iid = inst.id
        status = inst.effective_status
        if status is not Status.PASSING:
            _discard(self._by_status, status, iid)
        if inst.kind is not Kind.SERVICE:
            _discard(self._by_kind, inst.kind, iid)
        _discard(self._by_address, inst.address.lower(), iid)
        if inst.domain:
            _discard(self._by_domain, domain_key(inst.domain), iid)
        folded = iid.lower()
        if folded != iid:
            _discard(self._folded, folded, iid)

    def _unindex(self, inst: Instance) -> None:
        del self._by_id[inst.id]
        self._mod.pop(inst.id, None)
        service = inst.service
        members = self._by_service.get(service)
        if members is not None:
            members.pop(inst.id, None)
            self._counts[service].add(inst, -1)
            if not members:
                del self._by_service[service]
                del self._counts[service]
                self._service_names = None
        self._sorted.pop(service, None)
        self._summaries.pop(service, None)
        self._unindex_names(inst)
        for tag in inst.tags:
            ids = self._by_tag.get(tag)
            if ids is not None:
                ids.discard(inst.id)
                if not ids:
                    del self._by_tag[tag]
        node = inst.node
        if node:
            self._node_views.pop(node, None)
            ids = self._by_node.get(node)
            if ids is not None:
                ids.discard(inst.id)
                if not ids:
                    del self._by_node[node]
                    self._node_facts.pop(node, None)
                    if node not in self._others["node"]:
                        self._node_names = None
                    return
            facts = self._node_facts.get(node)
            if facts is not None and (
                facts.first == (service, inst.id) or inst.updated_at >= facts.last_seen
            ):
                facts.stale = True

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

    def poke(self) -> None:
        """Wake the waiters that asked to be wakeable (False, as a timeout), so that event
        streams send what is not an entry change (a notice) at once."""
        for fut in list(self._wakeable):
            settle(fut, False)

    async def wait_for_revision(
        self, revision: int, timeout_s: float, *, wakeable: bool = False
    ) -> bool:
        """Wait until the catalog has applied ``revision``; False on timeout (or on
        ``poke`` when ``wakeable``)."""
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
        if wakeable:
            self._wakeable.add(fut)
        # A timer, not asyncio.wait_for: that costs a task per call on the write path.
        timer = loop.call_later(timeout_s, settle, fut, False)
        try:
            return await fut
        finally:
            timer.cancel()
            group.discard(fut)
            self._wakeable.discard(fut)
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

    def keys_with_prefix(self, kind: str, prefix: str) -> list[str]:
        """The keys of ``kind`` (not instances) that start with ``prefix``, in order."""
        bucket = self._others.get(kind, {})
        return sorted(k for k in bucket if k.startswith(prefix))

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

    def at_address(self, address: str) -> set[str]:
        """Ids of the instances at ``address`` (compared in lower case)."""
        return self._by_address.get(address.lower(), set())

    def with_domain(self, domain: str) -> set[str]:
        """Ids of the instances whose custom ``domain`` is this name (any case, with or
        without the final dot)."""
        return self._by_domain.get(domain_key(domain), set())

    def folded(self, instance_id: str) -> Instance | None:
        """The instance whose id is ``instance_id`` in any case (DNS names are not
        case-sensitive)."""
        inst = self._by_id.get(instance_id)
        if inst is None:
            folded = instance_id.lower()
            inst = self._by_id.get(folded)
            if inst is None:
                spellings = self._folded.get(folded)
                inst = self._by_id.get(min(spellings)) if spellings else None
        return inst

    def instance_ids(self) -> list[str]:
        """Every instance id, in no particular order (a copy: safe across awaits)."""
        return list(self._by_id)

    def instances(self) -> Iterable[Instance]:
        """Every instance, in no particular order (no sort: for whole-registry passes)."""
        return self._by_id.values()

    def node_instances(self, node_id: str) -> list[Instance]:
        """The instances on one node, in query order (a node's own, not a scan)."""
        return sorted((self._by_id[i] for i in self._by_node.get(node_id, ())), key=_order)

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
        """The smallest candidate set an index gives for ``q`` (no service named): its
        node, a tag, any of its tags, a status other than passing, a kind other than
        service. Only a query none of these narrows visits every instance (and then
        its answer is about that large, or it asks by meta or version alone)."""
        sets: list[set[str]] = []
        if q.node is not None:
            sets.append(self._by_node.get(q.node, set()))
        for tag in q.tags:
            sets.append(self._by_tag.get(tag, set()))
        if q.kind is not None and q.kind is not Kind.SERVICE:
            sets.append(self._by_kind.get(q.kind, set()))
        alternatives: list[list[set[str]]] = []
        if q.any_tags:
            alternatives.append([self._by_tag.get(t, set()) for t in q.any_tags])
        if q.status and Status.PASSING not in q.status:
            alternatives.append([self._by_status.get(s, set()) for s in q.status])
        for parts in alternatives:
            # A union costs its size: worth building only when it beats the best so far.
            if not sets or sum(map(len, parts)) < min(map(len, sets)):
                sets.append(set().union(*parts))
        if not sets:
            return self._by_id.values()
        smallest = min(sets, key=len)
        return [self._by_id[i] for i in smallest]

    def services(self) -> list[ServiceSummary]:
        """One summary per service, ordered by name (each kept until its service changes,
        and built from counts kept as instances change: no instance is visited)."""
        cached = self._summaries
        out = []
        for name in self.service_names():
            summary = cached.get(name)
            if summary is None:
                summary = cached[name] = self._summary(name)
            out.append(summary)
        return out

    def service_names(self) -> list[str]:
        """The names of services with at least one instance, in order (kept)."""
        if self._service_names is None:
            self._service_names = sorted(self._by_service)
        return self._service_names

    def _summary(self, name: str) -> ServiceSummary:
        c = self._counts[name]
        return ServiceSummary(
            name=name,
            instances=len(self._by_service[name]),
            passing=c.status[Status.PASSING],
            warning=c.status[Status.WARNING],
            critical=c.status[Status.CRITICAL],
            unknown=c.status[Status.UNKNOWN],
            maintenance=c.maintenance,
            tags=sorted(c.tags),
            versions=sorted(c.versions),
            kinds=sorted(c.kinds, key=lambda k: k.value),
        )

    def node(self, node_id: str) -> Node | None:
        """One node as ``nodes()`` lists it (registered, or named by instances)."""
        view = self._node_views.get(node_id)
        if view is None:
            registered = self._others["node"].get(node_id)
            if registered is None and node_id not in self._by_node:
                return None
            view = self._node_views[node_id] = self._node_view(node_id, registered)
        return view

    def node_as_seen(self, node: Node, visible: Callable[[Instance], bool]) -> Node | None:
        """``node`` as a reader who sees only the ``visible`` instances finds it: its
        count, and an unregistered node's address, from those alone; None for an
        unregistered node none of whose instances it sees (the node exists only through
        what it may not read)."""
        seen = [i for i in self.node_instances(node.id) if visible(i)]
        if not node.registered and not seen:
            return None
        address = node.address if node.registered else seen[0].address
        if len(seen) == node.instances and address == node.address:
            return node
        return msgspec.structs.replace(node, instances=len(seen), address=address)

    def nodes_as_seen(self, visible: Callable[[Instance], bool] | None) -> list[Node]:
        """``nodes()`` as a reader who sees only the ``visible`` instances finds them
        (``node_as_seen`` each; None: a reader who sees every instance)."""
        if visible is None:
            return self.nodes()
        return [s for n in self.nodes() if (s := self.node_as_seen(n, visible)) is not None]

    def _facts(self, node_id: str) -> _NodeFacts | None:
        """The node's facts, recounted over its own instances if a removal made them
        stale."""
        facts = self._node_facts.get(node_id)
        if facts is not None and facts.stale:
            facts.stale = False
            facts.first = None
            facts.last_seen = 0.0
            for iid in self._by_node.get(node_id, ()):
                inst = self._by_id[iid]
                facts.last_seen = max(facts.last_seen, inst.updated_at)
                here = (inst.service, iid)
                if facts.first is None or here < facts.first:
                    facts.first = here
        return facts

    def _node_view(self, node_id: str, registered: Entry | None) -> Node:
        facts = self._facts(node_id)
        hosted = len(self._by_node.get(node_id, ()))
        last_seen = facts.last_seen if facts is not None else 0.0
        if isinstance(registered, Node):
            return Node(
                id=node_id,
                address=registered.address,
                meta=registered.meta,
                lease=registered.lease,
                status=registered.status,
                registered=True,
                instances=hosted,
                registered_at=registered.registered_at,
                updated_at=registered.updated_at,
                last_seen=max(registered.last_seen, last_seen),
            )
        first = facts.first if facts is not None else None
        return Node(
            id=node_id,
            address=self._by_id[first[1]].address if first is not None else None,
            status=NodeStatus.ALIVE,
            registered=False,
            instances=hosted,
            last_seen=last_seen,
        )

    def node_names(self) -> list[str]:
        """Registered nodes and nodes instances name, in order (kept)."""
        if self._node_names is None:
            self._node_names = sorted(self._others["node"].keys() | self._by_node.keys())
        return self._node_names

    def nodes(self) -> list[Node]:
        """Registered nodes, and nodes that instances name but nobody registered (marked
        ``registered: false``), ordered by id."""
        registered = self._others["node"]
        cached = self._node_views
        out = []
        for i in self.node_names():
            view = cached.get(i)
            if view is None:
                view = cached[i] = self._node_view(i, registered.get(i))
            out.append(view)
        return out

    def status_counts(self) -> Iterator[tuple[str, dict[Status, int]]]:
        """Each service's instances by effective status (kept counts: O(services))."""
        for name in self.service_names():
            yield name, self._counts[name].status

    def node_status_counts(self) -> dict[NodeStatus, int]:
        """Nodes by status; nodes that instances name but nobody registered are alive."""
        out = dict.fromkeys(NodeStatus, 0)
        registered = self._others["node"]
        for node in registered.values():
            if isinstance(node, Node):
                out[node.status] += 1
        out[NodeStatus.ALIVE] += sum(1 for n in self._by_node if n not in registered)
        return out

    def nodes_revision(self) -> int:
        """The revision of the last change that could alter ``nodes()``."""
        return max(self._kind_rev["node"], self._kind_rev["instance"])

    def service_count(self) -> int:
        """How many services have at least one instance."""
        return len(self._by_service)

    def node_count(self) -> int:
        """How many nodes are registered or host at least one instance."""
        return len(self.node_names())

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


_K = TypeVar("_K")


def _discard(index: dict[_K, set[str]], key: _K, iid: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(iid)
        if not ids:
            del index[key]


def domain_key(domain: str) -> str:
    """A custom domain as the catalog indexes it: lower case, no final dot."""
    return domain.rstrip(".").lower()


def _order(inst: Instance) -> tuple[str, str]:
    return (inst.service, inst.id)
