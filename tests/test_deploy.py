"""The deployment files say what the CLI accepts: every command in the Dockerfile, the
compose file, the Kubernetes manifests and the systemd units parses with ``waypost``'s
own parser, every port a command listens on is the port its file publishes and probes,
the actor classes and service definitions they name load, and the units are hardened."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from typer.main import get_command

from waypost.actors.worker import load_actors
from waypost.agent.definitions import load
from waypost.cli import app

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
GROUP = get_command(app)


def parse(args: list[str]) -> dict[str, Any]:
    """The parameters ``waypost ARGS`` would run with (ClickException if it refuses)."""
    sub = GROUP.commands[args[0]]  # type: ignore[attr-defined]
    ctx: click.Context = sub.make_context(args[0], list(args[1:]))
    return dict(ctx.params)


def listens(params: dict[str, Any]) -> set[tuple[int, str]]:
    """(port, protocol) pairs a parsed command listens on."""
    out: set[tuple[int, str]] = set()
    if params.get("http"):
        out.add((int(str(params["http"]).rsplit(":", 1)[1]), "TCP"))
    if params.get("dns"):
        port = int(str(params["dns"]).rsplit(":", 1)[1])
        out |= {(port, "UDP"), (port, "TCP")}
    if params.get("port"):
        out.add((int(params["port"]), "TCP"))
    return out


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def _k8s_containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    out.append((f"{path.name}:{doc['kind']}", c))
    return out


def _units() -> dict[str, configparser.RawConfigParser]:
    out = {}
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        unit = configparser.RawConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(path.read_text())
        out[path.name] = unit
    return out


def test_the_dockerfile_runs_the_server_on_python_3_12_and_exposes_its_ports() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim$", text, re.M)
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entry == ["waypost"]
    params = parse(cmd)
    exposed = set()
    for item in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split():  # type: ignore[union-attr]
        port, _, proto = item.partition("/")
        exposed.add((int(port), (proto or "tcp").upper()))
    assert listens(params) <= exposed
    # Not root, and as a number (Kubernetes' runAsNonRoot cannot check a name).
    assert re.search(r"^USER [1-9][0-9]*$", text, re.M)


def test_every_compose_command_parses_and_publishes_what_it_listens_on() -> None:
    services = _compose()["services"]
    ran = {name: parse(svc["command"]) for name, svc in services.items() if "build" in svc}
    assert {"server", "agent-1", "agent-2", "discovery"} <= set(ran)
    for name, params in ran.items():
        if name.startswith("agent-"):
            continue  # shares its web server's network; nothing published
        published = set()
        for spec in services[name].get("ports", []):
            container, _, proto = str(spec).rsplit(":", 1)[-1].partition("/")
            published.add((int(container), (proto or "tcp").upper()))
        if name == "server":
            assert listens(params) <= published, name
    # The agents reach the server by its compose name and port, and share a node each.
    server_port = int(str(ran["server"]["http"]).rsplit(":", 1)[1])
    for n in (1, 2):
        agent = services[f"agent-{n}"]
        assert agent["network_mode"] == f"service:web-{n}"
        assert ran[f"agent-{n}"]["server"] == [f"http://server:{server_port}"]
        assert ran[f"agent-{n}"]["node"] == f"node-{n}"


def test_the_compose_agents_definitions_load() -> None:
    (mount,) = _compose()["x-agent"]["volumes"]
    source, target, _ = mount.split(":")
    assert target == "/etc/waypost/services"
    loaded = load(DEPLOY / source, node="node-1", address="web-1")
    (web,) = loaded.instances.values()
    assert (web.service, web.port, web.id) == ("web", 8080, "web-node-1")
    # Its check is the web server next to it, on the port the compose file runs.
    web_cmd = _compose()["x-web"]["command"]
    assert web.checks[0].http == f"http://127.0.0.1:{web_cmd[-1]}/"


def test_every_k8s_container_parses_declares_its_ports_and_probes_health() -> None:
    containers = _k8s_containers()
    kinds = {where.split(":")[1] for where, _ in containers}
    assert {"Deployment", "StatefulSet"} <= kinds
    stores = set()
    for where, c in containers:
        params = parse(c["args"])
        declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
        assert listens(params) <= declared, where
        if c["args"][0] == "server":
            stores.add(str(params.get("store") or "sqlite"))
            http_port = int(str(params["http"]).rsplit(":", 1)[1])
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"] == {"path": "/health", "port": http_port}, where
        elif c.get("readinessProbe"):
            assert c["readinessProbe"]["httpGet"]["path"] == "/health"
        if params.get("actors"):
            assert load_actors(params["actors"])
    assert any(s.startswith("etcd://") for s in stores)  # the Deployment on etcd
    assert "sqlite" in stores  # the StatefulSet on SQLite


def test_the_sqlite_server_keeps_its_volume_in_a_statefulset() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "server-sqlite.yaml").read_text()))
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 1  # SQLite: one writer
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    data_dir = parse(c["args"])["data_dir"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in c["volumeMounts"]
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == listens(parse(c["args"]))


@pytest.mark.parametrize("name", ["waypost-server.service", "waypost-agent.service"])
def test_systemd_units_run_a_valid_command_hardened(name: str) -> None:
    unit = _units()[name]
    exe, *args = shlex.split(unit["Service"]["ExecStart"].replace("%l", "node-1"))
    assert exe == "/usr/local/bin/waypost"
    params = parse(args)
    service = unit["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["Restart"] == "on-failure"
    # The state lives where the unit lets it write.
    state = Path(str(params["data_dir"]))
    assert state == Path("/var/lib") / service["StateDirectory"]
