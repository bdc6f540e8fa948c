"""Helpers worth shipping for users' own tests: a server on a free port, in process or as
a real ``waypost server`` child process."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from waypost.server import WaypostServer
from waypost.settings import Settings


@contextlib.asynccontextmanager
async def running_server(
    *, store: str = "memory://", token: str = "", node: str = "test"
) -> AsyncIterator[WaypostServer]:
    """A Waypost server on 127.0.0.1 and a free port, stopped on exit; ``.url`` to reach it."""
    settings = Settings(http="127.0.0.1:0", store=store, token=token, node=node, dns="")
    server = WaypostServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class ManualClock:
    """A clock that moves only when told: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


SERVING = re.compile(r"serving (https?://\S+)")
DNS = re.compile(r"dns (\S+)\)")


class _Child:
    """A child process that is a context manager, blocking (``with``) or async (``async
    with``, which starts and stops it in a worker thread so the event loop runs on)."""

    proc: subprocess.Popen[str] | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self if self.proc is not None else await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


class ServerProcess(_Child):
    """A ``waypost server`` child process on loopback; ``url`` once it serves.

    Its stderr goes to ``DATA_DIR/server.log``. ``restart`` keeps the port and the data,
    ``kill9`` is the crash a durability test needs.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        data_dir: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        node: str = "test-node",
        stdin: int | None = None,
    ) -> None:
        """``stdin``: what the process reads as its standard input (a file descriptor, or
        ``subprocess.PIPE``; default: this process's)."""
        self.args = list(args)
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="waypost-"))
        self.env = dict(env or {})
        self.stdin = stdin
        self.node = node
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.dns: tuple[str, int] | None = None
        self.dns_listeners: list[tuple[str, int]] = []
        self.log = self.data_dir / "server.log"

    def start(self, http: str | None = None) -> Self:
        """Start and wait until the server announces its address (default: a free port
        outside the ephemeral range, so ``restart`` finds it free again)."""
        http = http or f"127.0.0.1:{free_port()}"
        cmd = [
            sys.executable,
            "-m",
            "waypost",
            "server",
            "--http",
            http,
            "--data-dir",
            str(self.data_dir),
            "--node",
            self.node,
            *self.args,
        ]
        if not any(a in ("--dns", "--no-dns") or a.startswith("--dns=") for a in self.args):
            # DNS on a free port of its own (the default 8600 would clash between
            # servers); a restart takes a new one (the old may be a client's port by now).
            cmd += ["--dns", "127.0.0.1:0"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, **self.env},
                stdin=self.stdin,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the server serves
        found = SERVING.search(line)
        if found is None:
            self.proc.kill()
            self.proc.wait()
            self._close_pipe()
            raise RuntimeError(f"waypost server did not start: {line!r}\n{self.log.read_text()}")
        self.url = found.group(1)
        dns_found = DNS.search(line)
        self.dns_listeners = []
        for where in dns_found.group(1).split(",") if dns_found else ():
            dns_host, _, dns_port = where.rpartition(":")
            self.dns_listeners.append((dns_host.strip("[]"), int(dns_port)))
        self.dns = self.dns_listeners[0] if self.dns_listeners else None
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        """The server process's id (its member name among servers ends with it)."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def kill9(self) -> None:
        """Kill the process with SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close_pipe()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None:
            return
        terminate(self.proc)
        self._close_pipe()

    def restart(self) -> ServerProcess:
        """Stop (if running) and start again on the same port and data."""
        port = self.port
        self.stop()
        return self.start(f"127.0.0.1:{port}")

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def server_process(*args: str, data_dir: str | Path | None = None) -> ServerProcess:
    """A ``ServerProcess`` to use with ``with`` or ``async with``: started on entry,
    stopped on exit."""
    return ServerProcess(args, data_dir)


