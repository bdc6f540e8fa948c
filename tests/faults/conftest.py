"""The fault harness: network namespaces of our own with nftables rules inside them,
small file systems that fill up, and process signals. Real processes only.

A namespace is entered by the test's own thread (``setns(2)`` through ctypes): sockets
opened and processes started while inside live in it, so a test drives servers and
agents there with the usual clients, and rules made there touch nothing else. Every
namespace and mount is removed at the end, whatever happened. Where the machine cannot
create them (no root, no ``ip``/``nft``), the tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.agents import AgentProcess
from waypost.testing import ServerProcess, free_port

CLONE_NEWNET = 0x40000000
_names = itertools.count()


def _run(*cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)


class Netns:
    """One network namespace (its loopback up); ``inside()`` moves the calling thread in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net") as home, open(self.path) as there:
            if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name}")
            try:
                yield
            finally:
                if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back home")

    def nft(self, ruleset: str) -> None:
        """Load nftables rules in this namespace (``nft -f -``)."""
        done = _run("ip", "netns", "exec", self.name, "nft", "-f", "-", stdin=ruleset)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {self.name}: {done.stderr.strip()}")

    def flush(self) -> None:
        """Remove every rule: the partition heals."""
        self.nft("flush ruleset\n")

    def ip(self, *args: str) -> None:
        done = _run("ip", "netns", "exec", self.name, "ip", *args)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} in {self.name}: {done.stderr.strip()}")

    def forward(self) -> None:
        """Route between its links (a hub)."""
        done = _run("ip", "netns", "exec", self.name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if done.returncode != 0:
            raise RuntimeError(f"ip_forward in {self.name}: {done.stderr.strip()}")

    def add_address(self, address: str) -> None:
        done = _run("ip", "netns", "exec", self.name, "ip", "addr", "add", address, "dev", "lo")
        if done.returncode != 0:
            raise RuntimeError(f"ip addr in {self.name}: {done.stderr.strip()}")


_links = itertools.count()


def link(a: Netns, b: Netns, address_a: str, address_b: str) -> None:
    """A veth pair between two namespaces (made inside them: nothing touches the host's),
    ``address_a``/24 on a's end and ``address_b``/24 on b's, both up."""
    n = next(_links)
    end_a, end_b = f"wpa{os.getpid() % 10000}{n}", f"wpb{os.getpid() % 10000}{n}"
    a.ip("link", "add", end_a, "type", "veth", "peer", "name", end_b, "netns", b.name)
    a.ip("addr", "add", f"{address_a}/24", "dev", end_a)
    a.ip("link", "set", end_a, "up")
    b.ip("addr", "add", f"{address_b}/24", "dev", end_b)
    b.ip("link", "set", end_b, "up")


def isolation_rules(others: list[str]) -> str:
    """Drop every packet to or from ``others`` (loaded in the namespace being cut off)."""
    peers = ", ".join(others)
    return f"""
table inet fault {{
    chain in {{
        type filter hook input priority 0; policy accept;
        ip saddr {{ {peers} }} drop
    }}
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {{ {peers} }} drop
    }}
}}
"""


def partition_rules(address: str, port: int) -> str:
    """Drop every packet between ``address`` and ``port`` (both ways), nothing else."""
    return f"""
table inet fault {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {address} tcp dport {port} drop
        ip saddr {address} tcp sport {port} drop
    }}
}}
"""


def loss_rules(address: str, port: int, percent: int) -> str:
    """Drop ``percent`` % of packets between ``address`` and ``port``, at random."""
    return f"""
table inet fault {{
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {address} tcp dport {port} numgen random mod 100 < {percent} drop
        ip saddr {address} tcp sport {port} numgen random mod 100 < {percent} drop
    }}
}}
"""


def start_agents(
    server: str, count: int, tmp_path: Path, definitions: Callable[[int], str], *args: str
) -> list[AgentProcess]:
    """``count`` agents (nodes n0, n1, ...) on ``server``, agent i running the services
    of ``definitions(i)`` (a definition file's text, YAML or JSON)."""
    agents = []
    for a in range(count):
        conf = tmp_path / f"conf{a}"
        conf.mkdir()
        (conf / "services.yaml").write_text(definitions(a))
        agents.append(AgentProcess(server, f"n{a}", conf, tmp_path / f"agent{a}", *args).start())
    return agents


@contextlib.contextmanager
def registry_and_agents(
    tmp_path: Path, count: int, definitions: Callable[[int, int], str], *args: str
) -> Iterator[tuple[str, int, list[AgentProcess]]]:
    """Inside a namespace: a server on every address of a free port and ``count`` agents
    reaching it at 127.0.0.2 (so rules on that address cut the agents off, not the
    test's own client at 127.0.0.1), agent i running ``definitions(i, port)``; yields the
    test's URL, the port and the agents, all stopped at the end."""
    port = free_port()
    server = ServerProcess(["--no-dns"], tmp_path / "server").start(f"0.0.0.0:{port}")
    agents: list[AgentProcess] = []
    try:
        agents = start_agents(
            f"http://127.0.0.2:{port}", count, tmp_path, lambda a: definitions(a, port), *args
        )
        yield f"http://127.0.0.1:{port}", port, agents
    finally:
        for agent in agents:
            agent.stop()
        server.stop()


@pytest.fixture
def netns() -> Iterator[Callable[[], Netns]]:
    """Make namespaces (``netns()``); all are deleted at the end with their processes."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (make test installs iproute2 and nftables)")
    made: list[Netns] = []

    def make() -> Netns:
        name = f"wpf-{os.getpid()}-{next(_names)}"
        done = _run("ip", "netns", "add", name)
        if done.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
        ns = Netns(name)
        made.append(ns)
        up = _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        if up.returncode != 0:
            raise RuntimeError(f"lo up in {name}: {up.stderr.strip()}")
        return ns

    try:
        yield make
    finally:
        for ns in made:
            pids = _run("ip", "netns", "pids", ns.name).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _run("ip", "netns", "del", ns.name)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (unmounted at the end)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = _run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        _run("umount", "-l", str(mount))
