"""The Python examples in the docs run as written (against a real server)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def blocks(name: str) -> list[str]:
    return BLOCK.findall((DOCS / name).read_text())


@pytest.mark.parametrize("n", range(len(blocks("python-client.md"))))
def test_python_client_examples_run(server: ServerProcess, n: int) -> None:
    code = blocks("python-client.md")[n]
    code = code.replace("http://127.0.0.1:8500", server.url)
    namespace: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(code, f"python-client.md[{n}]", "exec"), namespace)
    test_fn = namespace.get("test_mine")
    if callable(test_fn):
        asyncio.run(test_fn())  # type: ignore[arg-type]


SH_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


@pytest.mark.parametrize("n", range(len(SH_BLOCK.findall((DOCS / "api.md").read_text()))))
def test_api_curl_examples_run(server: ServerProcess, n: int) -> None:
    import subprocess

    import httpx

    script = SH_BLOCK.findall((DOCS / "api.md").read_text())[n]
    # Every example runs against a registry that holds web-1, as the page's first one left it.
    body = {
        "service": "web",
        "address": "10.0.0.1",
        "port": 8080,
        "version": "1.4.2",
        "tags": ["prod", "eu"],
        "meta": {"zone": "eu-1"},
    }
    httpx.put(f"{server.url}/api/v1/instances/web-1", json=body).raise_for_status()
    host = server.url.removeprefix("http://")
    streaming = "curl -N" in script
    script = script.replace("localhost:8500", host).replace("wait=30s", "wait=1s")
    script = script.replace("curl ", "curl -sS -f --max-time 3 ")
    done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=30)
    # A streaming example runs until curl's time limit (exit 28) with events received.
    assert done.returncode == (28 if streaming else 0), done.stderr
    if streaming:
        assert "event: put" in done.stdout


HEALTH_BLOCKS = SH_BLOCK.findall((DOCS / "health-checks.md").read_text())


@pytest.mark.parametrize("n", range(len(HEALTH_BLOCKS)))
def test_health_check_examples_run(server: ServerProcess, n: int) -> None:
    """In order, against one server: each example runs on what the ones before left."""
    import subprocess

    host = server.url.removeprefix("http://")
    for script in HEALTH_BLOCKS[: n + 1]:
        script = script.replace("localhost:8500", host).replace(
            'port": 8500', f'port": {server.port}'
        )
        script = script.replace("curl ", "curl -sS -f --max-time 5 ")
        done = subprocess.run(
            ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, (script, done.stdout, done.stderr)


DNS_BLOCKS = SH_BLOCK.findall((DOCS / "dns.md").read_text())


@pytest.mark.parametrize("n", range(len(DNS_BLOCKS)))
def test_dns_examples_run(server: ServerProcess, n: int) -> None:
    """Every dig of docs/dns.md gets an answer (not an error) from a real server."""
    import subprocess

    import httpx

    for i, tags in ((1, ["prod"]), (2, ["prod"]), (3, [])):
        body = {
            "service": "web",
            "address": f"10.0.0.{i}",
            "port": 8080,
            "tags": tags,
            "node": "n1",
            "meta": {"zone": "eu-1"},
        }
        httpx.put(f"{server.url}/api/v1/instances/web-{i}", json=body).raise_for_status()
    assert server.dns is not None
    for line in DNS_BLOCKS[n].strip().splitlines():
        line = line.replace("-p 8600", f"-p {server.dns[1]}")
        cmd = [*line.split(), "+time=2", "+tries=1"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        assert done.returncode == 0, (line, done.stderr)
        assert "status: NOERROR" in done.stdout, (line, done.stdout)
        assert "ANSWER: 0," not in done.stdout, (line, done.stdout)


@pytest.mark.parametrize("n", range(len(blocks("cluster.md"))))
def test_cluster_examples_run(n: int) -> None:
    code = blocks("cluster.md")[n]
    exec(compile(code, f"cluster.md[{n}]", "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("n", range(len(blocks("traffic.md"))))
def test_traffic_examples_run(server: ServerProcess, n: int) -> None:
    code = blocks("traffic.md")[n].replace("http://127.0.0.1:8500", server.url)
    exec(compile(code, f"traffic.md[{n}]", "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("n", range(len(blocks("node-discovery.md"))))
def test_node_discovery_examples_run(start_server: Callable[..., ServerProcess], n: int) -> None:
    srv = start_server()  # with DNS on a port of its own
    code = blocks("node-discovery.md")[n].replace("http://127.0.0.1:8500", srv.url)
    exec(compile(code, f"node-discovery.md[{n}]", "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("n", range(len(blocks("actors.md"))))
def test_actors_examples_run(n: int) -> None:
    exec(compile(blocks("actors.md")[n], f"actors.md[{n}]", "exec"), {"__name__": "docs_example"})


def test_dashboard_page_examples_run(server: ServerProcess) -> None:
    """docs/dashboard.md's curl block fills a server with what its screenshots show."""
    import subprocess

    import httpx

    script = next(b for b in SH_BLOCK.findall((DOCS / "dashboard.md").read_text()) if "curl" in b)
    script = script.replace("localhost:8500", server.url.removeprefix("http://"))
    script = script.replace("curl ", "curl -sS -f --max-time 3 ")
    done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    services = {s["name"] for s in httpx.get(f"{server.url}/api/v1/services").json()}
    assert services == {"web", "db"}
    page = httpx.get(f"{server.url}/", follow_redirects=True)
    assert page.url.path == "/ui/"
    assert '<script type="module" src="app.js">' in page.text


