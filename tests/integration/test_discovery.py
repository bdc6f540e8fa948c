"""Node discovery for real: servers write (and sign) their registry files; every source
kind is read from a real thing (files, an HTTP server, a server's API, SRV and TXT
records served by dnsmasq, mDNS between processes); an agent joins with nothing but a
registry file, fails over to a second source's server and moves back when asked; signed
files verify and tampered or unsigned ones are refused; the environment and the data
directory's peers file are picked up with no flag."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_until
from tests.conftest import waypost_cli as cli
from tests.integration.agents import AgentProcess
from waypost import Client
from waypost.peers import Discovery
from waypost.testing import free_port


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def registry(server: ServerProcess) -> Path:
    return server.data_dir / "node-registry.json"


def peers(*sources: str, **kw: object) -> list[dict[str, object]]:
    d = Discovery(list(sources), **kw)  # type: ignore[arg-type]
    asyncio.run(d.refresh())
    return [p.as_dict() for p in d.peers.values()]


def test_a_server_writes_its_registry_file_and_serves_it(server: ServerProcess) -> None:
    entry = json.loads(registry(server).read_text())
    assert entry["node_id"] == server.node
    assert entry["api"] == server.url
    assert f"127.0.0.1:{server.port}" in entry["addresses"]
    assert server.dns is not None
    assert f"{server.dns[0]}:{server.dns[1]}" in entry["addresses"]
    assert entry["role"] == "server"
    assert entry["version"]
    assert entry["written_at"].endswith("Z")
    assert "signature" not in entry
    assert httpx.get(f"{server.url}/api/v1/node-registry").json() == entry
    done = cli("node-registry", "--data-dir", str(server.data_dir))
    assert done.returncode == 0
    assert json.loads(done.stdout) == entry
    done = cli("node-registry", "--data-dir", str(server.data_dir / "nope"))
    assert done.returncode != 0
    assert "node-registry.json" in done.stderr


def test_files_peers_files_urls_and_host_port(server: ServerProcess, tmp_path: Path) -> None:
    entry = json.loads(registry(server).read_text())
    dead = {"node_id": "dead", "api": f"http://127.0.0.1:{free_port()}"}
    peers_file = write(tmp_path / "peers.json", json.dumps([dead, entry]))
    # A registry file: one node, reachable.
    got = peers(str(registry(server)))
    assert [(p["node_id"], p["state"]) for p in got] == [(server.node, "reachable")]
    assert got[0]["latency_ms"] is not None
    # A peers file: the dead one goes into backoff, the live one is reachable.
    got = peers(str(peers_file))
    assert {p["node_id"]: p["state"] for p in got} == {"dead": "backoff", server.node: "reachable"}
    # An HTTP server serving the peers file.
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=web.serve_forever, name="registry-http")
    thread.start()
    try:
        url = f"http://127.0.0.1:{web.server_address[1]}/peers.json"
        got = peers(url)
        assert {p["node_id"] for p in got} == {"dead", server.node}
        assert all(p["source"] == url for p in got)
        missing = Discovery([f"http://127.0.0.1:{web.server_address[1]}/none.json"])
        asyncio.run(missing.refresh())
        assert "404" in next(iter(missing.source_errors.values()))
    finally:
        web.shutdown()
        web.server_close()
        thread.join(5)
    # HOST:PORT of a server's API: asked for its own entry.
    got = peers(f"127.0.0.1:{server.port}")
    assert [(p["node_id"], p["state"]) for p in got] == [(server.node, "reachable")]
    # Duplicates across sources: the first source wins; a broken source stops nothing.
    got = peers("/no/such/file.json", str(registry(server)), f"127.0.0.1:{server.port}")
    assert [p["node_id"] for p in got] == [server.node]
    assert got[0]["source"] == str(registry(server))


@pytest.fixture
def dnsmasq(tmp_path: Path, server: ServerProcess) -> Iterator[tuple[str, int]]:
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.path.exists(exe):
        pytest.skip("dnsmasq is not installed (make test installs dnsmasq-base)")
    port = free_port()
    conf = write(
        tmp_path / "dnsmasq.conf",
        "no-resolv\nno-hosts\nbind-interfaces\nlisten-address=127.0.0.1\n"
        f"port={port}\n"
        "host-record=reg1.example.test,127.0.0.1\n"
        f"srv-host=_waypost._tcp.example.test,reg1.example.test,{server.port},0,10\n"
        f'txt-record=_waypost._tcp.example.test,"node_id=txt-node","api={server.url}"\n',
    )
    proc = subprocess.Popen(
        [exe, "--keep-in-foreground", f"--conf-file={conf}", "--pid-file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import dns.resolver

        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], port, 0.5

        def up() -> bool:
            try:
                r.resolve("reg1.example.test", "A")
                return True
            except Exception:
                return False

        wait_until(up, 10, "dnsmasq to answer")
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


def test_srv_and_txt_records(server: ServerProcess, dnsmasq: tuple[str, int]) -> None:
    got = peers("srv:_waypost._tcp.example.test", dns_resolver=dnsmasq)
    by_id = {p["node_id"]: p for p in got}
    # The SRV target is asked for its entry (its node id); the TXT record names a node
    # of its own.
    assert by_id[server.node]["api"] == f"http://127.0.0.1:{server.port}"
    assert by_id[server.node]["state"] == "reachable"
    assert by_id["txt-node"]["api"] == server.url
    done = cli(
        "peers",
        "--join",
        "srv:_waypost._tcp.example.test",
        "--dns-resolver",
        f"{dnsmasq[0]}:{dnsmasq[1]}",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert {p["node_id"] for p in json.loads(done.stdout)["peers"]} == {server.node, "txt-node"}


def test_mdns_between_two_processes(tmp_path: Path) -> None:
    """A server announces itself with --advertise-mdns; another process (waypost peers)
    finds it. Both run in a network namespace the test creates, with only a
    multicast-capable loopback: mDNS goes to every interface, and tests keep off the
    machine's real ones."""
    with network_namespace() as run_in:
        import sys

        server = run_in(
            [sys.executable, "-m", "waypost", "server", "--http", "127.0.0.1:0", "--no-dns",
             "--data-dir", str(tmp_path / "ns-data"), "--node", "mdns-ns", "--advertise-mdns"],
        )  # fmt: skip
        try:
            assert server.stdout is not None
            assert "serving" in server.stdout.readline()
            probe = run_in([sys.executable, "-m", "waypost", "peers", "--join", "mdns", "--json"])
            out, errs = probe.communicate(timeout=60)
            assert probe.returncode == 0, errs
            found = json.loads(out)["peers"]
            assert any(p["node_id"] == "mdns-ns" and p["state"] == "reachable" for p in found)
        finally:
            server.terminate()
            server.communicate(timeout=10)  # and closes its pipes


