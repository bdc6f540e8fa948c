"""When each TTL instance next needs attention, with no I/O and no clock of its own.

A TTL instance is due either when its heartbeat window closes (it must go critical) or,
once critical, when ``deregister_after`` has passed (it must be removed). The registry
asks ``pop_due(now)`` on every tick: a heap makes that O(log n) per due instance instead
of a scan of every TTL instance every tick. Entries are invalidated lazily: only the
latest time set for an id counts.
"""

from __future__ import annotations

import heapq


class TtlTimers:
    """Due times by instance id, popped in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def set(self, instance_id: str, when: float) -> None:
        """Make ``instance_id`` due at ``when`` (replacing any earlier time)."""
        self._due[instance_id] = when
        heapq.heappush(self._heap, (when, instance_id))
        # Stale entries pile up under heartbeat storms; rebuild when they dominate.
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._due):
            self._heap = [(t, i) for i, t in self._due.items()]
            heapq.heapify(self._heap)

    def forget(self, instance_id: str) -> None:
        """Stop tracking ``instance_id`` (deregistered, or no longer has a ttl)."""
        self._due.pop(instance_id, None)

    def due(self, instance_id: str) -> float | None:
        """The time ``instance_id`` is due, if tracked."""
        return self._due.get(instance_id)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._due

    def __len__(self) -> int:
        return len(self._due)

    def pop_due(self, now: float) -> list[str]:
        """The ids due at or before ``now``, earliest first; they are no longer tracked."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, iid = heapq.heappop(heap)
            if self._due.get(iid) == when:
                del self._due[iid]
                out.append(iid)
        return out
