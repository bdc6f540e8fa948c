"""Findings of the security review (each one request that stopped a server), each
attacked on a real server on loopback and shown to hold."""

from __future__ import annotations

import concurrent.futures
import json
import os
import resource
import socket
from collections.abc import Callable
from pathlib import Path

import dns.message
import httpx

from tests.conftest import ServerProcess, instance, wait_until, waypost_cli
from tests.integration.targets import HttpTarget
from waypost import Client


def _health_within(h: httpx.Client, seconds: float) -> None:
    """``/health`` answers 200 within ``seconds`` (a held event loop never answers)."""
    r = h.get("/health", timeout=seconds)
    assert r.status_code == 200, r.text


def test_a_check_naming_stdin_as_its_ca_file_cannot_hang_the_server(tmp_path: Path) -> None:
    """Finding 1: a server whose standard input is an open pipe (a terminal, ``docker run
    -i``, a pipeline) read ``ca_file: /dev/stdin`` on its event loop and hung for good,
    again after every restart. Now a path outside ``--check-files-dir`` is refused, and
    one under it is read without blocking, in a thread."""
    files = tmp_path / "check-files"
    files.mkdir()
    (files / "stdin.pem").symlink_to("/dev/stdin")
    os.mkfifo(files / "fifo.pem")
    r, w = os.pipe()  # the server's stdin: open, and nobody writes to it
    args = ["--no-dns", "--check-files-dir", str(files)]
    server = ServerProcess(args, tmp_path / "server", stdin=r).start()
    try:

        def https_check(ca_file: str) -> list[dict[str, object]]:
            return [{"https": "https://127.0.0.1:1/", "ca_file": ca_file, "interval": "100ms"}]

        with httpx.Client(base_url=server.url, timeout=5) as h:
            for path in ("/dev/stdin", "/proc/self/fd/0", "../outside.pem"):
                got = h.put(
                    "/api/v1/instances/hang1",
                    json=instance("hang1", address="127.0.0.1", checks=https_check(path)),
                )
                assert got.status_code == 403, got.text
                assert "outside the server's check files directory" in got.json()["message"]
            # Named under the directory: accepted, and refused when read (never waited on).
            for iid, name in (("link", "stdin.pem"), ("fifo", "fifo.pem")):
                got = h.put(
                    f"/api/v1/instances/{iid}",
                    json=instance(iid, address="127.0.0.1", checks=https_check(name)),
                )
                assert got.status_code == 200, got.text

            def outputs() -> dict[str, str]:
                return {i["id"]: i["output"] for i in h.get("/api/v1/instances").json()}

            wait_until(
                lambda: (
                    "leads outside" in outputs()["link"]
                    and "not a regular file" in outputs()["fifo"]
                ),
                10,
                "both checks to have run and failed",
            )
            for _ in range(5):
                _health_within(h, 1.0)
        # Restarted on the same data: the checks are loaded again, and still cannot hang it.
        server.restart()
        with httpx.Client(base_url=server.url, timeout=5) as h:
            for _ in range(5):
                _health_within(h, 1.0)
            assert "not a regular file" in h.get("/api/v1/instances/fifo").json()["output"]
    finally:
        server.stop()
        os.close(r)
        os.close(w)


def test_a_server_without_check_files_refuses_every_ca_file(tmp_path: Path) -> None:
    server = ServerProcess(["--no-dns"], tmp_path / "server").start()
    try:
        with httpx.Client(base_url=server.url, timeout=5) as h:
            check = {"https": "https://127.0.0.1:1/", "ca_file": "ca.pem"}
            got = h.put(
                "/api/v1/instances/a", json=instance("a", address="127.0.0.1", checks=[check])
            )
            assert got.status_code == 403
            assert "--check-files-dir" in got.json()["message"]
            assert h.get("/api/v1/instances/a").status_code == 404
    finally:
        server.stop()


