"""The server's own check runner: the checks of instances registered through the API.

Instances an agent registered (``agent``) are checked by that agent only; every other
instance with checks of its own, or of its service config's template, is checked here.
The host follows the catalog (every applied batch, and every re-list), so what runs is
always what is registered; results go back through ``Registry.report_health``. Servers
sharing one store (etcd) split the instances between them (``Members``): each
instance's checks run on one server, and move when the set of servers changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import Literal

from waypost.aio import cancel_all
from waypost.errors import Conflict, NotFound
from waypost.health.scheduler import Scheduler
from waypost.members import Members
from waypost.model import CheckRow, CheckState, Event, Instance, ServiceConfig
from waypost.registry import Registry, node_failed
from waypost.store.base import missing

# Instances gone over per turn of the event loop when all are looked at again.
RESCAN_SLICE = 5000

log = logging.getLogger("waypost.checks")


class CheckHost:
    """Keeps a scheduler in step with the catalog; ``close`` stops every check."""

    def __init__(
        self, registry: Registry, *, parallelism: int = 1024, members: Members | None = None
    ) -> None:
        self.registry = registry
        self.members = members
        self.scheduler = Scheduler(
            self._report, parallelism=parallelism, files=registry.check_files
        )
        self._rescan: asyncio.Task[None] | None = None
        self._rescan_wanted = False
        registry.listeners.append(self._on_batch)
        if members is not None:
            members.listeners.append(self._on_members)

    def _on_members(self) -> None:
        """The servers changed: take up or let go of instances accordingly."""
        self._on_batch(None)

    def _runner(self, inst: Instance) -> str | None:
        return self.members.owner(inst.id) if self.members is not None else None

    def owns(self, inst: Instance) -> bool:
        return self.members is None or self.members.owns(inst.id)

    async def _report(self, instance_id: str, states: tuple[CheckState, ...]) -> None:
        try:
            await self.registry.report_health(instance_id, states)
        except NotFound:
            self.scheduler.remove_instance(instance_id)  # deregistered meanwhile

    def _on_batch(self, batch: Sequence[Event] | None) -> None:
        catalog = self.registry.catalog
        if batch is None:
            # Everything may have changed (a load, a re-list, servers came or went): go
            # over every instance, a slice per turn of the event loop.
            self._rescan_wanted = True
            if self._rescan is None or self._rescan.done():
                self._rescan = asyncio.get_running_loop().create_task(
                    self._rescan_all(), name="waypost-checks-rescan"
                )
            return
        for ev in batch:
            entry = ev.entry
            if isinstance(entry, Instance):
                if ev.type == "delete":
                    self.scheduler.remove_instance(entry.id)
                else:
                    self.consider(entry)
            elif isinstance(entry, ServiceConfig):
                for inst in catalog.service_instances(entry.service):
                    self.consider(inst)

    async def _rescan_all(self) -> None:
        """Take up or let go of every instance's checks, ``RESCAN_SLICE`` instances per
        turn of the event loop: at a million instances one pass would hold the loop for
        a third of a second. Changes meanwhile arrive as batches and are handled there;
        each step looks at the instance as it is now, so the order does not matter."""
        while self._rescan_wanted:
            self._rescan_wanted = False
            try:
                await self._rescan_pass()
            except Exception:  # a bug: say so, and let the next change try again
                log.exception("rescanning the checks of every instance failed")

    async def _rescan_pass(self) -> None:
        """One pass of ``_rescan_all``."""
        catalog = self.registry.catalog
        # Services whose config gives their instances a check template: every other
        # instance without checks of its own is passed over at once.
        templated = {
            e.service
            for e in catalog.entries("service_config")
            if isinstance(e, ServiceConfig) and e.check is not None
        }
        ids = catalog.instance_ids()
        for n, iid in enumerate(ids):
            if n % RESCAN_SLICE == RESCAN_SLICE - 1:
                await asyncio.sleep(0)
            inst = catalog.get(iid)
            if inst is None:
                continue
            if inst.agent or (not inst.checks and inst.service not in templated):
                if iid in self.scheduler:
                    self.scheduler.remove_instance(iid)
                continue
            self.consider(inst)
        for n, iid in enumerate(self.scheduler.instances()):
            if n % RESCAN_SLICE == RESCAN_SLICE - 1:
                await asyncio.sleep(0)
            inst = catalog.get(iid)
            if inst is None:
                self.scheduler.remove_instance(iid)

    def consider(self, inst: Instance) -> bool:
        """Check ``inst`` here if it should be; True when it is."""
        # Cheapest tests first: a load considers every instance, most with no checks.
        checks = [] if inst.agent else [c for c in self.registry.checks_of(inst) if c.kind != "ttl"]
        if not checks or node_failed(inst) or not self.owns(inst):
            if inst.id in self.scheduler:
                self.scheduler.remove_instance(inst.id)
            return False
        self.scheduler.set_instance(inst.id, checks, inst.health)
        return True

    async def run_now(self, instance_id: str) -> Instance:
        """Run an instance's checks now; the instance as they left it."""
        inst = self.registry.catalog.get(instance_id)
        if inst is None:
            raise missing("instance", instance_id)
        if inst.agent:
            raise Conflict(
                f"instance {instance_id!r} is checked by the agent of node {inst.node!r}",
                field="id",
            )
        if instance_id not in self.scheduler:
            checks = [c for c in self.registry.checks_of(inst) if c.kind != "ttl"]
            if self.owns(inst) or not checks or node_failed(inst):
                raise Conflict(f"instance {instance_id!r} has no checks to run", field="id")
            # Another server runs them: run them here once, as asked.
            self.scheduler.set_instance(instance_id, checks, inst.health)
            try:
                await self.scheduler.run_now(instance_id)
            finally:
                self.consider(self.registry.catalog.get(instance_id) or inst)
            return self.registry.catalog.get(instance_id) or inst
        await self.scheduler.run_now(instance_id)
        return self.registry.catalog.get(instance_id) or inst

    async def run_matching(self, service: str | None, node: str | None) -> list[Instance]:
        """Run the checks of every instance this server checks of a service and/or node."""
        return [
            await self.run_now(inst.id)
            for inst in self._matching(service, node)
            if inst.id in self.scheduler
            or (
                not inst.agent
                and not self.owns(inst)
                and not node_failed(inst)
                and any(c.kind != "ttl" for c in self.registry.checks_of(inst))
            )
        ]

    def _matching(self, service: str | None, node: str | None) -> Iterator[Instance]:
        """The catalog's instances of ``service`` and/or on ``node`` (None: any)."""
        if service is not None:
            found = self.registry.catalog.service_instances(service)
        elif node is not None:
            found = self.registry.catalog.node_instances(node)
        else:
            found = self.registry.catalog.all()
        return (i for i in found if node is None or i.node == node)

    def rows(self, service: str | None = None, node: str | None = None) -> list[CheckRow]:
        """Every check of the matching instances: live for those run here, stored
        otherwise."""
        out = []
        for inst in self._matching(service, node):
            live = {s.name: s for s in self.scheduler.states(inst.id)}
            checks = {
                str(c.name) if isinstance(c.name, str) else c.kind: c
                for c in self.registry.checks_of(inst)
            }
            runs_on: Literal["server", "agent", "registry"]
            # Every check (one not run yet too), then the registry's own states.
            stored_by_name = {s.name: s for s in inst.health}
            states = [
                stored_by_name.get(name) or CheckState(name=name, kind=c.kind, output="not run yet")
                for name, c in checks.items()
            ]
            states += [s for s in inst.health if s.name not in checks]
            for stored in states:
                state = live.get(stored.name, stored)
                check = checks.get(stored.name)
                if state.name in live:
                    runs_on = "server"
                elif inst.agent and check is not None:
                    runs_on = "agent"
                elif check is not None and check.kind != "ttl" and not self.owns(inst):
                    runs_on = "server"  # another server of the cluster runs it
                else:
                    runs_on = "registry"  # TTL and node states: the registry keeps them
                out.append(
                    CheckRow(
                        instance=inst.id,
                        service=inst.service,
                        node=inst.node,
                        name=state.name,
                        kind=state.kind or (check.kind if check else ""),
                        target=check.target if check is not None else "",
                        interval=check.interval
                        if check is not None and check.kind != "ttl"
                        else (str(check.ttl) if check is not None else ""),
                        status=state.status,
                        output=state.output,
                        flapping=state.flapping,
                        successes=state.successes,
                        failures=state.failures,
                        last_run=state.last_run,
                        changed_at=state.changed_at,
                        runs_on=runs_on,
                        server=self._runner(inst) if runs_on == "server" else None,
                    )
                )
        return out

    async def close(self) -> None:
        if self._on_batch in self.registry.listeners:
            self.registry.listeners.remove(self._on_batch)
        if self._rescan is not None:
            await cancel_all([self._rescan])
            self._rescan = None
        await self.scheduler.close()
