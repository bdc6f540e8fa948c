"""Consul's HTTP API under ``/v1/`` on the same port: the endpoints Consul's own clients
use (py-consul, python3-consul, the npm ``consul`` package, Prometheus' and Traefik's
Consul providers), over the same registry the native API serves.

This server is the "agent": services registered through ``/v1/agent/`` live on its node
(``--node``); ``/v1/catalog/`` and ``/v1/health/`` see every instance, whoever registered
it. Blocking queries take Consul's ``index`` and ``wait``; every read answers
``X-Consul-Index`` (a registry revision: never 0, never going back across restarts).
Errors are plain text, as Consul's.
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from aiohttp import web

from waypost._version import __version__
from waypost.acl import READ, WRITE, Authorizer
from waypost.api.acl import AclGate, hidden_id
from waypost.api.blocking import BlockingQueries, Key
from waypost.catalog import Catalog
from waypost.consul import mapping as cm
from waypost.consul.filter import FilterError, compile_filter
from waypost.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    WaypostError,
)
from waypost.model import (
    MAX_KV_KEY_LEN,
    MAX_KV_VALUE_BYTES,
    Check,
    Instance,
    Kind,
    KVPair,
    Node,
    NodeStatus,
    Query,
    Status,
    validate_instance,
)
from waypost.registry import Registry

_encode = msgspec.json.Encoder().encode
JSON = "application/json"
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
# Encoded service answers kept (per path, service, parameters and authorizer); past this
# many the memo starts over.
MAX_ANSWERS = 4096
# Query parameters that do not change a service answer's body.
_NOT_IN_BODY = frozenset({"index", "wait", "token", "dc", "stale", "consistent", "cached"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NotSupported(WaypostError):
    """A Consul feature Waypost does not have."""

    code = "not_supported"
    http_status = 501


class NoPathToDatacenter(WaypostError):
    """A ``dc`` other than ours: Consul answers 500 with this text."""

    code = "no_path_to_datacenter"
    http_status = 500


class ConsulApi:
    """The ``/v1/`` endpoints of one server."""

    def __init__(
        self,
        registry: Registry,
        blocking: BlockingQueries,
        *,
        node: str,
        address: str,
        gate: AclGate,
        max_wait_s: float,
    ) -> None:
        self.registry = registry
        self.catalog: Catalog = registry.catalog
        self.blocking = blocking
        self.node = node
        self.address = address
        self.gate = gate
        self.max_wait_s = min(max_wait_s, MAX_WAIT_S)
        # Service answers encoded once per (what they read, revision) and shared by every
        # request and woken blocking query until the service or a node view changes:
        # they were rebuilt for every request (40x the native answer's cost).
        self._answers: dict[tuple[Any, ...], tuple[tuple[int, int], bytes]] = {}

    # --- plumbing ------------------------------------------------------------------------

    def _index(self) -> int:
        return max(1, self.catalog.revision)

    def _headers(self, index: int) -> dict[str, str]:
        return {
            "Content-Type": JSON,
            "X-Consul-Index": str(max(1, index)),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
            "X-Consul-Effective-Consistency": "leader",
        }

    def _json(self, data: object, index: int | None = None) -> web.Response:
        return web.Response(
            body=_encode(data), headers=self._headers(self._index() if index is None else index)
        )

    def _service_answer(
        self, request: web.Request, what: str, name: str, build: Callable[[], object]
    ) -> bytes:
        """``build()`` encoded, kept while service ``name`` and the node views are
        unchanged, per parameter set and authorizer (a new one after any ACL change)."""
        params = tuple(sorted((k, v) for k, v in request.query.items() if k not in _NOT_IN_BODY))
        key = (what, name, params, self._az(request))
        cat = self.catalog
        rev = (cat.service_revision(cm.local_label(name)), cat.nodes_revision())
        got = self._answers.get(key)
        if got is not None and got[0] == rev:
            return got[1]
        body = _encode(build())
        if len(self._answers) >= MAX_ANSWERS:
            self._answers.clear()
        self._answers[key] = (rev, body)
        return body

    def _authorize(self, request: web.Request) -> Authorizer:
        """Before a write: the token (as Consul clients give it) resolves and is within
        its rate (each write then checks its own resource)."""
        return self.gate.check_write(request)

    def _az(self, request: web.Request) -> Authorizer:
        return self.gate.authz(request)

    def _readable(self, request: web.Request, insts: Iterable[Instance]) -> list[Instance]:
        authz = self._az(request)
        if authz.reads_instances():
            return list(insts)
        return [i for i in insts if authz.can_read_instance(i)]

    def _writable(self, request: web.Request, inst: Instance, missing: WaypostError) -> None:
        """A write to ``inst``: as missing when the token may not read it, else its rule."""
        authz = self._az(request)
        if authz.writes_instances():
            return
        if not authz.can_read_instance(inst):
            raise missing
        self.gate.require_instance(request, WRITE, inst)

    def _node_readable(self, request: web.Request, name: str) -> bool:
        return self._az(request).can(READ, "node", name)

    def _wait_s(self, request: web.Request) -> float:
        text = request.query.get("wait", "")
        if not text:
            return min(DEFAULT_WAIT_S, self.max_wait_s)
        try:
            return min(cm.go_duration_s(text, "wait"), self.max_wait_s)
        except InvalidInput:
            raise cm.ConsulInputError(f"Invalid wait time: {text!r}") from None

    def _blocking_index(self, request: web.Request) -> int | None:
        return _counter(request, "index", "index")

    def _datacenter(self, request: web.Request) -> None:
        dc = request.query.get("dc", "")
        if dc and dc != cm.DATACENTER:
            raise NoPathToDatacenter("No path to datacenter")

    async def _block(self, request: web.Request, key: Key | None) -> int:
        """Wait as a blocking query asks (``index``, ``wait``); the index to answer."""
        self._datacenter(request)
        index = self._blocking_index(request)
        if index is None and key is not None:
            return self.blocking.cache_index(key)
        if index is None:
            return self._index()
        accessor = self.gate.limit_key(request, self._az(request))
        limits = self.gate.limits
        limits.open_watch(accessor)  # the token's cap on open watches
        try:
            if key is not None:
                ans = await self.blocking.wait(key, index, self._wait_s(request))
                return ans.index
            if index >= self.catalog.revision:
                wait_s = self._wait_s(request)
                await self.catalog.wait_for_revision(
                    index + 1, wait_s + random.uniform(0, wait_s / 16)
                )
            return self._index()
        finally:
            limits.close_watch(accessor)

    def _selected(self, request: web.Request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` that pass the request's ``filter`` and ``node-meta`` (``key:value``,
        repeat for all of several)."""
        text = request.query.get("filter")
        pred = None
        if text is not None:
            try:
                pred = compile_filter(text)
            except FilterError as exc:
                raise cm.ConsulInputError(
                    f"Failed to create boolean expression evaluator: {exc}"
                ) from None
        wanted = []
        for pair in request.query.getall("node-meta", []):
            key, sep, value = pair.partition(":")
            if not sep or not key:
                raise cm.ConsulInputError(f"Invalid node-meta {pair!r}: use key:value")
            wanted.append((key, value))
        if pred is None and not wanted:
            return rows
        nodes = self._nodes(request) if wanted else {}
        out = []
        for row in rows:
            if pred is not None and not pred(row):
                continue
            if wanted:
                meta = self._row_node_meta(row, nodes)
                if any(meta.get(k) != v for k, v in wanted):
                    continue
            out.append(row)
        return out

    def _row_node_meta(self, row: dict[str, Any], nodes: dict[str, Node]) -> dict[str, str]:
        if isinstance(row.get("NodeMeta"), dict):
            return dict(row["NodeMeta"])
        node = row.get("Node")
        if isinstance(node, dict):
            return dict(node.get("Meta") or {})
        if isinstance(node, str):
            found = nodes.get(node)
            return dict(found.meta) if found is not None else {}
        return dict(row.get("Meta") or {})

    # --- nodes ---------------------------------------------------------------------------

    def _node_of(self, inst: Instance) -> str:
        return inst.node or self.node

    def _nodes(self, request: web.Request) -> dict[str, Node]:
        """The nodes as the request's token sees them: every node (Consul's node views
        are filtered per node where listed), each counted and addressed by the instances
        the token may read, so a hidden instance lends no node its address."""
        authz = self._az(request)
        visible = None if authz.reads_instances() else authz.can_read_instance
        return {n.id: n for n in self.catalog.nodes_as_seen(visible)}

    def _node_json(self, name: str, nodes: dict[str, Node], fallback: str = "") -> dict[str, Any]:
        node = nodes.get(name)
        address = node.address if node is not None and node.address else ""
        if not address:
            address = self.address if name == self.node else fallback or self.address
        meta = node.meta if node is not None else {}
        return cm.consul_node(name, address, meta)

    def _known(self, name: str, nodes: dict[str, Node]) -> bool:
        """Whether Consul's view has node ``name``: a known node, or this server's own."""
        return name in nodes or name == self.node

    def _node_status(self, name: str, nodes: dict[str, Node]) -> NodeStatus:
        node = nodes.get(name)
        return node.status if node is not None else NodeStatus.ALIVE

    def _services(self) -> list[Instance]:
        return [i for i in self.catalog.instances() if cm.is_consul_service(i)]

    @staticmethod
    def _unknown(consul_id: str) -> NotFound:
        return NotFound(f'Unknown service ID "{consul_id}". Ensure that the service ID is '
                        "passed, not the service name.")  # fmt: skip

    def _find(self, consul_id: str) -> Instance:
        inst = self.catalog.get(cm.local_label(consul_id))
        if inst is None or cm.consul_id(inst) != consul_id:
            raise self._unknown(consul_id)
        return inst

    # --- agent ---------------------------------------------------------------------------

    async def agent_self(self, request: web.Request) -> web.StreamResponse:
        self.gate.require(request, READ, "agent")
        nodes = self._nodes(request)
        me = self._node_json(self.node, nodes)
        return self._json(
            {
                "Config": {
                    "Datacenter": cm.DATACENTER,
                    "PrimaryDatacenter": cm.DATACENTER,
                    "NodeName": self.node,
                    "NodeID": "",
                    "Revision": "waypost",
                    "Server": True,
                    "Version": f"1.20.0+waypost.{__version__}",
                },
                "DebugConfig": {},
                "Coord": None,
                "Member": self._member(me["Address"]),
                "Stats": {
                    "consul": {
                        "leader": "true",
                        "leader_addr": f"{me['Address']}:8300",
                        "server": "true",
                        "known_datacenters": "1",
                    },
                    "waypost": {"version": __version__, "revision": str(self.catalog.revision)},
                },
                "Meta": {},
                "xDS": None,
            }
        )

    def _on_node(self, node: str) -> list[Instance]:
        """The Consul services on one node, by ID (the node's own index: no scan)."""
        found = (i for i in self.catalog.node_instances(node) if cm.is_consul_service(i))
        return sorted(found, key=cm.consul_id)

    def _local(self) -> list[Instance]:
        return self._on_node(self.node)

    async def agent_services(self, request: web.Request) -> web.StreamResponse:
        local = self._readable(request, self._local())
        rows = self._selected(request, [cm.agent_service(i) for i in local])
        return self._json({row["ID"]: row for row in rows})

    async def agent_service(self, request: web.Request) -> web.StreamResponse:
        inst = self._find(request.match_info["id"])
        if not self._readable(request, [inst]):
            raise self._unknown(request.match_info["id"])
        return self._json(cm.agent_service(inst))

    async def agent_checks(self, request: web.Request) -> web.StreamResponse:
        rows = []
        if self._node_readable(request, self.node):
            rows = [c for c in self._node_checks(self.node, self._nodes(request))
                    if c["CheckID"] != cm.SERF_CHECK]  # fmt: skip
        local = self._readable(request, self._local())
        rows += [c for inst in local for c in cm.service_checks(inst, self.node)]
        out = {c["CheckID"]: c for c in self._selected(request, rows)}
        return self._json(dict(sorted(out.items())))

    async def register(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        body = await request.read()
        nodes = self._nodes(request)
        address = self._node_json(self.node, nodes)["Address"]
        inst = cm.registration(body, node=self.node, node_address=address)
        self.gate.require_instance(request, WRITE, inst)
        old = self.catalog.get(inst.id)
        if old is not None:
            self._writable(request, old, hidden_id(self._az(request), cm.consul_id(inst)))
        if old is not None and cm.consul_id(old) != cm.consul_id(inst):
            raise Conflict(f"service ID {cm.consul_id(inst)!r} collides with {old.id!r}")
        replace = request.query.get("replace-existing-checks", "").lower() in ("1", "true")
        if old is not None and not replace:
            # As Consul: checks the registration leaves out stay (added by check/register).
            names = {c.name for c in inst.checks}
            kept = [c for c in old.checks if c.name not in names]
            if kept:
                meta = dict(inst.meta)
                for check in kept:
                    key = cm.check_meta_key(str(check.name))
                    if key in old.meta:
                        meta[key] = old.meta[key]
                inst = self._with_checks(inst, (*inst.checks, *kept), meta)
        await self.registry.register(inst)
        return web.Response(text="", content_type="text/plain")

    def _with_checks(
        self, inst: Instance, checks: tuple[Check, ...], meta: dict[str, str]
    ) -> Instance:
        """``inst`` with these checks (a TTL one sets its ``ttl``, as a registration's
        would), checked as a registration is."""
        ttl = next((c.ttl for c in checks if isinstance(c.ttl, str)), None)
        changed = msgspec.structs.replace(inst, checks=checks, meta=meta, ttl=ttl)
        try:
            return validate_instance(changed)
        except WaypostError as exc:
            raise cm.ConsulInputError(f"Invalid check: {exc}") from None

    async def check_register(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        service_id, raw_check, status, extra = cm.check_registration(await request.read())
        inst = self._find(service_id)
        self._writable(request, inst, self._unknown(service_id))
        try:
            check = msgspec.convert(raw_check, Check)
        except msgspec.ValidationError as exc:
            raise cm.ConsulInputError(f"Invalid check: {exc}") from None
        checks = tuple(c for c in inst.checks if c.name != check.name)
        meta = dict(inst.meta)
        if extra is not None:
            meta[cm.check_meta_key(str(check.name))] = extra
        new = self._with_checks(inst, (*checks, check), meta)
        if isinstance(check.ttl, str) and status != "passing":
            new = msgspec.structs.replace(new, status=Status(status))
        await self.registry.register(new)
        return web.Response(text="", content_type="text/plain")

    async def check_deregister(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        check_id = request.match_info["id"]
        for inst in self._readable(request, self._local()):
            if any(c.name == check_id for c in inst.checks):
                self._writable(request, inst, NotFound(check_id))
                checks = tuple(c for c in inst.checks if c.name != check_id)
                meta = dict(inst.meta)
                meta.pop(cm.check_meta_key(check_id), None)
                await self.registry.register(self._with_checks(inst, checks, meta))
                return web.Response(text="", content_type="text/plain")
        raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                       "not the check name.")  # fmt: skip

    async def deregister(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        inst = self._find(request.match_info["id"])
        self._writable(request, inst, self._unknown(request.match_info["id"]))
        await self.registry.deregister(inst.id)
        return web.Response(text="", content_type="text/plain")

    def _check_target(self, check_id: str) -> Instance:
        """The instance a Consul CheckID belongs to (``service:<id>[:N]``, or a check's
        own id on an instance of this agent)."""
        if check_id.startswith("service:"):
            rest = check_id[len("service:") :]
            for sid in (rest, rest.rpartition(":")[0]):
                if not sid:
                    continue
                inst = self.catalog.get(cm.local_label(sid))
                if inst is not None and cm.consul_id(inst) == sid:
                    return inst
        for inst in self._local():
            if any(s.name == check_id for s in inst.health):
                return inst
        raise NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                       "not the check name.")  # fmt: skip

    def ttl_update(self, status: Status) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            self._authorize(request)
            check_id = request.match_info["id"]
            inst = self._check_target(check_id)
            self._writable(request, inst, NotFound(f'Unknown check ID "{check_id}"'))
            if not inst.ttl:
                raise cm.ConsulInputError(f'Check "{check_id}" is not a TTL check')
            note = request.query.get("note", "")
            if request.method == "PUT" and request.can_read_body:
                raw = await request.read()
                if raw.strip():
                    try:
                        got = cm.folded(msgspec.json.decode(raw), "body")
                    except msgspec.DecodeError as exc:
                        raise cm.ConsulInputError(f"Request decode failed: {exc}") from None
                    note = str(got.get("output") or note)
                    given = str(got.get("status") or "")
                    if given:
                        if given not in ("passing", "warning", "critical"):
                            raise cm.ConsulInputError(f"Invalid status: {given!r}")
                        await self.registry.heartbeat(inst.id, Status(given), note)
                        return web.Response(text="", content_type="text/plain")
            await self.registry.heartbeat(inst.id, status, note)
            return web.Response(text="", content_type="text/plain")

        return handler

    async def maintenance(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        inst = self._find(request.match_info["id"])
        self._writable(request, inst, self._unknown(request.match_info["id"]))
        enable = _parse_bool(request.query.get("enable", ""))
        reason = request.query.get("reason", "")
        await self.registry.set_maintenance(inst.id, enable, reason)
        return web.Response(text="", content_type="text/plain")

    def _member(self, address: str) -> dict[str, Any]:
        """This server as a member of Consul's gossip pool (there is none: just itself)."""
        return {
            "Name": self.node,
            "Addr": address,
            "Port": 8301,
            "Tags": {"dc": cm.DATACENTER, "role": "consul", "build": "waypost"},
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        }

    async def members(self, request: web.Request) -> web.StreamResponse:
        if not self._node_readable(request, self.node):
            return self._json([])  # as Consul: members filtered by node read
        me = self._node_json(self.node, self._nodes(request))
        member = self._member(me["Address"])
        if request.query.get("wan") not in (None, "", "0", "false"):
            member = {**member, "Name": f"{self.node}.{cm.DATACENTER}", "Port": 8302}
        return self._json([member])

    async def node_maintenance(self, request: web.Request) -> web.StreamResponse:
        """Consul's node maintenance: this server's node gets a ``_node_maintenance``
        check, and each of its services goes into maintenance (so the native API and DNS
        leave them out too); ending it takes out only the services it put in."""
        self._authorize(request)
        self.gate.require(request, WRITE, "node", self.node)
        enable = _parse_bool(request.query.get("enable", ""))
        reason = request.query.get("reason", "") or "Maintenance mode is enabled for this node"
        node = self.catalog.entry("node", self.node)
        base = node if isinstance(node, Node) else Node(id=self.node, address=self.address)
        meta = dict(base.meta)
        marker = f"{cm.NODE_MAINT_REASON}{reason}"
        if enable:
            meta[cm.META_NODE_MAINT] = reason
        else:
            meta.pop(cm.META_NODE_MAINT, None)
        await self.registry.register_node(msgspec.structs.replace(base, meta=meta))
        for inst in self._local():
            if enable and not inst.maintenance:
                await self.registry.set_maintenance(inst.id, True, marker)
            elif not enable and inst.maintenance_reason.startswith(cm.NODE_MAINT_REASON):
                await self.registry.set_maintenance(inst.id, False, "")
        return web.Response(text="", content_type="text/plain")

    async def acl_disabled(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=401, text="ACL support disabled", content_type="text/plain")

    # --- catalog -------------------------------------------------------------------------

    async def catalog_services(self, request: web.Request) -> web.StreamResponse:
        index = await self._block(request, ("services", None))
        # From the kept per-service summaries: O(services), not O(instances).
        out: dict[str, list[str]] = {}
        authz = self._az(request)
        for summary in self.catalog.services():
            if Kind.SERVICE not in summary.kinds:
                continue
            if not authz.can(READ, "service", summary.name):
                continue
            name = summary.name
            first = self.catalog.service_instances(name)
            if first and cm.META_NAME in first[0].meta:
                name = cm.consul_name(first[0])
            out.setdefault(name, []).extend(summary.tags)
        return self._json({k: sorted(set(out[k])) for k in sorted(out)}, index)

    def _of_service(self, request: web.Request) -> tuple[str, Key]:
        name = request.match_info["name"]
        return name, ("instances", Query(service=cm.local_label(name)))

    def _filtered(self, request: web.Request, name: str) -> list[Instance]:
        if request.query.get("peer"):
            return []  # no cluster peering: a peer's services are none
        tags = [t.lower() for t in request.query.getall("tag", [])]
        out = []
        for inst in self.catalog.service_instances(cm.local_label(name)):
            if cm.consul_name(inst) != name or not cm.is_consul_service(inst):
                continue
            lowered = {t.lower() for t in inst.tags}
            if all(t in lowered for t in tags):
                out.append(inst)
        out.sort(key=cm.consul_id)
        return self._readable(request, out)

    def _indexed(self, inst: Instance, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with the instance's Create/ModifyIndex (its revision in the registry)."""
        rev = self.catalog.mod_revision(inst.id) or self._index()
        data["CreateIndex"] = data["ModifyIndex"] = rev
        return data

    async def catalog_service(self, request: web.Request) -> web.StreamResponse:
        name, key = self._of_service(request)
        index = await self._block(request, key)

        def build() -> object:
            nodes = self._nodes(request)
            rows = [
                self._indexed(
                    i, cm.catalog_row(i, self._node_json(self._node_of(i), nodes, i.address))
                )
                for i in self._filtered(request, name)
            ]
            return self._selected(request, rows)

        body = self._service_answer(request, "catalog", name, build)
        return web.Response(body=body, headers=self._headers(index))

    async def catalog_nodes(self, request: web.Request) -> web.StreamResponse:
        index = await self._block(request, ("nodes", None))
        nodes = self._nodes(request)
        names = set(nodes) | {self.node}
        rows = [self._node_json(n, nodes) for n in sorted(names) if self._node_readable(request, n)]
        return self._json(self._selected(request, rows), index)

    async def catalog_node(self, request: web.Request) -> web.StreamResponse:
        index = await self._block(request, None)
        name = request.match_info["node"]
        nodes = self._nodes(request)
        if not self._known(name, nodes) or not self._node_readable(request, name):
            return web.Response(body=b"null", headers=self._headers(index))
        on_node = self._readable(request, self._on_node(name))
        services = {cm.consul_id(i): cm.agent_service(i) for i in on_node}
        return self._json({"Node": self._node_json(name, nodes), "Services": services}, index)

    async def datacenters(self, request: web.Request) -> web.StreamResponse:
        return self._json([cm.DATACENTER])

    # --- health --------------------------------------------------------------------------

    def _node_checks(self, name: str, nodes: dict[str, Node]) -> list[dict[str, Any]]:
        """Consul's node checks: serfHealth, and ``_node_maintenance`` while it is on."""
        out = [cm.serf_check(name, self._node_status(name, nodes))]
        node = nodes.get(name)
        if node is not None and cm.META_NODE_MAINT in node.meta:
            out.append(cm.node_maintenance_check(name, node.meta[cm.META_NODE_MAINT]))
        return out

    def _entry_checks(self, inst: Instance, nodes: dict[str, Node]) -> list[dict[str, Any]]:
        node = self._node_of(inst)
        return [*self._node_checks(node, nodes), *cm.service_checks(inst, node)]

    async def health_service(self, request: web.Request) -> web.StreamResponse:
        name, key = self._of_service(request)
        index = await self._block(request, key)
        passing = request.query.get("passing")
        only_passing = passing is not None and passing.lower() in ("", "1", "true")
        if passing is not None and passing.lower() not in ("", "1", "true", "0", "false"):
            raise cm.ConsulInputError(f"Invalid value for ?passing: {passing!r}")

        def build() -> object:
            nodes = self._nodes(request)
            out = []
            for inst in self._filtered(request, name):
                checks = self._entry_checks(inst, nodes)
                if only_passing and any(c["Status"] != "passing" for c in checks):
                    continue
                node = self._node_json(self._node_of(inst), nodes, inst.address)
                service = self._indexed(inst, cm.agent_service(inst))
                out.append({"Node": node, "Service": service, "Checks": checks})
            return self._selected(request, out)

        body = self._service_answer(request, "health", name, build)
        return web.Response(body=body, headers=self._headers(index))

    async def health_checks(self, request: web.Request) -> web.StreamResponse:
        name, key = self._of_service(request)
        index = await self._block(request, key)
        out = []
        for inst in self._filtered(request, name):
            out.extend(cm.service_checks(inst, self._node_of(inst)))
        return self._json(self._selected(request, out), index)

    async def health_state(self, request: web.Request) -> web.StreamResponse:
        state = request.match_info["state"]
        if state not in ("any", "passing", "warning", "critical"):
            raise cm.ConsulInputError(f"Invalid state: {state!r}")
        index = await self._block(request, None)
        nodes = self._nodes(request)
        out = []
        for name in sorted(set(nodes) | {self.node}):
            if self._node_readable(request, name):
                out.extend(self._node_checks(name, nodes))
        services = self._readable(request, self._services())
        for inst in sorted(services, key=lambda i: (i.service, cm.consul_id(i))):
            out.extend(cm.service_checks(inst, self._node_of(inst)))
        if state != "any":
            out = [c for c in out if c["Status"] == state]
        return self._json(self._selected(request, out), index)

    async def health_node(self, request: web.Request) -> web.StreamResponse:
        index = await self._block(request, None)
        name = request.match_info["node"]
        nodes = self._nodes(request)
        if not self._known(name, nodes) or not self._node_readable(request, name):
            return self._json([], index)
        out = self._node_checks(name, nodes)
        for inst in self._readable(request, self._on_node(name)):
            out.extend(cm.service_checks(inst, name))
        return self._json(self._selected(request, out), index)

    # --- kv ------------------------------------------------------------------------------

    async def _kv_block(self, request: web.Request) -> int:
        """A KV read's blocking wait: until a key changes (any key: Consul's KV index is
        the table's too), or ``wait`` passes."""
        self._datacenter(request)
        index = self._blocking_index(request)
        if index is not None and index >= self.catalog.kind_revision("kv"):
            wait_s = self._wait_s(request)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s + random.uniform(0, wait_s / 16)
            while self.catalog.kind_revision("kv") <= index:
                left = deadline - loop.time()
                if left <= 0:
                    break
                await self.catalog.wait_for_revision(self.catalog.revision + 1, left)
        return max(1, self.catalog.kind_revision("kv"))

    def _pair_json(self, pair: KVPair) -> dict[str, Any]:
        modified = self.catalog.mod_revision(pair.key, "kv")
        return {
            "LockIndex": 0,
            "Key": pair.key,
            "Flags": pair.flags,
            "Value": pair.value or None,
            "CreateIndex": pair.create_revision or modified,
            "ModifyIndex": modified,
        }

    def _pairs(self, keys: list[str]) -> list[KVPair]:
        out = []
        for key in keys:  # already filtered by what the token may read
            pair = self.catalog.entry("kv", key)
            if isinstance(pair, KVPair):
                out.append(pair)
        return out

    async def kv_get(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        q = request.query
        index = await self._kv_block(request)
        authz = self._az(request)

        def readable(keys: list[str]) -> list[str]:
            if authz.reads_all["key"]:
                return keys
            return [k for k in keys if authz.can(READ, "key", k)]

        if "keys" in q:
            separator = q.get("separator", "")
            found: list[str] = []
            for k in readable(self.catalog.keys_with_prefix("kv", key)):
                if separator:
                    cut = k.find(separator, len(key))
                    if cut >= 0:
                        k = k[: cut + len(separator)]
                if not found or found[-1] != k:
                    found.append(k)
            if not found:
                return web.Response(status=404, headers=self._headers(index))
            return self._json(found, index)
        if "recurse" in q:
            pairs = self._pairs(readable(self.catalog.keys_with_prefix("kv", key)))
        else:
            pairs = self._pairs(readable([key])) if key else []
        if not pairs:
            return web.Response(status=404, headers=self._headers(index))
        if "raw" in q:
            headers = self._headers(index)
            headers["Content-Type"] = "application/octet-stream"
            return web.Response(body=base64.b64decode(pairs[0].value), headers=headers)
        return self._json([self._pair_json(p) for p in pairs], index)

    def _kv_key(self, request: web.Request) -> str:
        key = request.match_info["key"]
        if not key:
            raise cm.ConsulInputError("Missing key name")
        if len(key) > MAX_KV_KEY_LEN or any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
            raise cm.ConsulInputError(
                f"Invalid key: at most {MAX_KV_KEY_LEN} characters, no control characters"
            )
        return key

    def _cas(self, request: web.Request) -> int | None:
        return _counter(request, "cas", "CAS index")

    async def kv_put(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        key = self._kv_key(request)
        self.gate.require(request, WRITE, "key", key)
        if "acquire" in request.query or "release" in request.query:
            raise NotSupported("acquire and release need sessions, which Waypost does not have")
        flags_text = request.query.get("flags", "0")
        try:
            flags = int(flags_text)
        except ValueError:
            raise cm.ConsulInputError(f"Invalid flags: {flags_text!r}") from None
        if not 0 <= flags < 2**64:
            raise cm.ConsulInputError(f"Invalid flags: {flags_text!r}")
        if request.content_length is not None and request.content_length > MAX_KV_VALUE_BYTES:
            raise PayloadTooLarge(f"Value exceeds {MAX_KV_VALUE_BYTES} byte limit")
        body = await request.read()
        if len(body) > MAX_KV_VALUE_BYTES:
            raise PayloadTooLarge(f"Value exceeds {MAX_KV_VALUE_BYTES} byte limit")
        pair = KVPair(key=key, value=base64.b64encode(body).decode(), flags=flags)
        cas = self._cas(request)
        if cas is not None and cas > 0 and self.catalog.mod_revision(key, "kv") != cas:
            return self._json(False)
        try:
            await self.registry.put_kv(pair, cas)
        except Conflict:
            return self._json(False)
        return self._json(True)

    async def kv_delete(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        key = request.match_info["key"]
        cas = self._cas(request)
        if "recurse" in request.query:
            authz = self._az(request)
            if not authz.writes_all["key"]:
                # Key by key: a more specific deny under the prefix holds (one check on
                # the prefix alone once let `key_prefix "" write` delete `secret/`).
                self.gate.require(request, WRITE, "key", key)
                for k in self.catalog.keys_with_prefix("kv", key):
                    if authz.can(WRITE, "key", k):
                        continue
                    if authz.can(READ, "key", k):
                        self.gate.require(request, WRITE, "key", k)  # names the key
                    # A key it may not read is refused without being named.
                    exc = Forbidden(
                        f"Permission denied: token {authz.accessor} may not delete every key "
                        f"under {key!r}",
                        field="token",
                    )
                    self.gate.refused(request, authz, exc)
                    raise exc
            for _ in range(3):
                keys = self.catalog.keys_with_prefix("kv", key)
                if not keys:
                    return self._json(True)
                try:
                    await self.registry.delete_kv(keys)
                    return self._json(True)
                except NotFound:
                    continue  # one went meanwhile: list again
            return self._json(False)
        key = self._kv_key(request)
        self.gate.require(request, WRITE, "key", key)
        if self.catalog.entry("kv", key) is None:
            return self._json(cas is None)  # deleting nothing is done (a CAS fails)
        if cas is not None and self.catalog.mod_revision(key, "kv") != cas:
            return self._json(False)
        try:
            await self.registry.delete_kv([key], cas)
        except (Conflict, NotFound):
            return self._json(cas is None)
        return self._json(True)

    # --- status --------------------------------------------------------------------------

    async def leader(self, request: web.Request) -> web.StreamResponse:
        # The server's address is its node's: shown to a token that may read the node.
        if not self._node_readable(request, self.node):
            return self._json("")
        return self._json(f"{self.address}:8300")

    async def peers(self, request: web.Request) -> web.StreamResponse:
        if not self._node_readable(request, self.node):
            return self._json([])
        return self._json([f"{self.address}:8300"])

    async def not_supported(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            headers={"X-Consul-Index": str(self._index())},
            status=501,
            text=f"{request.method} {request.path}: not supported by Waypost's Consul API; "
            "see docs/consul-compat.md",
            content_type="text/plain",
        )


# Go's strconv.ParseBool, which Consul reads ``enable`` with (py-consul sends "True").
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _parse_bool(value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise cm.ConsulInputError("Missing value for enable")


def _counter(request: web.Request, name: str, what: str) -> int | None:
    """A non-negative integer query parameter (``index``, ``cas``); None when absent."""
    text = request.query.get(name, "")
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise cm.ConsulInputError(f"Invalid {what}: {text!r}") from None
    if value < 0:
        raise cm.ConsulInputError(f"Invalid {what}: {text!r}")
    return value


def _plain_errors(api: ConsulApi, handler: Handler) -> Handler:
    """Consul answers errors as plain text (a read's with its index); so do these."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Unauthorized as exc:  # Consul answers an unknown token 403 "ACL not found"
            text = "ACL not found" if "not found" in exc.message else f"Permission denied: {exc}"
            return web.Response(status=403, text=text, content_type="text/plain")
        except WaypostError as exc:
            headers = {"X-Consul-Index": str(api._index())} if request.method == "GET" else {}
            return web.Response(
                status=exc.http_status, text=str(exc), content_type="text/plain", headers=headers
            )
        except web.HTTPRequestEntityTooLarge as exc:  # a body over the server's 1 MiB
            text = f"Request body too large: {exc.text or exc.reason}"
            return web.Response(status=413, text=text, content_type="text/plain")

    return wrapped


def agent_address(http: str) -> str:
    """The address this server's node has in Consul's answers: the HTTP host, or this
    machine's address when it listens on every interface."""
    host = http.rpartition(":")[0].strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


def add_consul_routes(router: web.UrlDispatcher, api: ConsulApi) -> None:
    """The ``/v1/`` routes (writes take ``PUT``, and ``GET`` as python3-consul sends)."""
    r = router

    def get(path: str, handler: Handler) -> None:
        r.add_get(path, _plain_errors(api, handler), allow_head=False)

    def put(path: str, handler: Handler, also_get: bool = False) -> None:
        r.add_put(path, _plain_errors(api, handler))
        if also_get:
            r.add_get(path, _plain_errors(api, handler), allow_head=False)

    get("/v1/agent/self", api.agent_self)
    get("/v1/agent/services", api.agent_services)
    get("/v1/agent/service/{id}", api.agent_service)
    get("/v1/agent/checks", api.agent_checks)
    put("/v1/agent/service/register", api.register)
    put("/v1/agent/service/deregister/{id}", api.deregister, also_get=True)
    put("/v1/agent/service/maintenance/{id}", api.maintenance)
    put("/v1/agent/check/pass/{id}", api.ttl_update(Status.PASSING), also_get=True)
    put("/v1/agent/check/warn/{id}", api.ttl_update(Status.WARNING), also_get=True)
    put("/v1/agent/check/fail/{id}", api.ttl_update(Status.CRITICAL), also_get=True)
    put("/v1/agent/check/update/{id}", api.ttl_update(Status.PASSING))
    put("/v1/agent/check/register", api.check_register)
    put("/v1/agent/check/deregister/{id}", api.check_deregister, also_get=True)
    get("/v1/catalog/services", api.catalog_services)
    get("/v1/catalog/service/{name}", api.catalog_service)
    get("/v1/catalog/nodes", api.catalog_nodes)
    get("/v1/catalog/node/{node}", api.catalog_node)
    get("/v1/catalog/datacenters", api.datacenters)
    get("/v1/health/service/{name}", api.health_service)
    get("/v1/health/checks/{name}", api.health_checks)
    get("/v1/health/state/{state}", api.health_state)
    get("/v1/health/node/{node}", api.health_node)
    get("/v1/kv/{key:.*}", api.kv_get)
    put("/v1/kv/{key:.*}", api.kv_put)
    r.add_delete("/v1/kv/{key:.*}", _plain_errors(api, api.kv_delete))
    get("/v1/agent/members", api.members)
    put("/v1/agent/maintenance", api.node_maintenance)
    r.add_route("*", "/v1/agent/token/{rest:.*}", api.acl_disabled)
    get("/v1/status/leader", api.leader)
    get("/v1/status/peers", api.peers)
    # Anything else under /v1/ (Connect, sessions, ACLs, prepared queries, ...): 501.
    r.add_route("*", "/v1/{rest:.*}", api.not_supported)
