"""``waypost agent`` against a real server: definitions, one lease, node failure,
anti-entropy, reloads, drain."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, wait_until
from tests.integration.agents import AgentProcess
from tests.integration.targets import HttpTarget

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agent"


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    t = HttpTarget()
    yield t
    t.close()


@pytest.fixture
def start_agent(tmp_path: Path, server: ServerProcess) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(conf: Path, *args: str, node: str = "n1", data: str = "agent") -> AgentProcess:
        agent = AgentProcess(server.url, node, conf, tmp_path / data, *args).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def on_node(http: httpx.Client, node: str = "n1") -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in http.get(f"/api/v1/instances?node={node}").json()}


def agent_status(agent: AgentProcess) -> dict[str, Any]:
    return dict(httpx.get(f"{agent.url}/status", timeout=5).json())


def web_definition(target: HttpTarget, **check: Any) -> str:
    fields = {"interval": "200ms", "timeout": "1s", "unhealthy_threshold": 2, **check}
    lines = "\n".join(f"        {k}: {v}" for k, v in fields.items())
    return f"""
services:
  - service: web
    port: {target.port}
    tags: [blue]
    checks:
      - http: http://127.0.0.1:{target.port}/health
{lines}
"""


def test_definitions_in_yaml_json_toml_on_one_lease(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target))
    write(conf / "db.json", json.dumps([{"id": "db-a", "service": "db", "port": 5432}]))
    write(conf / "cache.toml", '[[services]]\nservice = "cache"\nport = 6379\n')
    write(conf / "README.md", "not a definition")
    agent = start_agent(conf, "--node-ttl", "2s")
    wait_until(lambda: set(on_node(http)) == {"web-n1", "db-a", "cache-n1"}, 15, "registered")
    wait_until(lambda: on_node(http)["web-n1"]["status"] == "passing", 15, "web passing")
    insts = on_node(http)
    assert all(i["agent"] and i["node"] == "n1" for i in insts.values())
    node = http.get("/api/v1/nodes/n1").json()
    assert node["status"] == "alive"
    assert node["lease"]
    # One lease for the node, however many services it runs.
    leases = http.get("/api/v1/leases").json()
    assert [lease["id"] for lease in leases] == [node["lease"]]
    # Its checks run in the agent; the server runs none of them.
    target.code = 500
    wait_until(lambda: on_node(http)["web-n1"]["status"] == "critical", 15, "web critical")
    rows = http.get("/api/v1/checks?node=n1").json()
    assert [(r["instance"], r["runs_on"]) for r in rows] == [("web-n1", "agent")]
    assert agent_status(agent)["sync"]["state"] == "in_sync"


def test_kill9_fails_the_node_then_deregisters_and_restart_restores(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target, deregister_critical_after="3s"))
    agent = start_agent(conf, "--node-ttl", "1s")
    wait_until(lambda: on_node(http).get("web-n1", {}).get("status") == "passing", 15, "up")
    agent.kill9()
    killed = time.monotonic()

    def failed() -> bool:
        inst = on_node(http).get("web-n1")
        return inst is not None and inst["status"] == "critical"

    wait_until(failed, 10, "the node's services critical")
    inst = on_node(http)["web-n1"]
    assert "node n1 failed" in inst["output"]
    # The node's own status is a separate write: wait for it rather than race it.
    wait_until(lambda: http.get("/api/v1/nodes/n1").json()["status"] == "failed", 10, "node failed")
    assert http.get("/api/v1/services/web?status=passing").json() == []
    # ... then deregistered after deregister_critical_after.
    wait_until(lambda: "web-n1" not in on_node(http), 15, "deregistration")
    assert time.monotonic() - killed >= 3.0  # not before its 3 s
    # Restarted, it registers them again, once.
    start_agent(conf, "--node-ttl", "1s")
    wait_until(lambda: on_node(http).get("web-n1", {}).get("status") == "passing", 15, "back")
    assert [i["id"] for i in http.get("/api/v1/services/web").json()] == ["web-n1"]
    assert http.get("/api/v1/nodes/n1").json()["status"] == "alive"


def test_restart_before_removal_leaves_no_duplicate(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target))
    agent = start_agent(conf, "--node-ttl", "1s")
    wait_until(lambda: on_node(http).get("web-n1", {}).get("status") == "passing", 15, "up")
    agent.kill9()
    wait_until(lambda: on_node(http)["web-n1"]["status"] == "critical", 10, "node failed")
    start_agent(conf, "--node-ttl", "1s")
    wait_until(lambda: on_node(http)["web-n1"]["status"] == "passing", 15, "restored")
    assert list(on_node(http)) == ["web-n1"]
    assert not any(h["name"] == "node" for h in on_node(http)["web-n1"]["health"])


def test_anti_entropy_restores_and_removes(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target))
    agent = start_agent(conf, "--sync-interval", "1s")
    wait_until(lambda: "web-n1" in on_node(http), 15, "registered")
    # Deleted behind the agent's back: back within a sync interval.
    assert http.delete("/api/v1/instances/web-n1").status_code == 200
    wait_until(lambda: "web-n1" in on_node(http), 5, "restored")
    # Claimed for this node's agent but not defined: removed.
    stray = {"service": "ghost", "address": "127.0.0.1", "port": 1, "node": "n1", "agent": True}
    assert http.put("/api/v1/instances/ghost-n1", json=stray).status_code == 200
    wait_until(lambda: "ghost-n1" not in on_node(http), 5, "stray removed")
    # Registered on the node by someone else (not the agent's): left alone.
    other = {"service": "other", "address": "127.0.0.1", "port": 1, "node": "n1"}
    assert http.put("/api/v1/instances/other-1", json=other).status_code == 200
    status = agent_status(agent)
    assert status["sync"]["repairs"] >= 2
    assert "other-1" in on_node(http)


def test_invalid_definition_is_reported_and_changes_nothing(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target))
    agent = start_agent(conf)
    wait_until(lambda: "web-n1" in on_node(http), 15, "registered")
    bad = write(conf / "bad.yaml", "service: api\nport: 99999\n")
    wait_until(lambda: agent_status(agent)["definitions"]["last_error"], 10, "the error")
    error = agent_status(agent)["definitions"]["last_error"]
    assert str(bad) in error
    assert "port" in error
    assert list(on_node(http)) == ["web-n1"]
    assert agent_status(agent)["definitions"]["services"] == 1
    # Broken syntax too.
    write(conf / "bad.yaml", "service: [api\n")
    wait_until(lambda: "not valid YAML" in (agent_status(agent)["definitions"]["last_error"] or ""))
    # Fixed: loaded, registered, the error cleared.
    write(conf / "bad.yaml", "service: api\nport: 9999\n")
    wait_until(lambda: "api-n1" in on_node(http), 10, "api registered")
    assert agent_status(agent)["definitions"]["last_error"] is None
    # A file removed: its services go.
    (conf / "bad.yaml").unlink()
    wait_until(lambda: "api-n1" not in on_node(http), 10, "api removed")


def test_sighup_reloads(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target))
    agent = start_agent(conf)
    wait_until(lambda: "web-n1" in on_node(http), 15, "registered")
    before = agent_status(agent)["definitions"]["last_reload"]
    agent.signal(signal.SIGHUP)
    wait_until(lambda: agent_status(agent)["definitions"]["last_reload"] != before, 5, "reload")


def test_sigterm_drains_then_exits_zero(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target))
    agent = start_agent(conf, "--drain", "2s")
    wait_until(lambda: http.get("/api/v1/services/web?status=passing").json(), 15, "healthy")
    agent.signal(signal.SIGTERM)
    wait_until(lambda: http.get("/api/v1/services/web?status=passing").json() == [], 2, "out")
    inst = on_node(http)["web-n1"]  # still registered, in maintenance, during the drain
    assert inst["maintenance"] is True
    assert agent.wait(30) == 0
    assert on_node(http) == {}
    assert http.get("/api/v1/nodes/n1").status_code == 404
    assert http.get("/api/v1/leases").json() == []


def test_agent_status_command(
    tmp_path: Path,
    http: httpx.Client,
    target: HttpTarget,
    start_agent: Callable[..., AgentProcess],
) -> None:
    import subprocess
    import sys

    conf = tmp_path / "conf"
    write(conf / "web.yaml", web_definition(target))
    start_agent(conf)
    wait_until(lambda: "web-n1" in on_node(http), 15, "registered")
    cmd = [
        sys.executable,
        "-m",
        "waypost",
        "agent",
        "status",
        "--data-dir",
        str(tmp_path / "agent"),
    ]
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["node"] == "n1"
    assert data["instances"] == ["web-n1"]
    assert data["sync"]["last_error"] is None
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert "in_sync" in done.stdout
    missing = subprocess.run(
        [*cmd[:-1], str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode != 0
    assert "is the agent running" in missing.stderr


def test_agent_flags_are_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "waypost", "agent", "--server", "http://127.0.0.1:1"]
    for args, word in (
        ([], "--node"),
        (["--node", "n_1"], "--node"),
        (["--node", "n1"], "--config-dir"),
        (["--node", "n1", "--config-dir", str(tmp_path / "none")], "not a directory"),
        (["--node", "n1", "--config-dir", str(tmp_path), "--node-ttl", "soon"], "node-ttl"),
    ):
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode != 0, args
        assert word in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_examples_load() -> None:
    from waypost.agent import definitions

    loaded = definitions.load(EXAMPLES, node="n1", address="10.0.0.5")
    assert len(loaded.instances) >= 3
    kinds = {c.kind for i in loaded.instances.values() for c in i.checks}
    assert {"http", "tcp", "command"} <= kinds
