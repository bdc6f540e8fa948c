"""The node agent: registers its node's services from definition files, runs their
checks, keeps its node alive on one lease, and repairs what the registry lost.

- One lease per node, one keep-alive every third of ``node_ttl`` however many services
  run here. The node entry lives on it; the instances are the agent's (``agent``) and the
  registry holds them alive while the node is: when the lease lapses the node fails,
  its instances go critical and are removed after their ``deregister_critical_after``
  (or ``deregister_after``).
- Checks run in one scheduler; only changes are reported.
- Anti-entropy: on start, after a reconnect, after a lease was lost and every
  ``sync_interval``, what the registry holds for this node is compared with what the
  agent owns, and the difference repaired in one batch (ids are fixed, so never a
  duplicate).
- Definitions reload on file change (polled each second) and on SIGHUP; a bad file is
  reported (log, ``/status``) and nothing changes.
- SIGTERM or SIGINT drains: maintenance at once, ``drain`` later deregistered, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from waypost.agent import definitions
from waypost.aio import cancel_all, until_signalled
from waypost.client import AsyncClient
from waypost.durations import parse_duration
from waypost.errors import InvalidInput, NotFound, Unavailable, WaypostError
from waypost.health.files import CheckFiles
from waypost.health.scheduler import Scheduler
from waypost.model import CheckState, Instance

log = logging.getLogger("waypost.agent")

RELOAD_POLL_S = 1.0
RETRY_MAX_S = 5.0
STATE_FILE = "agent.json"
BATCH_MAX = 1000


class AgentSettings(msgspec.Struct, kw_only=True):
    """How an agent runs (``waypost agent`` flags)."""

    servers: list[str]
    node: str
    config_dir: str
    data_dir: str = ".waypost-agent"
    node_ttl: str = "30s"
    sync_interval: str = "60s"
    drain: str = "5s"
    address: str = "127.0.0.1"
    http: str = "127.0.0.1:0"
    token: str = ""
    # TLS to https:// servers: a CA to trust, and a client certificate (mutual TLS).
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    # Node discovery (instead of, or besides, servers): sources, trust keys, how often
    # the sources are read again, the DNS server for srv: sources.
    join: list[str] = msgspec.field(default_factory=list)
    trust_keys: list[str] = msgspec.field(default_factory=list)
    refresh_interval: str = "60s"
    dns_resolver: str = ""


class SyncInfo(msgspec.Struct, kw_only=True):
    """The anti-entropy state: ``in_sync``, ``syncing``, ``disconnected`` or ``failed``."""

    state: str = "starting"
    last_sync: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    syncs: int = 0
    repairs: int = 0


class DefinitionsInfo(msgspec.Struct, kw_only=True):
    files: list[str] = msgspec.field(default_factory=list)
    services: int = 0
    last_reload: float | None = None
    last_error: str | None = None


class ChecksInfo(msgspec.Struct, kw_only=True):
    checks: int = 0
    runs: int = 0
    drift_p99_ms: float = 0.0
    report_errors: int = 0


class AgentStatus(msgspec.Struct, kw_only=True):
    """Answer of the agent's ``GET /status`` (and ``waypost agent status``)."""

    node: str
    servers: list[str]
    lease: int | None
    node_ttl: str
    sync_interval: str
    draining: bool
    sync: SyncInfo
    definitions: DefinitionsInfo
    checks: ChecksInfo
    instances: list[str]
    discovery: dict[str, Any] | None = None


def _shape(inst: Instance) -> tuple[Any, ...]:
    """What must agree between the registry's copy of an instance and the agent's."""
    health = tuple((h.name, h.status, h.flapping) for h in inst.health if h.kind != "ttl")
    return (
        inst.service,
        inst.address,
        inst.port,
        inst.version,
        inst.tags,
        tuple(sorted(inst.meta.items())),
        inst.weight,
        inst.domain,
        inst.kind,
        inst.checks,
        inst.ttl,
        inst.deregister_after,
        inst.agent,
        inst.node,
        health,
        inst.maintenance,
    )


