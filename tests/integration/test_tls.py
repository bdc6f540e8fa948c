"""TLS on the server's HTTP listener, with certificates made by ``waypost tls``: curl with
the CA talks to it, plain HTTP is refused, TLS below 1.2 and weak ciphers are refused,
and with ``--tls-verify-clients`` only clients holding a certificate from the CA get in."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, make_pki
from tests.conftest import waypost_cli as waypost


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a server certificate (server1) and a client certificate (agent1), and a
    second CA (other/) with a client certificate of its own (made once for the module)."""
    d = make_pki(tmp_path_factory.mktemp("tls"), servers=["server1"], clients=["agent1"])
    make_pki(d / "other", clients=["intruder"])
    return d


def test_tls_cli_writes_keys_for_the_owner_only_and_refuses_to_overwrite(pki: Path) -> None:
    for key in ("ca-key.pem", "server1-key.pem", "agent1-key.pem"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600
    again = waypost("tls", "ca", "create", "--dir", str(pki))
    assert again.returncode != 0
    assert "exists" in again.stderr
    neither = waypost("tls", "cert", "create", "--dir", str(pki), "--name", "x")
    assert neither.returncode != 0
    assert "--server" in neither.stderr
    no_ca = waypost("tls", "cert", "create", "--dir", str(pki / "none"), "--server", "--name", "x")
    assert no_ca.returncode != 0
    assert "waypost tls ca create" in no_ca.stderr


def tls_server(start: Callable[..., ServerProcess], pki: Path, *more: str) -> ServerProcess:
    return start(
        "--tls-cert", str(pki / "server1.pem"), "--tls-key", str(pki / "server1-key.pem"), *more
    )


def test_curl_with_the_ca_talks_to_the_server_and_plain_http_is_refused(
    start_server: Callable[..., ServerProcess], pki: Path
) -> None:
    server = tls_server(start_server, pki)
    assert server.url.startswith("https://")
    done = subprocess.run(
        ["curl", "-sS", "--cacert", str(pki / "ca.pem"), f"{server.url}/health"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"status"' in done.stdout or "ok" in done.stdout
    # Without the CA, verification fails.
    assert subprocess.run(["curl", "-sS", f"{server.url}/health"], capture_output=True,
                          timeout=30).returncode != 0  # fmt: skip
    # Plain HTTP to the TLS port gets no answer.
    plain = server.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/health", timeout=5)
    # The Python client with the CA: writes and reads work as over HTTP.
    ca = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with httpx.Client(base_url=server.url, verify=ca, timeout=10) as http:
        body = {"service": "web", "address": "10.0.0.1", "port": 80}
        assert http.put("/api/v1/instances/web-1", json=body).status_code == 200
        assert [i["id"] for i in http.get("/api/v1/services/web").json()] == ["web-1"]


def handshake(server: ServerProcess, ctx: ssl.SSLContext) -> str:
    """A TLS handshake with ``ctx``; the negotiated version."""
    host = "127.0.0.1"
    with (
        socket.create_connection((host, server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return str(tls.version())


def test_no_tls_below_1_2_and_no_weak_ciphers(
    start_server: Callable[..., ServerProcess], pki: Path
) -> None:
    server = tls_server(start_server, pki)
    ca = str(pki / "ca.pem")
    good = ssl.create_default_context(cafile=ca)
    assert handshake(server, good) in ("TLSv1.2", "TLSv1.3")
    old = ssl.create_default_context(cafile=ca)
    with warnings.catch_warnings():  # asking for old TLS is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(server, old)
    for weak in ("NULL:@SECLEVEL=0", "EXPORT:@SECLEVEL=0", "AES128-SHA:@SECLEVEL=0",
                 "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"):  # fmt: skip
        ctx = ssl.create_default_context(cafile=ca)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # 1.3 suites are fixed (and strong)
        try:
            ctx.set_ciphers(weak)
        except ssl.SSLError:
            continue  # this OpenSSL has none of them at all
        with pytest.raises((ssl.SSLError, OSError)):
            handshake(server, ctx)


def test_mutual_tls_lets_in_only_clients_with_a_certificate_from_the_ca(
    start_server: Callable[..., ServerProcess], pki: Path
) -> None:
    server = tls_server(start_server, pki, "--tls-ca", str(pki / "ca.pem"), "--tls-verify-clients")
    ca = str(pki / "ca.pem")
    body = {"service": "web", "address": "10.0.0.1", "port": 80}
    # No certificate: refused in the handshake.
    plain = ssl.create_default_context(cafile=ca)
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=plain, timeout=5) as anon:
        anon.get(f"{server.url}/health")
    # A certificate from another CA: refused.
    other = ssl.create_default_context(cafile=ca)
    other.load_cert_chain(pki / "other" / "intruder.pem", pki / "other" / "intruder-key.pem")
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=other, timeout=5) as intruder:
        intruder.put(f"{server.url}/api/v1/instances/x-1", json=body)
    # The CA's client certificate: in, and it registers.
    mine = ssl.create_default_context(cafile=ca)
    mine.load_cert_chain(pki / "agent1.pem", pki / "agent1-key.pem")
    with httpx.Client(verify=mine, timeout=10) as agent:
        assert agent.put(f"{server.url}/api/v1/instances/web-1", json=body).status_code == 200
        assert agent.get(f"{server.url}/api/v1/instances/x-1").status_code == 404


def test_tls_settings_are_checked_at_start(
    start_server: Callable[..., ServerProcess], pki: Path
) -> None:
    for args, words in (
        (["--tls-cert", str(pki / "server1.pem")], "together"),
        (["--tls-cert", str(pki / "server1.pem"), "--tls-key", str(pki / "nope.pem")], "nope"),
        (["--tls-cert", str(pki / "server1.pem"), "--tls-key", str(pki / "agent1-key.pem")],
         "not a certificate and its key"),
        (["--tls-cert", str(pki / "server1.pem"), "--tls-key", str(pki / "server1-key.pem"),
          "--tls-verify-clients"], "--tls-ca"),
    ):  # fmt: skip
        done = waypost("server", "--http", "127.0.0.1:0", "--no-dns", *args)
        assert done.returncode != 0
        assert words in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_agent_with_a_client_certificate_registers_over_mutual_tls(
    start_server: Callable[..., ServerProcess], pki: Path, tmp_path: Path
) -> None:
    from tests.conftest import wait_until
    from tests.integration.agents import AgentProcess

    server = tls_server(start_server, pki, "--tls-ca", str(pki / "ca.pem"), "--tls-verify-clients")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "db.json").write_text('[{"id": "db-a", "service": "db", "port": 5432}]')
    tls_args = ["--tls-ca", str(pki / "ca.pem")]
    mine = [*tls_args, "--tls-cert", str(pki / "agent1.pem"),
            "--tls-key", str(pki / "agent1-key.pem")]  # fmt: skip
    agent = AgentProcess(server.url, "n1", conf, tmp_path / "agent", *mine).start()
    try:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.load_cert_chain(pki / "agent1.pem", pki / "agent1-key.pem")
        with httpx.Client(base_url=server.url, verify=ctx, timeout=10) as http:
            wait_until(
                lambda: [i["id"] for i in http.get("/api/v1/services/db").json()] == ["db-a"],
                15,
                "the agent's registration over mutual TLS",
            )
    finally:
        agent.stop()
    # An agent with the CA but no certificate of its own is refused: it never registers.
    (conf / "db.json").write_text('[{"id": "db-b", "service": "db", "port": 5433}]')
    bare = AgentProcess(server.url, "n2", conf, tmp_path / "agent2", *tls_args).start()
    try:
        sync = wait_until(
            lambda: (
                (s := httpx.get(f"{bare.url}/status", timeout=5).json()["sync"])["last_error"] and s
            ),
            15,
            "the refused agent to say why",
        )
        assert sync["state"] in ("disconnected", "failed"), sync
    finally:
        bare.stop()


def test_the_security_pages_sdk_example_runs(
    start_server: Callable[..., ServerProcess], pki: Path
) -> None:
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    server = tls_server(start_server, pki, "--tls-ca", str(pki / "ca.pem"), "--tls-verify-clients")
    code = code.replace("https://registry.lan:8500", server.url)
    code = code.replace("tls/", f"{pki}/").replace("agent-1", "agent1")
    exec(compile(code, "security.md", "exec"), {"__name__": "docs_example"})


def peer_serial(server: ServerProcess, ca: str) -> int:
    from cryptography import x509

    host = "127.0.0.1"
    ctx = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection((host, server.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_sighup_reloads_the_certificate_without_dropping_connections(
    start_server: Callable[..., ServerProcess], pki: Path, tmp_path: Path
) -> None:
    import os
    import shutil
    import signal

    from tests.conftest import wait_until

    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live-key.pem"
    shutil.copy(pki / "server1.pem", live_cert)
    shutil.copy(pki / "server1-key.pem", live_key)
    server = start_server("--tls-cert", str(live_cert), "--tls-key", str(live_key))
    ca = str(pki / "ca.pem")
    first = peer_serial(server, ca)
    done = waypost("tls", "cert", "create", "--dir", str(pki), "--server", "--name", "server2")
    assert done.returncode == 0, done.stderr
    assert server.proc is not None
    with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=ca)) as http:
        assert http.get("/health").status_code == 200  # a kept-alive connection
        shutil.copy(pki / "server2.pem", live_cert)
        shutil.copy(pki / "server2-key.pem", live_key)
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: peer_serial(server, ca) != first, 10, "the new certificate")
        assert http.get("/health").status_code == 200  # the open connection goes on
        second = peer_serial(server, ca)
        # A key that cannot be read: the old certificate stays, the server says so.
        live_key.write_text("not a key")
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: "not reloaded" in server.log.read_text(), 10, "the log line")
        assert peer_serial(server, ca) == second
        assert server.proc.poll() is None
        assert http.get("/health").status_code == 200


def test_sighup_without_tls_does_not_stop_the_server(
    start_server: Callable[..., ServerProcess],
) -> None:
    import os
    import signal

    from tests.conftest import wait_until

    server = start_server()
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_until(lambda: "no TLS files to reload" in server.log.read_text(), 10, "the log line")
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_cli_commands_talk_to_a_mutual_tls_server_with_the_tls_environment(
    start_server: Callable[..., ServerProcess], pki: Path, tmp_path: Path
) -> None:
    import os

    server = tls_server(start_server, pki, "--tls-ca", str(pki / "ca.pem"), "--tls-verify-clients")
    env = {
        **os.environ,
        "WAYPOST_TLS_CA": str(pki / "ca.pem"),
        "WAYPOST_TLS_CERT": str(pki / "agent1.pem"),
        "WAYPOST_TLS_KEY": str(pki / "agent1-key.pem"),
    }
    base = [sys.executable, "-m", "waypost"]
    defs = tmp_path / "cli.yaml"
    defs.write_text("instances:\n  - {id: cli-1, service: cli, address: 10.0.0.1, port: 80}\n")
    reg = subprocess.run(
        [*base, "register", "--server", server.url, "--file", str(defs)],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    listed = subprocess.run(
        [*base, "services", "--server", server.url], capture_output=True, text=True, env=env,
        timeout=30,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "cli" in listed.stdout
    # Without the client certificate: a one-line error, non-zero exit.
    bare = {k: v for k, v in env.items() if k not in ("WAYPOST_TLS_CERT", "WAYPOST_TLS_KEY")}
    refused = subprocess.run(
        [*base, "services", "--server", server.url], capture_output=True, text=True, env=bare,
        timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_sighup_after_a_ca_is_replaced_stops_trusting_the_old_one(
    start_server: Callable[..., ServerProcess], pki: Path, tmp_path: Path
) -> None:
    """Security review finding 13: a reload loaded the CA file into the live context,
    which only adds: a CA removed from the file stayed trusted. A reload now builds a
    fresh context for new handshakes (the client connects by IP, so sends no SNI)."""
    import os
    import shutil
    import signal

    from tests.conftest import wait_until

    live_ca = tmp_path / "clients-ca.pem"
    shutil.copy(pki / "ca.pem", live_ca)
    server = tls_server(start_server, pki, "--tls-ca", str(live_ca), "--tls-verify-clients")
    assert server.proc is not None

    def status_with(cert: Path) -> int | None:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        ctx.load_cert_chain(cert.with_suffix(".pem"), cert.parent / f"{cert.name}-key.pem")
        try:
            with httpx.Client(verify=ctx, timeout=5) as http:
                return http.get(f"{server.url}/health").status_code
        except httpx.HTTPError:
            return None  # refused in the handshake

    agent1, intruder = pki / "agent1", pki / "other" / "intruder"
    assert status_with(agent1) == 200
    assert status_with(intruder) is None
    shutil.copy(pki / "other" / "ca.pem", live_ca)  # the clients' CA is now the other one
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_until(lambda: status_with(intruder) == 200, 10, "the new CA trusted")
    assert status_with(agent1) is None, "the removed CA is still trusted"
    assert server.proc.poll() is None