def test_consul_compat_example_runs(server: ServerProcess) -> None:
    """docs/consul-compat.md's py-consul example, against a real server."""
    code = blocks("consul-compat.md")[0]
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    code = code.replace('host="127.0.0.1", port=8500', f'host="{host}", port={port}')
    code = code.replace('wait="30s"', 'wait="100ms"')
    namespace: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(code, "consul-compat.md[0]", "exec"), namespace)
    entries = namespace["entries"]
    assert [e["Service"]["ID"] for e in entries] == ["web-1"]  # type: ignore[attr-defined]
    import httpx

    assert httpx.get(f"{server.url}/api/v1/services/web").json() == []  # deregistered


def test_consul_compat_kv_example_runs(server: ServerProcess) -> None:
    code = blocks("consul-compat.md")[1]
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    code = code.replace('host="127.0.0.1", port=8500', f'host="{host}", port={port}')
    namespace: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(code, "consul-compat.md[1]", "exec"), namespace)
    import httpx

    assert httpx.get(f"{server.url}/v1/kv/app/config").status_code == 404  # deleted


def test_security_tls_example_runs(tmp_path: Path) -> None:
    """docs/security.md's certificate commands, as written (waypost from this venv)."""
    import subprocess
    import sys

    script = SH_BLOCK.findall((DOCS / "security.md").read_text())[0]
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {p.name for p in (tmp_path / "tls").iterdir()}
    assert names == {"ca.pem", "ca-key.pem", "registry.lan.pem", "registry.lan-key.pem",
                     "agent-1.pem", "agent-1-key.pem"}  # fmt: skip


def test_security_acl_walkthrough_runs(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """docs/security.md's ACL walkthrough, as written, against a default-deny server."""
    import subprocess
    import sys

    import httpx

    server = start_server("--acl-default-policy", "deny")
    script = SH_BLOCK.findall((DOCS / "security.md").read_text())[5]
    assert "acl bootstrap" in script
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "WAYPOST_SERVER": server.url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert 'may not write service "db"' in done.stderr
    # The anonymous token reads the web services, and nothing else.
    services = httpx.get(f"{server.url}/api/v1/services").json()
    assert [s["name"] for s in services] == ["web-api"]