class Agent:
    """One node's agent; ``run`` until a signal, or ``start``/``stop`` from code."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.node = settings.node
        self.data_dir = Path(settings.data_dir)
        self.config_dir = Path(settings.config_dir)
        self.node_ttl_s = parse_duration(settings.node_ttl, field="node_ttl")
        self.sync_interval_s = parse_duration(settings.sync_interval, field="sync_interval")
        self.drain_s = parse_duration(settings.drain, field="drain")
        if self.node_ttl_s <= 0 or self.sync_interval_s <= 0:
            raise InvalidInput("node-ttl and sync-interval must be longer than zero")
        self.refresh_s = parse_duration(settings.refresh_interval, field="refresh_interval")
        self.client = self._make_client(settings)
        self._discovery_task: asyncio.Task[None] | None = None
        # The agent's checks come from its operator's own files: they may read any path.
        self.scheduler = Scheduler(self._report, files=CheckFiles(anywhere=True))
        self.defs: dict[str, Instance] = {}
        self.lease: int | None = None
        self.draining = False
        self.sync_info = SyncInfo()
        self.defs_info = DefinitionsInfo()
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self._sync_soon = asyncio.Event()
        self._reload_now = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def _make_client(self, settings: AgentSettings) -> AsyncClient:
        from waypost.peers.manager import gather_sources

        has_env = bool(os.environ.get("WAYPOST_NODE_REGISTRIES"))
        peers_file = gather_sources((), data_dir=settings.data_dir)
        tls = None
        if settings.tls_ca or settings.tls_cert:
            from waypost.tls import client_context

            tls = client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
        if not settings.join and not has_env and not peers_file:
            return AsyncClient(settings.servers, token=settings.token or None, tls=tls)
        try:
            client = AsyncClient(
                settings.servers or None,
                token=settings.token or None,
                tls=tls,
                join=[*settings.join, *peers_file],
                trust_keys=settings.trust_keys,
                dns_resolver=settings.dns_resolver or None,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"--{exc.message}", field="join") from None
        if client.discovery is not None:
            client.discovery.refresh_s = self.refresh_s
        return client

    @property
    def servers(self) -> list[str]:
        return list(self.client._servers.urls)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.reload()
        await self._serve_status()
        self._save_state()
        await self._write_registry()
        discovery = self.client.discovery
        if discovery is not None:
            await discovery.refresh()
            self._discovery_task = asyncio.create_task(discovery.run(), name="agent-discovery")
        self._tasks = [
            asyncio.create_task(self._keep_node(), name="agent-lease"),
            asyncio.create_task(self._sync_loop(), name="agent-sync"),
            asyncio.create_task(self._reload_loop(), name="agent-reload"),
        ]

    async def drain(self) -> None:
        """Maintenance for every service now, deregistration ``drain`` later."""
        self.draining = True
        for task in self._tasks[1:]:  # keep the lease alive while draining
            task.cancel()
        ids = list(self.defs)
        log.info("draining %d services for %s", len(ids), self.settings.drain)
        results = await asyncio.gather(
            *(self.client.maintenance(i, True, "agent draining") for i in ids),
            return_exceptions=True,
        )
        for iid, res in zip(ids, results, strict=True):
            if isinstance(res, BaseException) and not isinstance(res, NotFound):
                log.warning("could not put %s in maintenance: %s", iid, res)
        await asyncio.sleep(self.drain_s)
        await self.scheduler.close()
        try:
            held = await self.client.instances(node=self.node)
            mine = [i.id for i in held.instances if i.agent and i.node == self.node]
            for start in range(0, len(mine), BATCH_MAX):
                await self.client.batch(deregister=mine[start : start + BATCH_MAX])
            with contextlib.suppress(NotFound):
                await self.client.deregister_node(self.node)
            if self.lease is not None:
                with contextlib.suppress(NotFound):
                    await self.client.revoke_lease(self.lease)
            self.lease = None
            self._save_state()
            log.info("drained: %d services deregistered", len(mine))
        except WaypostError as exc:
            log.error("could not deregister while draining: %s", exc.message)

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        if self._discovery_task is not None:
            await cancel_all([self._discovery_task])
            self._discovery_task = None
        await self.scheduler.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.client.aclose()

    # --- the node's lease ----------------------------------------------------------------

    def _state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def _save_state(self) -> None:
        data = {"node": self.node, "lease": self.lease, "url": self.url, "pid": os.getpid()}
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._state_path())

    def _saved_lease(self) -> int | None:
        try:
            data = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return None
        lease = data.get("lease") if isinstance(data, dict) else None
        return lease if isinstance(lease, int) and data.get("node") == self.node else None

    async def _connect(self) -> None:
        """Take up the node's lease (the saved one if it still lives), register the node,
        and sync."""
        lease = self.lease or self._saved_lease()
        if lease is not None:
            try:
                await self.client.keepalive_lease(lease)
            except NotFound:
                lease = None
        if lease is None:
            lease = await self.client.grant_lease(self.settings.node_ttl)
        self.lease = lease
        self._save_state()
        await self.client.register_node(
            self.node, address=self.settings.address, meta=self.settings.meta, lease=lease
        )
        await self.sync("connect")

    async def _keep_node(self) -> None:
        every = max(self.node_ttl_s / 3, 0.05)
        delay = 0.1
        connected = False
        while True:
            try:
                if not connected:
                    await self._connect()
                    connected = True
                    delay = 0.1
                await asyncio.sleep(every)
                assert self.lease is not None
                await self.client.keepalive_lease(self.lease)
                if self.sync_info.state == "disconnected":
                    self._sync_soon.set()  # reconnected: repair what changed meanwhile
            except asyncio.CancelledError:
                raise
            except NotFound:
                log.warning(
                    "node %s: its lease %s lapsed; registering again", self.node, self.lease
                )
                self.lease = None
                connected = False
            except WaypostError as exc:
                self._failed(exc, disconnected=isinstance(exc, Unavailable))
                connected = connected and isinstance(exc, Unavailable)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S, every)
            except Exception as exc:
                log.exception("agent lease loop failed; retrying")
                self._failed(exc, disconnected=False)
                connected = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _failed(self, exc: BaseException, *, disconnected: bool) -> None:
        message = exc.message if isinstance(exc, WaypostError) else f"{type(exc).__name__}: {exc}"
        self.sync_info.state = "disconnected" if disconnected else "failed"
        self.sync_info.last_error = message
        self.sync_info.last_error_at = time.time()
        log.warning("agent: %s", message)

    # --- anti-entropy --------------------------------------------------------------------

    def _wanted(self, inst: Instance) -> Instance:
        states = self.scheduler.states(inst.id)
        return msgspec.structs.replace(inst, health=states, maintenance=self.draining)

    async def sync(self, reason: str) -> int:
        """Make the registry hold exactly this node's definitions; how many it repaired."""
        async with self._sync_lock:
            if self.draining:
                return 0
            self.sync_info.state = "syncing"
            try:
                held = await self.client.instances(node=self.node)
            except WaypostError as exc:
                self._failed(exc, disconnected=isinstance(exc, Unavailable))
                return 0
            remote = {i.id: i for i in held.instances}
            if self.sync_info.syncs == 0:
                for iid, stored in remote.items():
                    if iid in self.defs and stored.checks == self.defs[iid].checks:
                        self.scheduler.adopt(iid, [h for h in stored.health if h.kind != "node"])
            register = []
            for iid, defn in self.defs.items():
                want = self._wanted(defn)
                have = remote.get(iid)
                if have is None or _shape(have) != _shape(want):
                    register.append(want)
            deregister = [
                iid
                for iid, have in remote.items()
                if have.agent and have.node == self.node and iid not in self.defs
            ]
            try:
                for start in range(0, max(len(register), len(deregister)), BATCH_MAX):
                    await self.client.batch(
                        register=register[start : start + BATCH_MAX],
                        deregister=deregister[start : start + BATCH_MAX],
                    )
            except WaypostError as exc:
                self._failed(exc, disconnected=isinstance(exc, Unavailable))
                return 0
            repaired = len(register) + len(deregister)
            if repaired and self.sync_info.syncs:
                log.info(
                    "sync (%s): registered %d, removed %d", reason, len(register), len(deregister)
                )
            self.sync_info.state = "in_sync"
            self.sync_info.last_sync = time.time()
            self.sync_info.syncs += 1
            self.sync_info.repairs += repaired
            return repaired

    async def _sync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_soon.wait(), self.sync_interval_s)
            self._sync_soon.clear()
            if self.lease is None:
                continue  # the lease loop syncs once connected
            try:
                await self.sync("interval")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("sync failed")
                self._failed(exc, disconnected=False)

    async def _report(self, instance_id: str, states: tuple[CheckState, ...]) -> None:
        if self.draining:
            return
        try:
            await self.client.report_health(instance_id, states)
        except NotFound:
            self._sync_soon.set()  # deleted behind our back: restore it now

    # --- definitions ---------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the definitions again; False (and nothing changed) when a file is bad."""
        self._signature = definitions.signature(self.config_dir)
        try:
            loaded = definitions.load(
                self.config_dir, node=self.node, address=self.settings.address
            )
        except WaypostError as exc:
            self.defs_info.last_error = exc.message
            log.error("definitions not reloaded: %s", exc.message)
            return False
        for iid in list(self.defs):
            if iid not in loaded.instances:
                self.scheduler.remove_instance(iid)
        for iid, inst in loaded.instances.items():
            runnable = [c for c in inst.checks if c.kind != "ttl"]
            if runnable:
                self.scheduler.set_instance(iid, runnable)
            else:
                self.scheduler.remove_instance(iid)
        self.defs = loaded.instances
        self.defs_info = DefinitionsInfo(
            files=list(loaded.files), services=len(self.defs), last_reload=time.time()
        )
        log.info("definitions loaded: %d services from %d files", len(self.defs), len(loaded.files))
        return True

    async def _reload_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload_now.wait(), RELOAD_POLL_S)
            asked = self._reload_now.is_set()
            self._reload_now.clear()
            try:
                if not asked and definitions.signature(self.config_dir) == self._signature:
                    continue
                if self.reload():
                    self._sync_soon.set()
            except Exception as exc:  # a reload must never end the watching of files
                log.exception("reloading definitions failed; trying again on the next change")
                self.defs_info.last_error = f"internal error: {exc}"

    def request_reload(self) -> None:
        """What SIGHUP does: read the definitions again, and the discovery sources."""
        self._reload_now.set()
        if self.client.discovery is not None:
            self.client.discovery.request_refresh()

    async def _write_registry(self) -> None:
        """The agent's own ``node-registry.json`` (role agent, its status URL as api)."""
        from waypost._version import __version__
        from waypost.peers.entry import REGISTRY_FILE, registry_entry, write_registry

        address = self.url.split("://", 1)[-1]
        entry = registry_entry(self.node, self.url, [address], role="agent", version=__version__)
        try:
            await asyncio.to_thread(write_registry, self.data_dir / REGISTRY_FILE, entry)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.data_dir / REGISTRY_FILE, exc)

    # --- status --------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        s = self.scheduler
        return AgentStatus(
            node=self.node,
            servers=self.servers,
            lease=self.lease,
            node_ttl=self.settings.node_ttl,
            sync_interval=self.settings.sync_interval,
            draining=self.draining,
            sync=self.sync_info,
            definitions=self.defs_info,
            checks=ChecksInfo(
                checks=len(s),
                runs=s.runs,
                drift_p99_ms=s.drift_p99_ms(),
                report_errors=s.report_errors,
            ),
            instances=sorted(self.defs),
            discovery=self.client.discovery.status() if self.client.discovery else None,
        )

    async def _serve_status(self) -> None:
        app = web.Application()

        async def status(request: web.Request) -> web.Response:
            return web.Response(
                body=msgspec.json.encode(self.status()), content_type="application/json"
            )

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "draining" if self.draining else "serving"})

        app.router.add_get("/status", status)
        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = self.settings.http.rpartition(":")
        if not port.isdigit():
            raise InvalidInput(f"http: {self.settings.http!r} is not HOST:PORT", field="http")
        tls = None
        if self.settings.tls_cert and self.settings.tls_key:
            # The agent's certificate serves its status port too (waypost tls client
            # certificates name localhost and 127.0.0.1, as Consul's do).
            from waypost.tls import server_context

            tls = server_context(self.settings.tls_cert, self.settings.tls_key)
        site = web.TCPSite(
            self._runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=tls
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else int(port)
        shown = host if ":" not in host.strip("[]") else f"[{host.strip('[]')}]"
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://{shown or '127.0.0.1'}:{bound}"


async def run_agent(settings: AgentSettings) -> int:
    """Run until SIGTERM/SIGINT (drain, exit 0)."""
    agent = Agent(settings)
    await agent.start()
    print(
        f"waypost agent: node {agent.node} status {agent.url} "
        f"({len(agent.defs)} services, servers {','.join(agent.servers) or '(discovering)'})",
        flush=True,
    )
    try:
        await until_signalled(on_hup=agent.request_reload)
        await agent.drain()
    finally:
        await agent.stop()
    return 0


def read_status(data_dir: Path) -> str:
    """The status URL an agent running with ``data_dir`` wrote."""
    try:
        data = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise InvalidInput(f"no agent state in {data_dir} (is the agent running?)") from None
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"no agent status address in {data_dir / STATE_FILE}")
    return url