@contextlib.contextmanager
def network_namespace() -> Iterator[Callable[[list[str]], subprocess.Popen[str]]]:
    """A network namespace of our own with a multicast-capable loopback; yields a
    function that starts a command inside it. Skips when this machine cannot make one."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    name = f"wp-mdns-{os.getpid()}"
    made = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mDNS needs a network namespace here and one cannot be made: {made.stderr}")
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "set", "lo", "multicast", "on"],
            ["route", "add", "224.0.0.0/4", "dev", "lo"],
        ):
            subprocess.run([ip, "netns", "exec", name, ip, *cmd], check=True)

        def run_in(cmd: list[str]) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [ip, "netns", "exec", name, *cmd],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        yield run_in
    finally:
        subprocess.run([ip, "netns", "del", name], capture_output=True)


def test_signed_files_verify_and_tampered_or_unsigned_are_refused(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    done = cli("keygen", "--out", str(keys))
    assert done.returncode == 0, done.stderr
    assert (keys / "node.key").stat().st_mode & 0o777 == 0o600
    assert cli("keygen", "--out", str(keys)).returncode != 0  # never overwrites a key
    pub = str(keys / "node.pub")
    srv = start_server("--sign-key", str(keys / "node.key"), "--no-dns", name="signed")
    signed = registry(srv)
    entry = json.loads(signed.read_text())
    assert entry["signature"]
    assert entry["public_key"] == (keys / "node.pub").read_text().strip()
    assert peers(str(signed), trust=[entry["public_key"]])[0]["state"] == "reachable"
    # Changed after signing: refused, with the file and the reason.
    tampered = write(tmp_path / "tampered.json", signed.read_text().replace('"server"', '"agent"'))
    got = peers(str(tampered), trust=[entry["public_key"]])
    assert got[0]["state"] == "rejected"
    assert str(tampered) in str(got[0]["last_error"])
    assert "changed after signing" in str(got[0]["last_error"])
    # Refused even with no trust key set: a signature that does not match is tampering.
    assert peers(str(tampered))[0]["state"] == "rejected"
    # Unsigned while a trust key is set.
    plain = write(tmp_path / "plain.json", json.dumps({"node_id": "x", "api": srv.url}))
    got = peers(str(plain), trust=[entry["public_key"]])
    assert got[0]["state"] == "rejected"
    assert "unsigned" in str(got[0]["last_error"])
    # waypost sign signs a peers file in place; then it verifies.
    done = cli("sign", "--key", str(keys / "node.key"), str(plain))
    assert done.returncode == 0, done.stderr
    assert peers(str(plain), trust=[entry["public_key"]])[0]["state"] == "reachable"
    # A client refuses to use a refused entry: no server for it, a clear error.
    with (
        Client(join=[str(tampered)], trust_keys=[pub], timeout_s=2) as c,
        pytest.raises(Exception, match="discovery"),
    ):
        c.services()
    # The CLI says which file and why.
    done = cli("peers", "--join", str(tampered), "--trust-key", pub)
    assert done.returncode != 0
    assert "tampered.json" in done.stdout + done.stderr
    assert "changed after" in done.stdout + done.stderr


def test_env_and_the_data_dir_peers_file_need_no_flag(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = {"WAYPOST_NODE_REGISTRIES": str(registry(server))}
    done = cli("peers", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["peers"][0]["node_id"] == server.node
    os.environ["WAYPOST_NODE_REGISTRIES"] = str(registry(server))
    try:
        with Client() as c:  # no URL, no join: the environment says where
            assert c.health()
            c.register(id="env-1", service="env", address="127.0.0.1", port=1)
    finally:
        del os.environ["WAYPOST_NODE_REGISTRIES"]
    data = tmp_path / "agent-data"
    write(data / "discovery-peers.json", json.dumps([json.loads(registry(server).read_text())]))
    done = cli("peers", "--data-dir", str(data), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["peers"][0]["state"] == "reachable"


def web_definition(port: int) -> str:
    return json.dumps([{"id": "svc-1", "service": "svc", "port": port}])


def test_an_agent_joins_with_a_registry_file_fails_over_and_moves_back(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    first = start_server("--no-dns", name="s1", node="first")
    second = start_server("--no-dns", name="s2", node="second")
    conf = write(tmp_path / "conf" / "svc.json", web_definition(9)).parent
    # Only a registry file: the agent registers with that server.
    solo = AgentProcess(
        "", "n1", conf, tmp_path / "a1", "--join", str(registry(first)), "--node-ttl", "5s"
    )
    cmd = solo.cmd
    i = cmd.index("--server")
    del cmd[i : i + 2]
    solo.start()
    try:
        wait_until(lambda: _has(first, "svc-1"), 15, "the agent to register with the server")
    finally:
        solo.stop()
    # Two sources, the first server dead: the second gets the services at once.
    first_file = write(tmp_path / "first.json", registry(first).read_text())
    first.stop()
    agent = AgentProcess(
        "",
        "n2",
        conf,
        tmp_path / "a2",
        "--join",
        str(first_file),
        "--join",
        str(registry(second)),
        "--node-ttl",
        "5s",
        "--sync-interval",
        "1s",
    )
    i = agent.cmd.index("--server")
    del agent.cmd[i : i + 2]
    agent.start()
    try:
        wait_until(lambda: _has(second, "svc-1"), 15, "failover to the second server")
        status = httpx.get(f"{agent.url}/status").json()
        states = {p["node_id"]: p["state"] for p in status["discovery"]["peers"]}
        assert states[second.node] == "reachable"
        assert states[first.node] in ("backoff", "unreachable")
        assert status["servers"][0] == second.url
        # The first comes back; asked to refresh (SIGHUP), the agent moves back to it.
        first.restart()
        write(first_file, registry(first).read_text())
        agent.signal(signal.SIGHUP)
        wait_until(lambda: _has(first, "svc-1"), 45, "the agent to move back to the first")
        status = httpx.get(f"{agent.url}/status").json()
        assert status["servers"][0] == first.url
    finally:
        agent.stop()


def _has(server: ServerProcess, iid: str) -> bool:
    try:
        return httpx.get(f"{server.url}/api/v1/instances/{iid}", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_agent_finds_the_server_from_its_data_dir_or_the_environment(
    server: ServerProcess, tmp_path: Path
) -> None:
    conf = write(tmp_path / "conf" / "svc.json", web_definition(9)).parent
    data = tmp_path / "agent-data"
    write(data / "discovery-peers.json", json.dumps([json.loads(registry(server).read_text())]))
    agent = AgentProcess("", "n3", conf, data, "--node-ttl", "5s")
    i = agent.cmd.index("--server")
    del agent.cmd[i : i + 2]  # no --server, no --join: the data directory says where
    agent.start()
    try:
        wait_until(lambda: _has(server, "svc-1"), 15, "the agent to register")
    finally:
        agent.stop()
    os.environ["WAYPOST_NODE_REGISTRIES"] = str(registry(server))
    try:
        other = AgentProcess("", "n4", conf, tmp_path / "agent-env", "--node-ttl", "5s")
        i = other.cmd.index("--server")
        del other.cmd[i : i + 2]
        other.start()
        try:
            status = httpx.get(f"{other.url}/status").json()
            assert status["servers"] == [server.url]
            assert status["discovery"]["sources"] == [str(registry(server))]
        finally:
            other.stop()
    finally:
        del os.environ["WAYPOST_NODE_REGISTRIES"]
