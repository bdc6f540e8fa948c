"""``Network``: local actors, remote actors under aliases, a workflow wiring them, a
WebSocket endpoint other networks talk to, and its entries in a Waypost registry.

How a message travels: ``send(node, port, payload)`` delivers to ``node``. A local
actor's ``handle`` runs; whatever it emits (``ctx.emit``) goes along the workflow's
connections from that node and port, and ``emit`` returns once the next hop has
handled it. A remote node's message goes over the link to its network (``protocol.py``),
whose actor handles it; its outputs come back over the same link to this network, which
routes them along its own connections from the alias. The ack closes the chain: a send
returns when the whole downstream has handled it, so an acknowledged send is never lost.

Links are per network instance, opened on first use and kept; a broken one reconnects
and sends again what was not acknowledged; the receiver drops what it already handled.
Messages on one link are handled one at a time, in order. (A workflow that calls back
into the network that called it on the same link would wait for itself: route such
cycles through a third node.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import logging
import os
import random
import re
import secrets
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from waypost.client._async import AsyncClient
from waypost.durations import parse_duration
from waypost.errors import NotFound, Unavailable, WaypostError
from waypost.model import Instance

from . import protocol as p
from .actor import Actor, Context
from .errors import (
    ActorNotFound,
    AuthenticationFailed,
    ConnectionTimeout,
    MessageTooLarge,
    NameConflict,
    NetworkNotFound,
)

log = logging.getLogger("waypost.actors")

DEFAULT_SEND_TIMEOUT_S = 30.0
MAX_LINKS = 1024  # peer instances remembered; idle disconnected ones go first
MAX_REMEMBERED_OUTPUTS = 100_000  # outputs taken, to drop those a resend brings again
REDIALS = 3  # a link we opened that cannot reconnect in this many tries gives up
RECONNECT_MAX_S = 5.0
STRATEGIES = ("auto_alias", "manual", "fail")


@dataclass(frozen=True)
class DiscoveryConfig:
    """How a network keeps its view of the others current (the seeds' defaults):
    remote actors' networks are looked up again every ``refresh_interval`` when their
    link is unhealthy, links are pinged every ``health_check_interval``, registry lookups
    are tried ``retries`` times, each within ``timeout``."""

    refresh_interval: str = "30s"
    health_check_interval: str = "15s"
    retries: int = 3
    timeout: str = "5s"

    @classmethod
    def development(cls) -> DiscoveryConfig:
        """Quick to notice and recover, chatty: for a laptop or a test."""
        return cls(refresh_interval="5s", health_check_interval="2s", retries=2, timeout="2s")

    @classmethod
    def production(cls) -> DiscoveryConfig:
        return cls()


@dataclass(frozen=True)
class NetworkInfo:
    """A network as the registry knows it."""

    network_id: str
    instance_id: str
    endpoint: str
    capabilities: list[str]
    tags: list[str]
    metadata: dict[str, Any]
    status: str
    last_seen: float
    load: float


@dataclass(frozen=True)
class ActorInfo:
    """An actor another network offers."""

    name: str
    component: str
    capabilities: list[str]
    inports: list[str]
    outports: list[str]
    metadata: dict[str, Any]


@dataclass
class RemoteActor:
    """A remote actor known here under ``alias``: on ``network_id``; with failover, the
    networks to try in order (the first is the primary); balanced, spread over them."""

    alias: str
    actor: str
    network_id: str
    networks: list[str] = field(default_factory=list)
    mode: str = "single"  # single, failover, balanced
    turn: int = 0
    available: bool = True  # False while its network does not answer pings


@dataclass
class _Reply:
    """Where the outputs of a remotely invoked actor go: back over this link, named by
    the msg that caused them and their order, so the origin takes each once."""

    link: _Link
    alias: str
    cause: str
    emitted: int = 0


def _label(text: str) -> str:
    """A DNS-safe label from any text (instance ids must be labels)."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (s or "x")[:63].rstrip("-") or "x"


def _csv(items: Iterable[str]) -> str:
    return ",".join(items)


def _split(text: str | None) -> list[str]:
    return [x for x in (text or "").split(",") if x]


class _Link:
    """Everything this network shares with one peer network instance: the message
    numbering both ways, what awaits an ack, and the WebSocket in use (replaced on
    reconnect)."""

    def __init__(self, net: Network, network_id: str, instance_id: str, endpoint: str = "") -> None:
        self.net = net
        self.network_id = network_id
        self.instance_id = instance_id
        self.endpoint = endpoint  # set when we open it (we reconnect); "" when they did
        self.outbox = p.Outbox()
        self.inbox = p.Inbox()
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.queue: asyncio.Queue[p.Msg] = asyncio.Queue()
        self._frames: list[p.Frame] = []
        self._flushing = False
        self.worker = asyncio.create_task(self._work(), name=f"link-{network_id}")
        self.keeper: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.closing = False
        self.peer_epoch = ""
        # The link's resume secret: one we issued (a link a peer opened to us) or one the
        # peer issued (a link we opened). Only its holder may take the link over.
        self.resume = ""
        self.latency_ms: float | None = None
        self._pongs: dict[float, asyncio.Future[None]] = {}
        self.sent = 0
        self.received = 0

    @property
    def state(self) -> str:
        return "connected" if self.connected.is_set() else "disconnected"

    # --- sending ---------------------------------------------------------------------------

    def send_frame(self, frame: p.Frame) -> None:
        """Queue a frame; frames queued in one turn of the loop go as one batch."""
        self._frames.append(frame)
        if not self._flushing and self.connected.is_set():
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        ws = self.ws
        if not self._frames or ws is None or ws.closed:
            return
        frames, self._frames = self._frames, []
        data = p.encode(frames, compress_above=self.net.compress_above)
        task = asyncio.ensure_future(ws.send_bytes(data))
        task.add_done_callback(_ignore_send_error)

    async def call(
        self, node: str, port: str, payload: object, *, alias: str = "", out: bool = False,
        mid: str = "", cause: str = "", n: int = 0,
    ) -> None:  # fmt: skip
        """Send a msg and wait for its ack (ActorNotFound and others on a nack)."""
        msg = self.outbox.new(
            id=mid or self.net._new_id(), node=node, port=port, payload=payload, out=out,
            alias=alias, cause=cause, n=n,
        )  # fmt: skip
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[msg.seq] = fut
        self.send_frame(msg)
        self.sent += 1
        try:
            async with asyncio.timeout(self.net.send_timeout_s):
                if not self.connected.is_set() and self.endpoint:
                    self.ensure_connected()
                await fut
        except TimeoutError:
            self.outbox.settled(msg.seq)
            raise ConnectionTimeout(
                f"{self.network_id}: no acknowledgement within {self.net.send_timeout_s:g} s "
                f"({self.state})"
            ) from None
        finally:
            self.waiting.pop(msg.seq, None)

    def settle(self, seq: int, error: WaypostError | None) -> None:
        self.outbox.settled(seq)
        fut = self.waiting.get(seq)
        if fut is not None and not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    # --- the WebSocket ---------------------------------------------------------------------

    def attach(
        self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, epoch: str = ""
    ) -> None:
        """A (new) WebSocket for this link: send again what awaits an ack. A peer of
        another epoch restarted: what it sends is numbered from 1 again."""
        if epoch != self.peer_epoch:
            if self.peer_epoch:
                log.info("%s restarted: a fresh count of its messages", self.network_id)
                self.inbox = p.Inbox()
            self.peer_epoch = epoch
        old = self.ws
        if old is not None and old is not ws and not old.closed:
            task = asyncio.ensure_future(old.close())
            task.add_done_callback(_ignore_send_error)
        self.ws = ws
        self.connected.set()
        again: list[p.Frame] = list(self.outbox.again())
        self._frames = again + [f for f in self._frames if not isinstance(f, p.Msg)]
        if self._frames:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def detach(self, ws: object) -> None:
        if self.ws is ws:
            self.ws = None
            self.connected.clear()
            if self.endpoint and (self.waiting or self.outbox.unacked):
                self.ensure_connected()

    def ensure_connected(self) -> None:
        if self.closing:
            return
        if self.keeper is None or self.keeper.done():
            self.keeper = asyncio.create_task(self.net._keep(self), name=f"dial-{self.network_id}")

    async def read(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        """Read frames until the WebSocket ends."""
        async for m in ws:
            if m.type == aiohttp.WSMsgType.BINARY:
                try:
                    frames = p.decode(m.data, max_bytes=self.net.max_message_bytes * 4)
                except p.ProtocolError as exc:
                    log.warning("%s: dropping a bad batch: %s", self.network_id, exc)
                    continue
                for f in frames:
                    self.on_frame(f)
            elif m.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break

    def on_frame(self, f: p.Frame) -> None:
        if isinstance(f, p.Msg):
            self.received += 1
            self.queue.put_nowait(f)
        elif isinstance(f, p.Ack):
            self.settle(f.seq, None)
        elif isinstance(f, p.Nack):
            err: WaypostError = (
                ActorNotFound(f.error)
                if f.kind == "actor_not_found"
                else MessageTooLarge(f.error)
                if f.kind == "too_large"
                else WaypostError(f.error)
            )
            self.settle(f.seq, err)
        elif isinstance(f, p.Ping):
            self.send_frame(p.Pong(at=f.at))
        elif isinstance(f, p.Pong):
            fut = self._pongs.pop(f.at, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def ping(self, timeout_s: float | None = None) -> float:
        at = time.monotonic()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[at] = fut
        if not self.connected.is_set() and self.endpoint:
            self.ensure_connected()
        try:
            async with asyncio.timeout(timeout_s or self.net.send_timeout_s):
                await self.connected.wait()
                self.send_frame(p.Ping(at=at))
                await fut
        except TimeoutError:
            raise ConnectionTimeout(f"{self.network_id}: no pong") from None
        finally:
            self._pongs.pop(at, None)
        self.latency_ms = (time.monotonic() - at) * 1000
        return self.latency_ms

    # --- handling what arrives, one at a time -----------------------------------------------

    async def _work(self) -> None:
        while True:
            msg = await self.queue.get()
            if not self.inbox.fresh(msg):
                self.send_frame(p.Ack(seq=msg.seq))  # sent again after a reconnect
                continue
            try:
                await self.net._on_msg(self, msg)
            except ActorNotFound as exc:
                self.inbox.handled(msg)
                self.send_frame(p.Nack(seq=msg.seq, kind="actor_not_found", error=exc.message))
                continue
            except Exception as exc:
                log.exception("%s: handling %s.%s failed", self.net.network_id, msg.node, msg.port)
                self.inbox.handled(msg)
                self.send_frame(p.Nack(seq=msg.seq, kind="failed", error=str(exc)))
                continue
            self.inbox.handled(msg)
            self.send_frame(p.Ack(seq=msg.seq))

    async def close(self) -> None:
        self.closing = True
        ws = self.ws  # the reader's end clears it
        for task in (self.worker, self.keeper, self.reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if ws is not None and not ws.closed:
            await ws.close()
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionTimeout(f"{self.network_id}: link closed"))


def _ignore_send_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a closed WebSocket: the reconnect sends again


class Network:
    """A network of actors (see the module's doc); ``await start()`` / ``await stop()``."""

    def __init__(
        self,
        network_id: str,
        *,
        instance_id: str | None = None,
        bind: str = "127.0.0.1:0",
        discovery: Sequence[str] = ("http://127.0.0.1:8500",),
        auth_token: str | None = None,
        registry_token: str | None = None,
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
        capabilities: Iterable[str] = (),
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        max_connections: int = 100,
        heartbeat_interval: str | float = "15s",
        auto_register: bool = True,
        max_message_bytes: int = p.MAX_MESSAGE_BYTES,
        compress_above: int = p.COMPRESS_ABOVE,
        send_timeout: str | float = DEFAULT_SEND_TIMEOUT_S,
        version: str = "1.0.0",
        discovery_config: DiscoveryConfig | None = None,
    ) -> None:
        self.network_id = network_id
        self.instance_id = instance_id or f"{_label(os.uname().nodename)}-{os.getpid()}"
        self.bind = bind
        self.discovery = list(discovery)
        self.auth_token = auth_token or ""
        self.capabilities = list(capabilities)
        self.tags = list(tags)
        self.metadata = dict(metadata or {})
        self.max_connections = max_connections
        self.heartbeat_s = _seconds(heartbeat_interval)
        self.auto_register = auto_register
        self.max_message_bytes = max_message_bytes
        self.compress_above = compress_above
        self.send_timeout_s = _seconds(send_timeout)
        self.config = discovery_config or DiscoveryConfig()
        self._health_task: asyncio.Task[None] | None = None
        self.version = version
        # The registry's ACL token (registering this network and its actors needs a
        # ``network`` write rule under a default-deny registry); ``auth_token`` guards links.
        # TLS: links served as wss:// with this certificate; with a CA, peers must show a
        # certificate it signed (mutual TLS), and it is what this network trusts when it
        # dials peers and the registry (also shown to them).
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        self._tls_client: ssl.SSLContext | None = None
        if tls_cert or tls_ca:
            from waypost.tls import client_context

            self._tls_client = client_context(tls_ca, tls_cert, tls_key)
        self.client = AsyncClient(self.discovery, token=registry_token, tls=self._tls_client)
        self._actors: dict[str, tuple[Actor, dict[str, Any]]] = {}
        self._nodes: dict[str, str] = {}  # workflow node -> "local" actor name or alias
        self._remote: dict[str, RemoteActor] = {}
        self._connections: dict[tuple[str, str], list[tuple[str, str]]] = {}
        # Links we opened, to the endpoint the registry names for (network, instance):
        # the only links new messages to a network go over.
        self._links: dict[tuple[str, str], _Link] = {}
        # Links peers opened to us, by the resume secret we issued: each carries only its
        # dialer's messages and their answers, whatever identity its hello claimed.
        self._inbound: dict[str, _Link] = {}
        self._by_network: dict[str, _Link] = {}  # the link we use to reach a network
        self._dialing: dict[str, asyncio.Future[_Link]] = {}
        self._outputs: collections.OrderedDict[tuple[str, str, int], None] = (
            collections.OrderedDict()
        )
        self._ids = itertools.count(1)
        self.epoch = os.urandom(6).hex()
        self._id_prefix = f"{self.network_id}.{self.instance_id}.{self.epoch}"
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._beats: asyncio.Task[None] | None = None
        self._server_ws: set[web.WebSocketResponse] = set()
        self.endpoint = ""
        self.registered = False
        self.started_at = 0.0
        self.handled = 0

    # --- building the workflow ---------------------------------------------------------------

    def add_node(
        self, name: str, actor: Actor | str, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """A node: a local ``Actor``, ``"actor@network"`` (a remote actor, registered
        under ``name`` on first use) or the alias of a registered remote actor."""
        if name in self._nodes:
            raise NameConflict(f"node {name!r} exists", field="name")
        if isinstance(actor, Actor):
            self._actors[name] = (actor, dict(metadata or {}))
            self._nodes[name] = name
        elif "@" in actor:
            remote, _, network = actor.partition("@")
            if not remote or not network:
                raise ActorNotFound(f"{actor!r}: give actor@network", field="actor")
            self._remote[name] = RemoteActor(name, remote, network, [network])
            self._nodes[name] = name
        elif actor in self._remote:
            self._nodes[name] = actor
        else:
            raise ActorNotFound(f"{actor!r} is neither an Actor, actor@network nor an alias")

    def add_connection(self, source: tuple[str, str], target: tuple[str, str]) -> None:
        """Messages ``source`` node emits on its port go to ``target`` node's port."""
        for node, _ in (source, target):
            if node not in self._nodes and node not in self._remote:
                raise ActorNotFound(f"no node {node!r}", field="node")
        self._connections.setdefault(source, []).append(target)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the WebSocket (``/ws``), ``/health`` and ``/status``; register the
        network and its actors when ``auto_register``."""
        from waypost.settings import host_port

        host, port = host_port(self.bind, "bind")
        app = web.Application(client_max_size=self.max_message_bytes)
        app.router.add_get("/ws", self._accept)
        app.router.add_get("/health", self._health)
        app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        serving = None
        if self.tls_cert:
            from waypost.tls import server_context

            serving = server_context(
                self.tls_cert, self.tls_key, ca=self.tls_ca, verify_clients=bool(self.tls_ca)
            )
        site = web.TCPSite(self._runner, host, port, ssl_context=serving)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        secure = "s" if serving is not None else ""
        self.endpoint = f"ws{secure}://{shown}:{bound}/ws"
        self._http = f"http{secure}://{shown}:{bound}"
        connector = aiohttp.TCPConnector(ssl=self._tls_client if self._tls_client else True)
        self._session = aiohttp.ClientSession(connector=connector)
        self.started_at = time.time()
        self._health_task = asyncio.create_task(self._watch_health(), name="network-health")
        if self.auto_register:
            await self.register()

    async def stop(self) -> None:
        """Unregister the network and its actors, close every link, stop serving."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
            self._beats = None
        if self.registered:
            with contextlib.suppress(WaypostError):
                await self.client.batch(deregister=self._entry_ids())
            self.registered = False
        for link in [*self._links.values(), *self._inbound.values()]:
            await link.close()
        self._links.clear()
        self._inbound.clear()
        self._by_network.clear()
        for ws in list(self._server_ws):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.client.aclose()

    async def __aenter__(self) -> Network:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the registry ------------------------------------------------------------------------

    def _network_entry_id(self) -> str:
        return _label(f"{self.network_id}-{self.instance_id}")

    def _actor_entry_id(self, name: str) -> str:
        return _label(f"{self.network_id}-{self.instance_id}-{name}")

    def _entry_ids(self) -> list[str]:
        return [self._network_entry_id(), *(self._actor_entry_id(n) for n in self._actors)]

    def _entries(self) -> list[Instance]:
        from waypost.model import convert_instance

        host = self.endpoint.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
        port = int(self.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
        ttl = f"{max(1.0, self.heartbeat_s * 3):g}s"
        gone = f"{max(1.0, self.heartbeat_s * 6):g}s"
        meta = {
            "network_id": self.network_id,
            "instance_id": self.instance_id,
            "endpoint": self.endpoint,
            "health": f"{self._http}/health",
            "capabilities": _csv(self.capabilities),
            "metadata": msgspec.json.encode(self.metadata).decode(),
            "load": "0",
        }
        out = [
            convert_instance(
                {
                    "id": self._network_entry_id(), "service": _label(self.network_id),
                    "address": host, "port": port, "kind": "network", "tags": self.tags,
                    "version": self.version, "meta": meta, "ttl": ttl,
                    "deregister_after": gone,
                }
            )
        ]  # fmt: skip
        for name, (actor, md) in self._actors.items():
            out.append(
                convert_instance(
                    {
                        "id": self._actor_entry_id(name), "service": _label(name),
                        "address": host, "port": port, "kind": "actor",
                        "ttl": ttl, "deregister_after": gone,
                        "meta": {
                            "network": self.network_id,
                            "network_instance": self.instance_id,
                            "actor": name,
                            "component": type(actor).__name__,
                            "capabilities": _csv(actor.capabilities),
                            "inports": _csv(actor.inports),
                            "outports": _csv(actor.outports),
                            "metadata": msgspec.json.encode(md).decode(),
                        },
                    }
                )
            )  # fmt: skip
        return out

    async def register(self) -> None:
        """Register the network and its actors (TTL entries kept alive by heartbeats)."""
        await self.client.batch(register=self._entries())
        self.registered = True
        if self._beats is None:
            self._beats = asyncio.create_task(self._heartbeats(), name="network-heartbeats")

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.gather(*(self.client.heartbeat(i) for i in self._entry_ids()))
            except NotFound:
                log.warning("%s: the registry lost our entries; registering again", self.network_id)
                with contextlib.suppress(WaypostError):
                    await self.client.batch(register=self._entries())
            except WaypostError as exc:
                log.warning("%s: heartbeat failed: %s", self.network_id, exc)
            except Exception:  # never end the heartbeats silently
                log.exception("%s: heartbeat failed", self.network_id)

    async def discover_networks(
        self, capability: str | None = None, tags: Iterable[str] = ()
    ) -> list[NetworkInfo]:
        """Healthy networks (other than this instance) offering ``capability`` with
        every tag in ``tags``."""
        res = await self.client.instances(kind="network", tags=list(tags), status="passing")
        out = []
        for i in res.instances:
            info = _network_info(i)
            if (info.network_id, info.instance_id) == (self.network_id, self.instance_id):
                continue
            if capability is not None and capability not in info.capabilities:
                continue
            out.append(info)
        return out

    async def discover_actors(self, network_id: str) -> list[ActorInfo]:
        res = await self.client.instances(
            kind="actor", meta={"network": network_id}, status="passing"
        )
        seen: dict[str, ActorInfo] = {}
        for i in res.instances:
            m = i.meta
            name = m.get("actor", i.service)
            seen.setdefault(
                name,
                ActorInfo(
                    name=name,
                    component=m.get("component", ""),
                    capabilities=_split(m.get("capabilities")),
                    inports=_split(m.get("inports")),
                    outports=_split(m.get("outports")),
                    metadata=_json(m.get("metadata")),
                ),
            )
        return sorted(seen.values(), key=lambda a: a.name)

    async def is_network_available(self, network_id: str) -> bool:
        try:
            await self._find(network_id)
        except NetworkNotFound:
            return False
        return True

    async def _find(self, network_id: str) -> NetworkInfo:
        """The least loaded healthy instance of ``network_id``; registry lookups are
        tried ``config.retries`` times within ``config.timeout`` each."""
        tries = max(1, self.config.retries)
        for attempt in range(tries):
            try:
                async with asyncio.timeout(_seconds(self.config.timeout)):
                    return await self._find_once(network_id)
            except (TimeoutError, Unavailable) as exc:
                if attempt + 1 == tries:
                    raise ConnectionTimeout(f"the registry did not answer: {exc}") from None
                await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    async def _find_once(self, network_id: str) -> NetworkInfo:
        res = await self.client.instances(network_id if _label(network_id) == network_id else None,
                                          kind="network", status="passing")  # fmt: skip
        found = [_network_info(i) for i in res.instances if i.meta.get("network_id") == network_id]
        if not found:
            raise NetworkNotFound(f"no healthy network {network_id!r} in the registry")
        return min(found, key=lambda n: (n.load, n.instance_id))

    # --- remote actors -----------------------------------------------------------------------

    async def register_remote_actor(
        self,
        actor: str,
        network_id: str,
        alias: str | None = None,
        strategy: str = "auto_alias",
    ) -> str:
        """Make ``actor`` of ``network_id`` usable here as a node; the alias in use."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: one of {', '.join(STRATEGIES)}")
        offered = {a.name for a in await self.discover_actors(network_id)}
        if not offered:
            await self._find(network_id)  # NetworkNotFound when it is not there at all
        if actor not in offered:
            raise ActorNotFound(f"{network_id} offers no actor {actor!r}")
        wanted = alias or actor
        if self._taken(wanted):
            if strategy in ("fail", "manual"):
                raise NameConflict(f"{wanted!r} is taken here", field="alias")
            wanted = f"{network_id}_{actor}"
            n = 2
            base = wanted
            while self._taken(wanted):
                wanted = f"{base}_{n}"
                n += 1
        self._remote[wanted] = RemoteActor(wanted, actor, network_id, [network_id])
        self._nodes[wanted] = wanted
        return wanted

    async def _offering(self, actor: str) -> list[str]:
        """The networks offering ``actor``, least loaded first."""
        res = await self.client.instances(kind="actor", status="passing")
        ids = {i.meta.get("network") for i in res.instances if i.meta.get("actor") == actor}
        nets = [n for n in await self.discover_networks() if n.network_id in ids]
        nets.sort(key=lambda n: (n.load, n.network_id))
        return list(dict.fromkeys(n.network_id for n in nets))

    async def register_failover(
        self, alias: str, actor: str, networks: Sequence[str] | None = None
    ) -> list[str]:
        """``alias`` sends to ``actor`` on a primary network (the least loaded offering
        it, or the first of ``networks``) and, when the primary fails, to the next; the
        order in use."""
        order = list(networks) if networks else await self._offering(actor)
        return self._alias_over(alias, actor, order, "failover")

    async def register_balanced(self, alias: str, actor: str) -> list[str]:
        """``alias`` spreads messages over every network offering ``actor`` (round
        robin; one that fails is skipped for that message)."""
        return self._alias_over(alias, actor, await self._offering(actor), "balanced")

    def _alias_over(self, alias: str, actor: str, order: list[str], mode: str) -> list[str]:
        """Register ``alias`` for ``actor`` over the networks ``order`` in ``mode``."""
        if not order:
            raise NetworkNotFound(f"no network offers {actor!r}")
        if self._taken(alias):
            raise NameConflict(f"{alias!r} is taken here", field="alias")
        self._remote[alias] = RemoteActor(alias, actor, order[0], order, mode)
        self._nodes[alias] = alias
        return order

    def _taken(self, name: str) -> bool:
        return name in self._nodes or name in self._actors or name in self._remote

    async def unregister_remote_actor(self, alias: str) -> None:
        if alias not in self._remote:
            raise ActorNotFound(f"no remote actor {alias!r}")
        del self._remote[alias]
        self._nodes.pop(alias, None)

    async def refresh_remote_actor(self, alias: str) -> None:
        ref = self._remote.get(alias)
        if ref is None:
            raise ActorNotFound(f"no remote actor {alias!r}")
        self._by_network.pop(ref.network_id, None)
        await self._link_to(ref.network_id)

    def remote_actors(self) -> list[RemoteActor]:
        return list(self._remote.values())

    # --- messages ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{self._id_prefix}.{next(self._ids)}"

    async def send(self, node: str, port: str, payload: object) -> None:
        """Deliver ``payload`` to ``node``'s ``port``; returns once handled downstream."""
        self._check_size(payload)
        await self._deliver(node, port, payload, None)

    async def send_remote(self, network_id: str, actor: str, port: str, payload: object) -> None:
        """Send straight to an actor of another network (its outputs are not routed)."""
        self._check_size(payload)
        link = await self._link_to(network_id)
        await link.call(actor, port, payload, alias=f"{network_id}:{actor}")

    def _check_size(self, payload: object) -> None:
        size = p.payload_size(payload)
        if size > self.max_message_bytes:
            raise MessageTooLarge(
                f"a {size}-byte payload is above the {self.max_message_bytes}-byte limit"
            )

    async def _deliver(self, node: str, port: str, payload: object, reply: _Reply | None) -> None:
        held = self._actors.get(node)
        if held is not None:
            actor = held[0]
            if actor.inports and port not in actor.inports:
                raise ActorNotFound(f"{node} has no inport {port!r}")
            self.handled += 1
            await actor.handle(port, payload, Context(self, node, reply))
            return
        ref = self._remote.get(self._nodes.get(node, node))
        if ref is None:
            raise ActorNotFound(f"no node {node!r} in {self.network_id}")
        if ref.mode == "single":
            link = await self._link_to(ref.network_id)
            await link.call(ref.actor, port, payload, alias=ref.alias)
            return
        await self._deliver_many(ref, port, payload)

    async def _deliver_many(self, ref: RemoteActor, port: str, payload: object) -> None:
        """A failover or balanced alias: the same msg (one id, so the outputs of a
        resend are taken once) to each network in turn until one acknowledges it."""
        mid = self._new_id()
        order = list(ref.networks)
        if ref.mode == "balanced" and order:
            start = ref.turn % len(order)
            ref.turn += 1
            order = order[start:] + order[:start]
        last: WaypostError | None = None
        for network_id in order:
            try:
                link = await self._link_to(network_id)
                await link.call(ref.actor, port, payload, alias=ref.alias, mid=mid)
            except (ConnectionTimeout, NetworkNotFound) as exc:
                last = exc
                if ref.mode == "failover" and ref.networks and ref.networks[0] == network_id:
                    ref.networks.append(ref.networks.pop(0))  # promote the next one
                    ref.network_id = ref.networks[0]
                    log.warning(
                        "%s: %s failed (%s); %s takes over",
                        ref.alias, network_id, exc, ref.network_id,
                    )  # fmt: skip
                continue
            return
        raise last or NetworkNotFound(f"{ref.alias}: no network offers {ref.actor!r}")

    async def _emit(self, node: str, port: str, payload: object, reply: _Reply | None) -> None:
        if reply is not None:  # invoked by another network: the output goes back there
            reply.emitted += 1
            await reply.link.call(
                reply.alias, port, payload, out=True, cause=reply.cause, n=reply.emitted
            )
            return
        await self._route(node, port, payload)

    async def _route(self, node: str, port: str, payload: object) -> None:
        for target, tport in self._connections.get((node, port), ()):
            await self._deliver(target, tport, payload, None)

    async def _on_msg(self, link: _Link, msg: p.Msg) -> None:
        if msg.out:
            key = (msg.cause, msg.port, msg.n)
            if msg.cause and key in self._outputs:
                return  # this output came already (the msg was sent again, elsewhere)
            await self._route(msg.node, msg.port, msg.payload)
            if msg.cause:
                self._outputs[key] = None
                while len(self._outputs) > MAX_REMEMBERED_OUTPUTS:
                    self._outputs.popitem(last=False)
        else:
            if msg.node not in self._actors:
                raise ActorNotFound(f"{self.network_id} has no actor {msg.node!r}")
            await self._deliver(msg.node, msg.port, msg.payload, _Reply(link, msg.alias, msg.id))

    # --- links -------------------------------------------------------------------------------

    async def _link_to(self, network_id: str) -> _Link:
        link = self._by_network.get(network_id)
        if link is not None:
            return link
        # Concurrent first sends to one network share one lookup and one dial.
        pending = self._dialing.get(network_id)
        if pending is None:
            pending = asyncio.ensure_future(self._open(network_id))
            self._dialing[network_id] = pending
            pending.add_done_callback(lambda _: self._dialing.pop(network_id, None))
        return await asyncio.shield(pending)

    async def _open(self, network_id: str) -> _Link:
        info = await self._find(network_id)
        key = (info.network_id, info.instance_id)
        link = self._links.get(key)
        if link is None:
            link = _Link(self, info.network_id, info.instance_id, info.endpoint)
            self._add_link(self._links, key, link)
        link.endpoint = info.endpoint
        if not link.connected.is_set():
            await self._dial(link)
        self._by_network[network_id] = link
        return link

    async def _dial(self, link: _Link) -> None:
        """Open the WebSocket and shake hands; AuthenticationFailed, ConnectionTimeout."""
        assert self._session is not None
        try:
            ws = None
            async with asyncio.timeout(self.send_timeout_s):
                ws = await self._session.ws_connect(
                    link.endpoint, max_msg_size=self.max_message_bytes * 4, heartbeat=None
                )
                hello = p.Hello(
                    network_id=self.network_id,
                    instance_id=self.instance_id,
                    token=self.auth_token,
                    epoch=self.epoch,
                    resume=link.resume,
                )
                await ws.send_bytes(p.encode([hello]))
                m = await ws.receive()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if ws is not None:
                await ws.close()
            raise ConnectionTimeout(
                f"cannot reach {link.network_id} at {link.endpoint}: {exc}"
            ) from None
        try:
            frames = p.decode(m.data) if m.type == aiohttp.WSMsgType.BINARY else []
        except p.ProtocolError:
            frames = []
        if not frames or not isinstance(frames[0], p.Welcome):
            await ws.close()
            reason = (
                frames[0].reason if frames and isinstance(frames[0], p.Denied) else "no welcome"
            )
            raise AuthenticationFailed(f"{link.network_id} refused the link: {reason}")
        welcome = frames[0]
        assert isinstance(welcome, p.Welcome)
        if (welcome.network_id, welcome.instance_id) != (link.network_id, link.instance_id):
            # Another process at the address the registry gave (a stale entry, a reused
            # port): it is not the instance our messages are for.
            await ws.close()
            raise AuthenticationFailed(
                f"{link.endpoint} answered as {welcome.network_id}/{welcome.instance_id}, "
                f"not {link.network_id}/{link.instance_id}"
            )
        link.resume = welcome.resume
        link.attach(ws, welcome.epoch)
        link.reader = asyncio.create_task(self._read(link, ws), name=f"read-{link.network_id}")

    async def _read(self, link: _Link, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            await link.read(ws)
        finally:
            link.detach(ws)

    async def _keep(self, link: _Link) -> None:
        """Reconnect a link we opened while it has something to send. After REDIALS
        failed tries the instance is taken for gone: what waits fails with
        ConnectionTimeout (a failover alias sends it to the next network) and the network
        is looked up again in the registry at its next use."""
        delay = 0.05
        tries = 0
        while not link.connected.is_set() and (link.waiting or link.outbox.unacked or link._pongs):
            try:
                await self._dial(link)
                return
            except AuthenticationFailed:
                log.error("%s: refused our token; not retrying", link.network_id)
                return
            except WaypostError as exc:
                tries += 1
                log.info("%s: reconnecting (%d): %s", link.network_id, tries, exc)
                if tries >= REDIALS:
                    self._give_up(link, str(exc))
                    return
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(RECONNECT_MAX_S, delay * 2)

    def _give_up(self, link: _Link, why: str) -> None:
        for net, used in list(self._by_network.items()):
            if used is link:
                del self._by_network[net]
        for seq in list(link.waiting):
            link.settle(seq, ConnectionTimeout(f"{link.network_id}: instance gone ({why})"))
        link.outbox.unacked.clear()

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_message_bytes * 4)
        await ws.prepare(request)
        if len(self._server_ws) >= self.max_connections:
            await ws.send_bytes(p.encode([p.Denied(reason="too many connections")]))
            await ws.close()
            return ws
        try:
            async with asyncio.timeout(self.send_timeout_s):
                m = await ws.receive()
            frames = p.decode(m.data) if m.type == aiohttp.WSMsgType.BINARY else []
        except (TimeoutError, p.ProtocolError):
            frames = []
        hello = frames[0] if frames else None
        if not isinstance(hello, p.Hello):
            await ws.close()
            return ws
        if not hmac.compare_digest(hello.token.encode(), self.auth_token.encode()):
            log.warning("refused a link from %s: wrong token", hello.network_id)
            await ws.send_bytes(p.encode([p.Denied(reason="authentication failed")]))
            await ws.close()
            return ws
        # A hello's claim is only a name: it never reaches a link another connection opened
        # unless it shows that link's secret (its own reconnect), so no peer can take over
        # a live link or receive what was meant for another.
        link = self._inbound.get(hello.resume) if hello.resume else None
        if link is None or (link.network_id, link.instance_id, link.peer_epoch) != (
            hello.network_id, hello.instance_id, hello.epoch,
        ):  # fmt: skip
            link = _Link(self, hello.network_id, hello.instance_id)
            link.resume = secrets.token_urlsafe(18)
            self._add_link(self._inbound, link.resume, link)
        welcome = p.Welcome(
            network_id=self.network_id, instance_id=self.instance_id, epoch=self.epoch,
            resume=link.resume,
        )  # fmt: skip
        await ws.send_bytes(p.encode([welcome]))
        link.attach(ws, hello.epoch)
        self._server_ws.add(ws)
        try:
            await link.read(ws)
        finally:
            self._server_ws.discard(ws)
            link.detach(ws)
        return ws

    async def _watch_health(self) -> None:
        """Ping the links we use every ``health_check_interval``; a remote actor whose
        network does not answer is marked unavailable, and its network is looked up
        again in the registry (every ``refresh_interval`` at most) until it answers."""
        every = _seconds(self.config.health_check_interval)
        refresh = _seconds(self.config.refresh_interval)
        looked: dict[str, float] = {}
        while True:
            await asyncio.sleep(every)
            try:
                for network_id in {r.network_id for r in self._remote.values()}:
                    ok = True
                    link = self._by_network.get(network_id)
                    try:
                        if link is None:
                            now = time.monotonic()
                            if now - looked.get(network_id, 0.0) < refresh:
                                continue
                            looked[network_id] = now
                            link = await self._link_to(network_id)
                        await link.ping(_seconds(self.config.timeout))
                    except WaypostError as exc:
                        ok = False
                        log.info("%s: %s does not answer: %s", self.network_id, network_id, exc)
                        if link is not None and self._by_network.get(network_id) is link:
                            del self._by_network[network_id]  # look it up again
                    for ref in self._remote.values():
                        if ref.network_id == network_id:
                            ref.available = ok
            except Exception:  # never end the watch silently
                log.exception("%s: health check failed", self.network_id)

    def _add_link(self, table: dict[Any, _Link], key: Any, link: _Link) -> None:
        """Remember a link; past MAX_LINKS in its table, forget disconnected ones with
        nothing in flight (instances that came and went, as pods do)."""
        table[key] = link
        if len(table) <= MAX_LINKS:
            return
        for k, old in list(table.items()):
            if len(table) <= MAX_LINKS:
                break
            if old is not link and not old.connected.is_set() and not old.waiting:
                del table[k]
                for net, used in list(self._by_network.items()):
                    if used is old:
                        del self._by_network[net]
                task = asyncio.ensure_future(old.close())
                task.add_done_callback(_ignore_send_error)

    async def ping(self, network_id: str) -> float:
        """The round trip to ``network_id`` in milliseconds."""
        return await (await self._link_to(network_id)).ping()

    # --- status ------------------------------------------------------------------------------

    def bridge_status(self) -> dict[str, Any]:
        return {
            "network_id": self.network_id,
            "instance_id": self.instance_id,
            "endpoint": self.endpoint,
            "links": [
                {
                    "network_id": link.network_id,
                    "instance_id": link.instance_id,
                    "direction": direction,
                    "state": link.state,
                    "latency_ms": link.latency_ms,
                    "queued": len(link.outbox.unacked),
                    "sent": link.sent,
                    "received": link.received,
                }
                for direction, links in (("out", self._links), ("in", self._inbound))
                for link in links.values()
            ],
        }

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "serving", "network_id": self.network_id})

    async def _status(self, request: web.Request) -> web.Response:
        body = {
            **self.bridge_status(),
            "actors": sorted(self._actors),
            "remote_actors": [vars(r) for r in self._remote.values()],
            "handled": self.handled,
            "registered": self.registered,
        }
        return web.json_response(body)


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text or "{}")
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _network_info(i: Instance) -> NetworkInfo:
    m = i.meta
    try:
        load = float(m.get("load", "0"))
    except ValueError:
        load = 0.0
    return NetworkInfo(
        network_id=m.get("network_id", i.service),
        instance_id=m.get("instance_id", i.id),
        endpoint=m.get("endpoint", f"ws://{i.address}:{i.port}/ws"),
        capabilities=_split(m.get("capabilities")),
        tags=list(i.tags),
        metadata=_json(m.get("metadata")),
        status=i.effective_status.value,
        last_seen=i.updated_at,
        load=load,
    )


def _seconds(value: str | float) -> float:
    return float(value) if isinstance(value, int | float) else parse_duration(value)


__all__ = ["ActorInfo", "Network", "NetworkInfo", "RemoteActor"]
