"""TLS beyond the server's listener: an agent's status port, the proxy's listener and its
https upstreams, and actor-network links over wss:// with mutual TLS, all with
certificates made by ``waypost tls``."""

from __future__ import annotations

import asyncio
import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, instance, make_pki, wait_until
from tests.conftest import waypost_cli as waypost
from tests.integration.test_actors import Sink
from waypost import Client
from waypost.actors import Actor, Context, Network
from waypost.testing import ProxyProcess


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = make_pki(tmp_path_factory.mktemp("pki"), servers=["upstream"],
                 clients=["agent1", "net-a", "net-b"])  # fmt: skip
    make_pki(d / "other", clients=["stranger"])
    return d


def ca_context(pki: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki / "ca.pem"))


def test_an_agents_status_port_serves_tls_with_its_certificate(
    server: ServerProcess, pki: Path, tmp_path: Path
) -> None:
    from tests.integration.agents import AgentProcess

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "db.json").write_text('[{"id": "db-a", "service": "db", "port": 5432}]')
    agent = AgentProcess(
        server.url, "n1", conf, tmp_path / "agent", "--tls-cert", str(pki / "agent1.pem"),
        "--tls-key", str(pki / "agent1-key.pem"), "--http", "127.0.0.1:0",
    ).start()  # fmt: skip
    try:
        assert agent.url.startswith("https://")
        got = httpx.get(f"{agent.url}/status", verify=ca_context(pki), timeout=10)
        assert got.status_code == 200
        assert got.json()["node"] == "n1"
        with pytest.raises(httpx.HTTPError):
            httpx.get(agent.url.replace("https://", "http://") + "/status", timeout=5)
    finally:
        agent.stop()


@pytest.fixture
def https_upstream(pki: Path) -> Iterator[int]:
    """A plain Python HTTPS server (the ``upstream`` server certificate) on loopback."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"backend": "secure"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "upstream.pem", pki / "upstream-key.pem")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_proxy_serves_tls_and_dials_https_upstreams(
    server: ServerProcess, pki: Path, https_upstream: int
) -> None:
    with Client(server.url) as c:
        c.register(instance("secure-1", "secure", address="127.0.0.1", port=https_upstream,
                            meta={"scheme": "https"}))  # fmt: skip
    proxy = ProxyProcess(
        server.url, "--tls-cert", str(pki / "agent1.pem"), "--tls-key",
        str(pki / "agent1-key.pem"), "--upstream-tls-ca", str(pki / "ca.pem"),
    ).start()  # fmt: skip
    try:
        assert proxy.url.startswith("https://")
        with httpx.Client(verify=ca_context(pki), timeout=10) as h:
            got = wait_until(
                lambda: (
                    (r := h.get(f"{proxy.url}/x", headers={"Host": "secure"})).status_code == 200
                    and r
                ),
                10,
                "the proxied https answer",
            )
            assert got.json() == {"backend": "secure"}
        # The upstream's certificate must be one the given CA signed: without that CA,
        # the proxy refuses to talk to it.
    finally:
        proxy.stop()
    untrusting = ProxyProcess(server.url).start()
    try:
        got = httpx.get(f"{untrusting.url}/x", headers={"Host": "secure"}, timeout=10)
        assert got.status_code in (502, 503)
        assert "TLS" in got.text or "certificate" in got.text.lower()
    finally:
        untrusting.stop()


class Upper(Actor):
    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        await ctx.emit("out", str(payload).upper())


def test_actor_networks_link_over_wss_with_mutual_tls_and_a_registry_token(
    start_server: Callable[..., ServerProcess], pki: Path
) -> None:
    server = start_server("--acl-default-policy", "deny")
    done = waypost("acl", "bootstrap", "--server", server.url, "--json")
    assert done.returncode == 0, done.stderr
    import json

    admin = json.loads(done.stdout)["secret"]
    with Client(server.url, token=admin) as c:
        # A network's entries are served under the network id and its actors' names: the
        # token writes both (a network grant alone does not reach another service's name).
        c.acl_create_policy("lab", [
            {"resource": "network_prefix", "name": "lab-", "access": "write"},
            {"resource": "service_prefix", "name": "lab-", "access": "write"},
            {"resource": "service", "name": "upper", "access": "write"},
            {"resource": "service", "name": "sink", "access": "write"},
        ])  # fmt: skip
        token = c.acl_create_token(["lab"]).secret

    def net(name: str, cert: str, ca: Path | None = None) -> Network:
        return Network(
            name, instance_id=f"{name}-1", discovery=[server.url], auth_token="links",
            registry_token=token, tls_cert=str(pki / f"{cert}.pem"),
            tls_key=str(pki / f"{cert}-key.pem"), tls_ca=str(ca or pki / "ca.pem"),
        )  # fmt: skip

    async def go() -> None:
        a, b = net("lab-a", "net-a"), net("lab-b", "net-b")
        b.add_node("upper", Upper())
        sink = Sink()
        a.add_node("sink", sink)
        async with a, b:
            assert a.endpoint.startswith("wss://")
            assert b.endpoint.startswith("wss://")
            alias = await a.register_remote_actor("upper", "lab-b")
            a.add_connection((alias, "out"), ("sink", "in"))
            await a.send(alias, "in", "over tls")
            assert sink.got == ["OVER TLS"]
            # A network whose certificate another CA signed cannot link to lab-b.
            stranger = Network(
                "lab-x", instance_id="lab-x-1", discovery=[server.url], auth_token="links",
                registry_token=token, tls_cert=str(pki / "other" / "stranger.pem"),
                tls_key=str(pki / "other" / "stranger-key.pem"), tls_ca=str(pki / "ca.pem"),
            )  # fmt: skip
            async with stranger:
                with pytest.raises(Exception):  # noqa: B017, PT011 (any refusal will do)
                    await stranger.send_remote("lab-b", "upper", "in", "let me in")
        # Without the registry token, the network cannot register under default deny.
        bare = Network("lab-c", instance_id="lab-c-1", discovery=[server.url])
        with pytest.raises(Exception):  # noqa: B017, PT011
            await bare.start()
        await bare.stop()

    asyncio.run(go())