class ProxyProcess(_Child):
    """A ``waypost proxy`` child process; ``url`` once it serves. Its stderr goes to
    ``log``. ``restart`` keeps the port."""

    def __init__(self, servers: str, *args: str, log: str | Path | None = None) -> None:
        self.servers = servers
        self.args = list(args)
        self.log = Path(log or tempfile.mkstemp(prefix="waypost-proxy-", suffix=".log")[1])
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.admin = ""  # with --admin: its URL

    def start(self, listen: str | None = None) -> Self:
        listen = listen or f"127.0.0.1:{free_port()}"
        cmd = [
            sys.executable,
            "-m",
            "waypost",
            "proxy",
            "--listen",
            listen,
            "--server",
            self.servers,
            *self.args,
        ]
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = SERVING.search(line)
        if found is None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            raise RuntimeError(f"waypost proxy did not start: {line!r}\n{self.log.read_text()}")
        self.url = found.group(1)
        admin = re.search(r"\(admin (http://\S+)\)", line)
        self.admin = admin.group(1) if admin else ""
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None:
            return
        terminate(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart(self) -> ProxyProcess:
        port = self.port
        self.stop()
        return self.start(f"127.0.0.1:{port}")


def proxy_process(servers: str, *args: str) -> ProxyProcess:
    """A ``ProxyProcess`` for ``servers`` (URL[,URL...]) to use with ``with`` or ``async
    with``: started on entry, stopped on exit."""
    return ProxyProcess(servers, *args)


_handed_out: collections.deque[int] = collections.deque(maxlen=4096)
_ports = random.Random()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def terminate(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; waits for the end either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A port free on 127.0.0.1 now, for TCP and UDP, below the kernel's ephemeral range:
    a process restarted on it (an etcd member, a server) must not find it taken by some
    outgoing connection's local port meanwhile, which an ephemeral port can be. Not one
    this process handed out recently."""
    low = _ephemeral_low()
    for _ in range(500):
        port = _ports.randrange(10_000, max(10_001, low))
        if port in _handed_out:
            continue
        try:
            with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.append(port)
        return port
    with socket.socket() as s:  # a crowded range: take any
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdCluster:
    """A real etcd cluster of ``size`` members on loopback ports, data in ``data_dir``
    (a temporary directory by default): ``start()``, ``kill(i)``, ``restart(i)``,
    ``stop()``. ``url`` is the ``--store`` that names it; ``prefix`` sets the key prefix
    in it (tests sharing one cluster each take their own)."""

    def __init__(
        self,
        size: int = 3,
        data_dir: str | Path | None = None,
        *,
        hosts: Sequence[str] | None = None,
        tls: tuple[str | Path, str | Path, str | Path] | None = None,
        client_cert: tuple[str | Path, str | Path] | None = None,
    ) -> None:
        """``tls``: (certificate, key, CA) the members serve clients with over TLS; with
        ``client_cert`` (certificate, key) too, members require a client certificate the
        CA signed (``--client-cert-auth``), and the cluster's own calls present it."""
        self.tls = tuple(str(p) for p in tls) if tls is not None else None
        self.client_cert = tuple(str(p) for p in client_cert) if client_cert else None
        exe = shutil.which("etcd") or "/usr/bin/etcd"
        # Member i listens on hosts[i] (all 127.0.0.1 by default; distinct loopback
        # addresses let a fault test cut one member off by address).
        self.hosts = list(hosts or ["127.0.0.1"] * size)
        if len(self.hosts) != size:
            raise ValueError("hosts: one address per member")
        if not os.path.exists(exe):
            raise RuntimeError("etcd is not installed: run `make test` (installs etcd-server)")
        self.exe = exe
        self.size = size
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="waypost-etcd-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def endpoints(self) -> list[str]:
        return [f"{h}:{p}" for h, p in zip(self.hosts, self.client_ports, strict=True)]

    def url(self, prefix: str = "/waypost/") -> str:
        scheme = "etcds" if self.tls else "etcd"
        return f"{scheme}://" + ",".join(self.endpoints) + prefix

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    def _http_kw(self) -> dict[str, Any]:
        """httpx arguments for the members' client URLs."""
        if not self.tls:
            return {}
        from waypost.tls import client_context

        cert, key = self.client_cert or ("", "")
        return {"verify": client_context(self.tls[2], cert, key)}

    def _args(self, i: int) -> list[str]:
        peers = ",".join(f"m{n}=http://{self.hosts[n]}:{p}" for n, p in enumerate(self.peer_ports))
        client = f"{self._scheme}://{self.hosts[i]}:{self.client_ports[i]}"
        secure: list[str] = []
        if self.tls:
            secure = ["--cert-file", self.tls[0], "--key-file", self.tls[1],
                      "--trusted-ca-file", self.tls[2]]  # fmt: skip
            if self.client_cert:
                secure.append("--client-cert-auth")
        peer = f"http://{self.hosts[i]}:{self.peer_ports[i]}"
        return [
            self.exe,
            "--name", f"m{i}",
            "--data-dir", str(self.data_dir / f"m{i}"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", peers,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"waypost-{self.peer_ports[0]}",
            # Elections in a few hundred ms on loopback, not seconds.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--max-txn-ops", "10000",
            "--logger", "zap",
            "--log-outputs", str(self.data_dir / f"m{i}.log"),
            *secure,
        ]  # fmt: skip

    def start(self, timeout_s: float = 30.0) -> EtcdCluster:
        try:
            for i in range(self.size):
                self._spawn(i)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(
            self._args(i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def member_health(self, i: int) -> bool:
        import httpx

        try:
            r = httpx.get(
                f"{self._scheme}://{self.hosts[i]}:{self.client_ports[i]}/health",
                timeout=1,
                **self._http_kw(),
            )
            if r.status_code == 401:  # auth is on: /health answers only its users
                return self._status(i) is not None
            return bool(r.status_code == 200 and r.json().get("health") == "true")
        except (httpx.HTTPError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 30.0, members: Sequence[int] | None = None) -> None:
        """Until every running member (or those named) says it is healthy (has a leader)."""
        deadline = time.monotonic() + timeout_s
        want = [i for i in (members if members is not None else range(self.size))]
        while True:
            if all(self.procs[i] is not None and self.member_health(i) for i in want):
                return
            for i in want:
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    path = self.data_dir / f"m{i}.log"
                    log = path.read_text(errors="replace")[-2000:] if path.exists() else ""
                    raise RuntimeError(f"etcd member {i} exited:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd members {want} not healthy after {timeout_s}s")
            time.sleep(0.05)

    def leader(self) -> int:
        """The index of the member that leads now."""

        ids: dict[int, int] = {}
        leader = 0
        for i in range(self.size):
            if self.procs[i] is None or self.procs[i].poll() is not None:  # type: ignore[union-attr]
                continue
            body = self._status(i)
            if body is None:
                continue
            ids[int(body["header"]["member_id"])] = i
            leader = int(body.get("leader", 0))
        if leader not in ids:
            raise RuntimeError("no etcd member knows a leader")
        return ids[leader]

    def _status(self, i: int) -> dict[str, Any] | None:
        """Member ``i``'s maintenance status (with a leader), or None."""
        import httpx

        url = f"{self._scheme}://{self.hosts[i]}:{self.client_ports[i]}/v3/maintenance/status"
        try:
            body = httpx.post(url, json={}, timeout=2, **self._http_kw()).json()
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(body, dict) or "header" not in body or not body.get("leader"):
            return None
        return body

    def enable_auth(self, user: str, password: str, prefix: str = "/waypost/") -> None:
        """Turn etcd's auth on (``etcdctl auth enable``): a ``root`` user (password
        ``password``) and ``user`` with read-write on ``prefix`` only."""
        import grpc
        from aetcd import rpc

        from waypost.store import EtcdSecurity

        creds = None
        if self.tls:
            cert, key = self.client_cert or ("", "")
            creds = EtcdSecurity(ca_file=self.tls[2], cert_file=cert, key_file=key).credentials()
        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])

        async def go() -> None:
            target = self.endpoints[0]
            if creds is not None:
                channel = grpc.aio.secure_channel(target, creds)
            else:
                channel = grpc.aio.insecure_channel(target)
            async with channel:
                auth = rpc.AuthStub(channel)
                await auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=password))
                await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
                await auth.RoleAdd(rpc.AuthRoleAddRequest(name=user))
                perm = rpc.Permission(permType=rpc.Permission.READWRITE, key=start, range_end=end)
                await auth.RoleGrantPermission(
                    rpc.AuthRoleGrantPermissionRequest(name=user, perm=perm)
                )
                await auth.UserAdd(rpc.AuthUserAddRequest(name=user, password=password))
                await auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=user, role=user))
                await auth.AuthEnable(rpc.AuthEnableRequest())

        asyncio.run(go())

    def kill(self, i: int) -> None:
        """SIGKILL member ``i``, as a crash would."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.procs[i] = None

    def restart(self, i: int) -> None:
        """Start member ``i`` again on its data (after ``kill``)."""
        self.kill(i)
        self._spawn(i)

    def stop(self) -> None:
        for i in range(self.size):
            proc = self.procs[i]
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.procs[i] = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