def status_lines(status: dict[str, Any]) -> Sequence[str]:
    """``waypost agent status`` for people."""
    sync = status.get("sync", {})
    defs = status.get("definitions", {})
    checks = status.get("checks", {})
    lines = [
        f"node                {status.get('node')}",
        f"servers             {', '.join(status.get('servers') or []) or '-'}",
        f"lease               {status.get('lease')}",
        f"sync                {sync.get('state')} "
        f"(syncs {sync.get('syncs')}, repairs {sync.get('repairs')})",
        f"last error          {sync.get('last_error') or '-'}",
        f"services            {defs.get('services')} from {len(defs.get('files', []))} files",
        f"definitions error   {defs.get('last_error') or '-'}",
        f"checks              {checks.get('checks')} (runs {checks.get('runs')}, "
        f"drift p99 {checks.get('drift_p99_ms', 0):.1f} ms)",
        f"draining            {status.get('draining')}",
    ]
    discovery = status.get("discovery")
    if isinstance(discovery, dict):
        for peer in discovery.get("peers", []):
            error = f" ({peer.get('last_error')})" if peer.get("last_error") else ""
            lines.append(
                f"peer                {peer.get('node_id')} {peer.get('api')} "
                f"{peer.get('state')} via {peer.get('source')}{error}"
            )
        for source, error in (discovery.get("source_errors") or {}).items():
            lines.append(f"source error        {source}: {error}")
    return lines
