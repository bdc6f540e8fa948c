"""The deployment files say what the CLI accepts: every command in the compose file and
the Kubernetes manifests parses with ``waypost``'s own parser, and the actor classes they
name load."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from waypost.actors.worker import load_actors
from waypost.cli import app

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def commands() -> list[list[str]]:
    out = []
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    out += [svc["command"] for svc in compose["services"].values()]
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    out.append(c["args"])
    return out


def test_every_deployed_command_parses_and_its_actors_load() -> None:
    group = get_command(app)
    found = commands()
    assert len(found) == 6
    for args in found:
        sub = group.commands[args[0]]  # type: ignore[attr-defined]
        ctx = sub.make_context(args[0], list(args[1:]))
        assert ctx.params["mode"] if args[0] == "network" else ctx.params
        if ctx.params.get("actors"):
            assert load_actors(ctx.params["actors"])
