"""Consul clients other than py-consul, each unchanged, against a real ``waypost server``:
Debian's python3-consul (0.7.1, run by Debian's python3) and the npm ``consul`` package
(2.0.1, run by node). Each runs the flow a service runs (register with a TTL check, pass
it, find it with ``passing``, list the catalog, block until a change, deregister) and
prints what it saw."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess

HERE = Path(__file__).resolve().parents[1] / "consul_clients"
TOKEN = "old-client-token"


def run(cmd: list[str]) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def host_port(server: ServerProcess) -> list[str]:
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    return [host, port]


PYTHON3 = "/usr/bin/python3"
# python3-consul's register sends the token as ?token=; a refusal raises its own error.
REGISTER_WITH_TOKEN = """
import json, sys, consul
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
try:
    consul.Consul(host=host, port=port).agent.service.register("old", service_id="old-1")
except consul.ACLPermissionDenied as exc:
    out["without"] = str(exc)
c = consul.Consul(host=host, port=port, token=token)
out["with"] = c.agent.service.register("old", service_id="old-1", port=7000)
out["services"] = c.catalog.services()[1]
print(json.dumps(out))
"""


def python3_consul() -> str:
    assert Path(PYTHON3).exists()
    probe = subprocess.run([PYTHON3, "-c", "import consul"], capture_output=True, text=True)
    assert probe.returncode == 0, "python3-consul: `make test` installs it"
    return PYTHON3


def test_debians_python3_consul(server: ServerProcess) -> None:
    # It sends GET for deregister and TTL updates.
    seen = run([python3_consul(), str(HERE / "python3_consul_flow.py"), *host_port(server)])
    assert seen["version"] == "0.7.1"
    assert seen["node"] == "test-node"
    assert seen["registered"] is True
    assert seen["before"] == 0  # the TTL check starts critical
    assert seen["passed"] is True
    assert seen["passing"] == [["old-1", "10.2.0.1", 7000]]
    assert seen["catalog"] == {"old": ["v1"]}
    assert 0.25 <= seen["blocked_s"] < 1.3
    assert (seen["status"], seen["output"]) == ("warning", "slow")
    assert seen["index_moved"] is True
    assert seen["deregistered"] is True
    assert seen["after"] == []


def test_the_npm_consul_package(server: ServerProcess) -> None:
    node = shutil.which("node")
    assert node, "node: `make test` installs it"
    assert (HERE / "npm" / "node_modules" / "consul").is_dir(), "`make test` runs npm ci"
    seen = run([node, str(HERE / "npm" / "flow.js"), *host_port(server)])
    assert seen["node"] == "test-node"
    assert seen["before"] == 0
    assert seen["passing"] == [["node-web-1", "10.3.0.1", 3000]]
    assert seen["catalog"] == {"node-web": ["js"]}
    assert seen["rows"] == ["node-web-1"]
    # The watch saw the passing state, then the failure once it was made.
    assert seen["statuses"] == ["passing", "critical"]
    assert seen["watch_ms"] < 1000
    assert seen["after"] == []


def test_debians_python3_consul_sends_its_token_in_the_query(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--token", TOKEN)
    seen = run([python3_consul(), "-c", REGISTER_WITH_TOKEN, *host_port(server), TOKEN])
    assert "Permission denied" in seen["without"]
    assert seen["with"] is True
    assert seen["services"] == {"old": []}
