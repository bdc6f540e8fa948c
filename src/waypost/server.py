"""The composition root: one process wiring store, catalog, registry and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from waypost.acl import AclState
from waypost.aio import until_signalled
from waypost.api.acl import Limits
from waypost.api.app import API, NODE_ENTRY, build_app
from waypost.api.browser import BrowserGuard, is_loopback
from waypost.api.conns import IDLE_TIMEOUT_S, ConnectionLimits
from waypost.api.hot import FastSite, HotPath, PlainReads
from waypost.catalog import Catalog
from waypost.checking import CheckHost
from waypost.dns.server import DnsServer
from waypost.dns.workers import DnsWorkers, worker_command
from waypost.errors import WaypostError
from waypost.health.files import CheckFiles
from waypost.members import Members, member_id
from waypost.model import DnsStatus
from waypost.processes import Workers
from waypost.registry import Registry
from waypost.settings import Settings
from waypost.store import EtcdSecurity, Store, open_store
from waypost.zones import CustomZones

if TYPE_CHECKING:
    from waypost.peers.mdns import MdnsAdvertiser
    from waypost.tls import LiveContext

log = logging.getLogger("waypost.server")

# Set in the environment of the HTTP workers a server starts (``--http-workers``): such
# a process binds the port the server already holds, and starts no workers of its own.
HTTP_WORKER_ENV = "WAYPOST_HTTP_WORKER"


class WaypostServer:
    """A running registry server; ``start`` then ``stop`` (or ``async with``)."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, http_worker: bool = False
    ) -> None:
        self.settings = settings
        # An HTTP worker: one of the processes another server started to share its port.
        self.http_worker = http_worker
        self.ssl_context: ssl.SSLContext | None = None
        self._tls: LiveContext | None = None
        self.store = store or open_store(
            settings.store,
            data_dir=Path(settings.data_dir),
            event_window_s=settings.event_window_s(),
            etcd_prefix=settings.etcd_prefix,
            etcd_security=EtcdSecurity(
                ca_file=settings.etcd_ca,
                cert_file=settings.etcd_cert,
                key_file=settings.etcd_key,
                user=settings.etcd_user,
                password=settings.etcd_password,
            ),
        )
        self.catalog = Catalog()
        # The servers sharing the store (on etcd): each runs its share of the checks.
        self.members = Members(member_id(settings.node))
        self.registry = Registry(
            self.store,
            self.catalog,
            node_name=settings.node,
            command_checks=settings.enable_command_checks,
            check_files=CheckFiles(settings.check_files_dir or None),
            check_any_target=settings.check_any_target,
            custom_zones=CustomZones(settings.dns_custom_zones, own=settings.dns_domain),
            members=self.members,
        )
        # Checks of instances registered through the API (agents check their own).
        self.checks = CheckHost(self.registry, members=self.members)
        self.acl = AclState(
            self.catalog, default_policy=settings.acl_default_policy, legacy_token=settings.token
        )
        listeners = settings.dns_listeners()
        self.dns: DnsServer | None = None
        if listeners:
            self.dns = DnsServer(
                self.registry,
                listen=listeners,
                domain=settings.dns_domain,
                custom_zones=settings.dns_custom_zones,
                forward_clients=settings.dns_forward_clients,
                ttl_s=settings.dns_ttl_s(),
                allow_warning=settings.dns_allow_warning,
                recursors=settings.recursor_list(),
                reuse_port=settings.dns_workers > 1,
                acl=self.acl if settings.dns_acl == "anonymous" else None,
            )
        self.dns_workers: DnsWorkers | None = None
        self.http_workers: Workers | None = None
        self._runner: web.AppRunner | None = None
        self._mdns: MdnsAdvertiser | None = None
        self.url = ""

    async def start(self) -> None:
        await self.store.open()
        try:
            join = getattr(self.store, "join", None)
            if join is not None:
                await join(self.members)
            await self.registry.start()
            # What the load built lives as long as the server: out of the cyclic
            # collector's sight at once (a full collection walks every instance: 0.2 s
            # at 1,000,000), not only once serving starts.
            gc.freeze()
            if self.dns is not None:
                try:
                    await self.dns.start()
                except OSError as exc:
                    raise WaypostError(
                        f"cannot serve DNS on {self.settings.dns}: {exc.strerror or exc}"
                    ) from exc
            app = build_app(
                self.registry,
                token=self.settings.token,
                config=self.settings.redacted(),
                max_wait_s=self.settings.max_wait_s(),
                checks=self.checks,
                dns_status=self._dns_status,
                dns_counts=lambda: None if self.dns is None else self.dns.query_counts(),
                acl=self.acl,
                limits=Limits(self.settings.token_write_rate, self.settings.token_max_watches),
                browser=BrowserGuard(
                    loopback=is_loopback(self.settings.http_host_port()[0]),
                    allowed_hosts=self.settings.allowed_hosts.split(","),
                    allowed_origins=self.settings.allowed_origins.split(","),
                ),
            )
            # handler_cancellation: a client that hangs up frees its parked blocking
            # query or event stream at once, not when its wait runs out.
            self._runner = web.AppRunner(
                app,
                access_log=None,
                handle_signals=False,
                handler_cancellation=True,
                keepalive_timeout=IDLE_TIMEOUT_S,
            )
            await self._runner.setup()
            # The routes that carry load skip the router and the middleware (api/hot.py).
            server = self._runner.server
            assert server is not None
            server.request_handler = HotPath(app[API], server.request_handler)
            host, port = self.settings.http_host_port()
            # HTTP workers share the port (SO_REUSEPORT); the first binds only if no
            # other process holds it, so two servers never split one port by mistake.
            shared = self.http_worker or self.settings.http_workers > 1
            ssl_context = None
            if self.settings.tls_cert:
                from waypost.tls import LiveContext, server_context

                ssl_context = self.ssl_context = server_context(
                    self.settings.tls_cert,
                    self.settings.tls_key,
                    ca=self.settings.tls_ca,
                    verify_clients=self.settings.tls_verify_clients,
                )
                self._tls = LiveContext(ssl_context)
            limits = ConnectionLimits(per_client=self.settings.max_conns_per_client)
            app[API].connections = limits
            site = FastSite(
                self._runner,
                PlainReads(app[API]) if self.settings.plain_reads else None,
                limits,
                host=host,
                port=port,
                reuse_address=True,
                reuse_port=shared or None,
                backlog=4096,
                ssl_context=ssl_context,
            )
            try:
                if shared and not self.http_worker and port != 0:
                    _check_free(host, port)
                await site.start()
            except OSError as exc:
                raise WaypostError(
                    f"cannot serve HTTP on {self.settings.http}: {exc.strerror or exc}"
                ) from exc
        except BaseException:
            await self.stop()
            raise
        listening = site._server
        assert listening is not None
        sockets = getattr(listening, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.settings.tls_cert else "http"
        self.url = f"{scheme}://{shown}:{bound}"
        try:
            await self._announce(app, host, bound)
        except BaseException:
            await self.stop()
            raise
        if self.settings.http_workers > 1 and not self.http_worker:
            env = {
                **os.environ,
                **self.settings.as_env(),
                "WAYPOST_HTTP": f"{shown}:{bound}",
                "WAYPOST_HTTP_WORKERS": "1",
                "WAYPOST_DNS": "",
                "WAYPOST_DNS_WORKERS": "1",
                HTTP_WORKER_ENV: "1",
            }
            self.http_workers = Workers(
                [sys.executable, "-m", "waypost", "server"],
                self.settings.http_workers - 1,
                what="HTTP worker",
                env=env,
            )
            try:
                await self.http_workers.start()
            except BaseException:
                await self.stop()
                raise
        if self.dns is not None and self.settings.dns_workers > 1:
            local = self.url.replace("://0.0.0.0:", "://127.0.0.1:").replace(
                "://[::]:", "://[::1]:"
            )
            command = worker_command(
                local,
                self.dns.addresses(),
                domain=self.settings.dns_domain,
                custom_zones=self.settings.dns_custom_zones,
                forward_clients=self.settings.dns_forward_clients,
                ttl=self.settings.dns_ttl,
                allow_warning=self.settings.dns_allow_warning,
                recursors=[f"{h}:{p}" for h, p in self.settings.recursor_list()],
            )
            self.dns_workers = DnsWorkers(command, self.settings.dns_workers - 1)
            try:
                await self.dns_workers.start()
            except BaseException:
                await self.stop()
                raise

    def reload_tls(self) -> None:
        """SIGHUP: read the certificate, key and CA files again. New connections get them;
        open ones go on. A file that cannot be read keeps the old ones (and says so)."""
        if self._tls is None:
            log.info("SIGHUP: no TLS files to reload")
            return
        try:
            self._tls.reload(
                self.settings.tls_cert, self.settings.tls_key, ca=self.settings.tls_ca,
                verify_clients=self.settings.tls_verify_clients,
            )  # fmt: skip
        except WaypostError as exc:
            log.error("SIGHUP: TLS files not reloaded, the old ones stay: %s", exc)
            return
        log.info("SIGHUP: TLS certificate reloaded from %s", self.settings.tls_cert)

    async def _announce(self, app: web.Application, host: str, port: int) -> None:
        """Write ``{data_dir}/node-registry.json`` (signed with ``--sign-key``), serve it at
        ``/api/v1/node-registry``, and announce the server on mDNS when asked."""
        from waypost._version import __version__
        from waypost.peers.entry import REGISTRY_FILE, EntryError, registry_entry, write_registry
        from waypost.peers.signing import load_private, sign

        reachable = _reachable_host(host)
        shown = f"[{reachable}]" if ":" in reachable else reachable
        api = f"{'https' if self.settings.tls_cert else 'http'}://{shown}:{port}"
        addresses = [f"{shown}:{port}"]
        if self.dns is not None:
            addresses += [a.replace("0.0.0.0", reachable) for a in self.dns.addresses()]
        entry = registry_entry(
            self.settings.node, api, addresses, role="server", version=__version__
        )
        if self.settings.sign_key:
            try:
                entry = sign(entry, load_private(Path(self.settings.sign_key)))
            except EntryError as exc:
                raise WaypostError(f"--sign-key: {exc}") from None
        app[NODE_ENTRY].append(msgspec.json.encode(entry))
        if self.http_worker:
            return  # the server that started this worker writes the file and announces
        path = Path(self.settings.data_dir) / REGISTRY_FILE
        try:
            await asyncio.to_thread(write_registry, path, entry)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
        if self.settings.advertise_mdns:
            from waypost.peers.mdns import MdnsAdvertiser

            self._mdns = MdnsAdvertiser()
            props = {"node_id": self.settings.node, "api": api, "version": __version__,
                     "role": "server"}  # fmt: skip
            try:
                await self._mdns.start(self.settings.node, reachable, port, props)
            except OSError as exc:
                raise WaypostError(f"--advertise-mdns: cannot announce on mDNS ({exc})") from exc

    def _dns_status(self) -> DnsStatus | None:
        if self.dns is None:
            return None
        return self.dns.status(workers=self.settings.dns_workers)

    async def stop(self) -> None:
        if self._mdns is not None:
            await self._mdns.stop()
            self._mdns = None
        if self.http_workers is not None:
            await self.http_workers.stop()
            self.http_workers = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.dns_workers is not None:
            await self.dns_workers.stop()
            self.dns_workers = None
        if self.dns is not None:
            await self.dns.stop()
        await self.checks.close()
        await self.registry.stop()
        await self.store.close()

    async def __aenter__(self) -> WaypostServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, announcing the address on stdout once serving."""
    http_worker = os.environ.get(HTTP_WORKER_ENV) == "1"
    server = WaypostServer(settings, http_worker=http_worker)
    await server.start()  # (which freezes what it loaded out of the collector's sight)
    dns = f", dns {','.join(server.dns.addresses())}" if server.dns is not None else ""

    def announce() -> None:
        print(
            f"waypost: serving {server.url} (store {server.store.kind}, node {settings.node}{dns})",
            flush=True,
        )
        if not http_worker:
            print(f"waypost: dashboard {server.url}/ui/", flush=True)

    try:
        if http_worker:
            announce()
            await _until_signalled_or_orphaned()
        else:
            # Announced once the signal handlers are in place: a SIGHUP (or SIGTERM) sent
            # right after the announcement is handled, never the default action.
            await until_signalled(on_hup=server.reload_tls, ready=announce)
    finally:
        log.info("shutting down")
        await server.stop()


def _reachable_host(host: str) -> str:
    """The address others reach a listener on: itself, or for a wildcard this machine's
    address (loopback when it has no other)."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the route's source
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _check_free(host: str, port: int) -> None:
    """Raise EADDRINUSE if another process holds the TCP ``port``, even one that set
    SO_REUSEPORT (whose port we would otherwise join silently)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


async def _until_signalled_or_orphaned() -> None:
    """An HTTP worker's life: until a signal, or until the server that started it is
    gone (killed outright, it could not stop its workers: they stop themselves). The
    server holds the other end of this process's stdin: its end means the server's."""

    async def orphaned() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()
        log.warning("the server that started this HTTP worker is gone; stopping")

    tasks = [asyncio.create_task(until_signalled()), asyncio.create_task(orphaned())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run(settings: Settings) -> None:
    """Run ``serve`` on uvloop where available (4.5x the stdlib loop on UDP here)."""
    # Young collections every 10k allocations instead of 700: a registration storm
    # allocates fast, and with CPython's defaults full collections over a large catalog
    # put p99 write latency at 100 ms (bench/registry.py); with this, about 15 ms.
    gc.set_threshold(10_000, 20, 100)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