def test_a_consul_filter_regex_cannot_hold_the_server(server: ServerProcess) -> None:
    """Finding 2: ``matches`` ran the client's pattern in Python's backtracking ``re`` on
    the event loop: ``(a|a)*b`` against 26 characters took 10 s, and ``/health`` waited as
    long. With RE2 both answer at once; a backtracking engine would not finish these
    (40 characters) in the test's lifetime."""
    with httpx.Client(base_url=server.url, timeout=5) as h:
        body = instance("w1", address="a" * 40, meta={"k": "a" * 40})
        assert h.put("/api/v1/instances/w1", json=body).status_code == 200
        for expr in ('ServiceMeta.k matches "(a|a)*b"', 'Address matches "(.?){9}(.?){9}(.?){9}X"'):
            got = h.get("/v1/catalog/service/web", params={"filter": expr})
            assert (got.status_code, got.json()) == (200, []), got.text
            _health_within(h, 1.0)
        got = h.get(
            "/v1/catalog/service/web", params={"filter": 'ServiceMeta.k matches "(a)\\\\1"'}
        )
        assert got.status_code == 400
        assert "bad regular expression" in got.text


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_flood_of_names_to_forward_cannot_exhaust_the_servers_files(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Finding 3: each forwarded query held a socket of its own for up to 2 s per
    recursor, with no cap: a flood of random names took a server to 19,046 open files in
    a second, and /health and writes failed under systemd's 1,024. Now at most
    MAX_FORWARDS are in flight; the rest are dropped, counted in /status."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a recursor that never answers
    silent.bind(("127.0.0.1", 0))
    host, port = silent.getsockname()
    recursor = f"{host}:{port}"
    try:
        server = start_server("--dns", "127.0.0.1:0", "--recursor", recursor)
        assert server.dns is not None
        assert server.proc is not None
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        most = 0
        with httpx.Client(base_url=server.url, timeout=5) as h:
            for burst in range(10):  # 20,000 queries of names nobody has asked before
                for n in range(2000):
                    q = dns.message.make_query(f"r{burst}-{n}.flood.example.", "A")
                    flood.sendto(q.to_wire(), server.dns)
                most = max(most, _open_files(server.proc.pid))
                _health_within(h, 1.0)
                body = instance(f"w{burst}")
                assert h.put(f"/api/v1/instances/w{burst}", json=body).status_code == 200
            flood.close()
            assert most < 512, f"{most} files open"
            dns_status = h.get("/status").json()["dns"]
            assert dns_status["forward_dropped"] > 0, dns_status
    finally:
        silent.close()


def test_slow_clients_from_one_address_cannot_lock_others_out(tmp_path: Path) -> None:
    """Finding 4 (slowloris): 1,100 connections trickling header bytes held a server
    under systemd's 1,024 open files, and /health and writes failed. Now one address
    holds at most 200; the rest are closed at once, and others are served throughout."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the server's, as systemd's
    try:
        server = ServerProcess(["--no-dns"], tmp_path / "server").start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))  # ours: 1,100 sockets
    held: list[socket.socket] = []
    other = httpx.Client(
        base_url=server.url, timeout=5, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    try:
        for n in range(1100):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the end of it
            held.append(s)
            if n % 100 == 99:  # from another address, /health and writes answer throughout
                _health_within(other, 1.0)
                body = instance(f"w{n}")
                assert other.put(f"/api/v1/instances/w{n}", json=body).status_code == 200

        def all_taken_in() -> bool:  # accepted, or refused: none waits in the backlog
            conns = other.get("/status").json()["connections"]
            return bool(conns["open"] + conns["refused_per_client"] >= 1100 + 1)

        wait_until(all_taken_in, 10, "the server to take in every connection")
        for n in range(10):  # with all 1,100 taken in: still served
            _health_within(other, 1.0)
            assert other.put(f"/api/v1/instances/x{n}", json=instance(f"x{n}")).status_code == 200
        conns = other.get("/status").json()["connections"]
        assert conns["max_per_client"] == 200
        assert conns["refused_per_client"] >= 900 - 5, conns
        assert conns["open"] <= 200 + 5, conns
    finally:
        for s in held:
            s.close()
        other.close()
        server.stop()


def test_a_web_page_cannot_write_to_a_local_server(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Finding 11 (CSRF and DNS rebinding): any page a developer opened could register
    instances on a local server, claim /api/v1/acl/bootstrap first, or (with command
    checks on) run commands: writes took text/plain bodies and any Host and Origin."""
    server = start_server("--no-dns", "--allowed-origins", "https://ops.example.com")
    body = json.dumps(instance("w1"))
    with httpx.Client(base_url=server.url, timeout=5) as h:
        # What a page on another site sends: a simple cross-origin POST, text/plain.
        page = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
        got = h.post("/api/v1/acl/bootstrap", headers=page)
        assert got.status_code == 403, got.text
        assert "cross-origin" in got.json()["message"]
        got = h.put("/api/v1/instances/w1", content=body, headers=page)
        assert got.status_code == 403
        got = h.put("/v1/agent/service/register", content=body, headers=page)
        assert got.status_code == 403
        # A rebound name: the page's own origin, its own name, the server's address.
        rebound = {"Host": "evil.example", "Origin": "http://evil.example"}
        got = h.put("/api/v1/instances/w1", content=body, headers=rebound)
        assert got.status_code == 403
        assert "DNS rebinding" in got.json()["message"]
        # text/plain without any Origin: still not what an API client sends.
        got = h.put("/api/v1/instances/w1", content=body, headers={"Content-Type": "text/plain"})
        assert got.status_code == 415
        assert h.get("/api/v1/instances/w1").status_code == 404  # nothing written
        # The dashboard (same origin), an allowed origin, curl -d and the SDK: written.
        own = {"Origin": server.url, "Content-Type": "application/json"}
        assert h.put("/api/v1/instances/w1", content=body, headers=own).status_code == 200
        ops = {"Origin": "https://ops.example.com", "Content-Type": "application/json"}
        assert h.put("/api/v1/instances/w2", json=instance("w2"), headers=ops).status_code == 200
        curl = {"Content-Type": "application/x-www-form-urlencoded", "Host": "localhost"}
        w3 = json.dumps(instance("w3"))
        assert h.put("/api/v1/instances/w3", content=w3, headers=curl).status_code == 200
    with Client(server.url) as c:
        assert c.register(id="w4", service="web", address="10.0.0.4", port=80).index > 0


def test_a_server_run_check_targets_only_its_instances_own_address(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Finding 12 (request forgery): any method, headers and body to any address,
    redirects followed, and the first KiB of the answer stored for every reader. Now a
    check the server runs must target the instance's own address, and a redirect to
    another host is not followed."""
    target = HttpTarget()
    server = start_server("--no-dns")
    try:
        with httpx.Client(base_url=server.url, timeout=5) as h:
            url = f"http://127.0.0.1:{target.port}/"
            for check in ({"http": url}, {"tcp": f"127.0.0.1:{target.port}"}):
                elsewhere = instance("w1", address="10.0.0.1", checks=[check])
                got = h.put("/api/v1/instances/w1", json=elsewhere)
                assert got.status_code == 403, got.text
                assert "the instance's own address" in got.json()["message"]
            before = target.requests
            # Its own address (a loopback name for a loopback address counts): checked.
            own = instance("w2", address="127.0.0.1", checks=[{"http": url, "interval": "100ms"}])
            assert h.put("/api/v1/instances/w2", json=own).status_code == 200
            target.wait_requests(before + 1)
            # A redirect to another host is not followed (nor looked up).
            target.code, target.location = 302, "http://metadata.example.invalid/latest"
            wait_until(
                lambda: (
                    "redirected to another host" in h.get("/api/v1/instances/w2").json()["output"]
                ),
                10,
                "the redirect to be refused",
            )
            assert h.get("/api/v1/instances/w2").json()["status"] == "critical"
    finally:
        target.close()
    # An operator who wants more says so.
    wide = start_server("--no-dns", "--check-any-target", name="wide")
    body = instance("w1", address="10.0.0.1", checks=[{"tcp": "127.0.0.1:1"}])
    assert httpx.put(f"{wide.url}/api/v1/instances/w1", json=body).status_code == 200


def test_dns_answers_amplify_little_and_idle_tcp_cannot_lock_clients_out(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Finding 17: a 48-byte query with EDNS 4096 drew 3,248 bytes (68x), and 512 idle
    TCP connections locked every TCP client out. UDP answers are now at most 1,232 bytes
    (larger ones truncated, for TCP); one address holds at most 32 TCP connections, and
    with every place taken the connection idle the longest makes room."""
    import dns.flags
    import dns.query

    server = start_server("--dns", "127.0.0.1:0")
    assert server.dns is not None
    host, port = server.dns
    with httpx.Client(base_url=server.url, timeout=10) as h:
        for n in range(150):
            body = instance(f"amp-{n}", service="amp", address=f"10.7.{n // 250}.{n % 250 + 1}")
            assert h.put(f"/api/v1/instances/amp-{n}", json=body).status_code == 200
    q = dns.message.make_query("amp.service.waypost.", "A", use_edns=0, payload=4096)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(q.to_wire(), (host, port))
        raw, _ = s.recvfrom(65535)
    assert len(raw) <= 1232, len(raw)
    assert dns.message.from_wire(raw).flags & dns.flags.TC
    assert len(dns.query.tcp(q, host, port=port, timeout=5).answer[0]) == 150

    def tcp_from(source: str) -> socket.socket:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind((source, 0))
        c.connect((host, port))
        return c

    held: list[socket.socket] = []
    try:
        # One address: past 32, a connection is closed at once.
        for _ in range(33):
            held.append(tcp_from("127.0.0.2"))
        held[-1].settimeout(5)
        assert held[-1].recv(1) == b"", "a 33rd connection from one address was kept"
        # 512 idle connections from 17 addresses: every place taken.
        for a in range(3, 20):
            for _ in range(32 if len(held) < 512 + 1 else 0):
                held.append(tcp_from(f"127.0.0.{a}"))
        got = dns.query.tcp(dns.message.make_query("amp.service.waypost.", "A"), host,
                            port=port, timeout=5)  # fmt: skip
        assert len(got.answer[0]) == 150, "a new TCP client was locked out"
        with httpx.Client(base_url=server.url, timeout=10) as h:
            dns_status = h.get("/status").json()["dns"]
        assert dns_status["tcp_idle_closed"] >= 1, dns_status
    finally:
        for c in held:
            c.close()


def test_only_local_and_private_clients_have_names_forwarded(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Finding 17: forwarding served any client, an open resolver on a public address.
    ``--dns-forward-clients`` (default loopback and private networks) says whose other
    names go to the recursors; anyone else gets REFUSED."""
    import dns.query
    import dns.rcode

    answering = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a recursor that answers
    answering.bind(("127.0.0.1", 0))
    answering.settimeout(10)
    recursor = f"127.0.0.1:{answering.getsockname()[1]}"

    def answer_once() -> None:
        data, addr = answering.recvfrom(65535)
        reply = dns.message.make_response(dns.message.from_wire(data))
        reply.set_rcode(dns.rcode.NXDOMAIN)
        answering.sendto(reply.to_wire(), addr)

    try:
        server = start_server(
            "--dns", "127.0.0.1:0", "--recursor", recursor, "--dns-forward-clients", "127.0.0.5"
        )
        assert server.dns is not None
        host, port = server.dns
        q = dns.message.make_query("elsewhere.example.", "A")
        refused = dns.query.udp(q, host, port=port, timeout=5, source="127.0.0.1")
        assert refused.rcode() == dns.rcode.REFUSED
        refused_tcp = dns.query.tcp(q, host, port=port, timeout=5, source="127.0.0.1")
        assert refused_tcp.rcode() == dns.rcode.REFUSED
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            relayed = pool.submit(answer_once)
            got = dns.query.udp(q, host, port=port, timeout=5, source="127.0.0.5")
            relayed.result(10)
        assert got.rcode() == dns.rcode.NXDOMAIN  # the recursor's answer came back
        with httpx.Client(base_url=server.url, timeout=10) as h:
            assert h.get("/status").json()["dns"]["forward_refused"] == 2
    finally:
        answering.close()
    bad = waypost_cli(
        "server", "--http", "127.0.0.1:0", "--dns", "127.0.0.1:0",
        "--data-dir", str(tmp_path), "--dns-forward-clients", "not-a-net",
    )  # fmt: skip
    assert bad.returncode != 0
    assert "not-a-net" in bad.stderr
