"""The ``waypost`` command line against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerProcess


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "waypost", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_register_from_yaml_list_query_and_deregister(
    server: ServerProcess, tmp_path: Path
) -> None:
    defs = tmp_path / "web.yaml"
    defs.write_text(
        "instances:\n"
        "  - {id: web-1, service: web, address: 10.0.0.1, port: 80, version: 1.2.0,"
        " tags: [prod]}\n"
        "  - {id: web-2, service: web, address: 10.0.0.2, port: 80, version: 2.0.0}\n"
    )
    r = cli("register", "-f", str(defs), "--server", server.url)
    assert r.returncode == 0, r.stderr
    assert "web-1, web-2" in r.stdout
    r = cli("instances", "web", "--tag", "prod", "--server", server.url, "--json")
    assert r.returncode == 0, r.stderr
    assert [i["id"] for i in json.loads(r.stdout)] == ["web-1"]
    r = cli("instances", "web", "--version", ">=2", "--server", server.url)
    assert r.returncode == 0
    assert "web-2" in r.stdout
    assert "web-1" not in r.stdout
    r = cli("services", "--server", server.url)
    assert r.returncode == 0
    assert "web" in r.stdout
    r = cli("deregister", "web-1", "--server", server.url)
    assert r.returncode == 0
    assert "deregistered web-1" in r.stdout
    r = cli("status", "--server", server.url, "--json")
    assert json.loads(r.stdout)["instances"] == 1


def test_register_one_json_definition_from_stdin(server: ServerProcess) -> None:
    body = json.dumps({"id": "a-1", "service": "api", "address": "::1", "port": 9000})
    r = cli("register", "-f", "-", "--server", server.url, "--json", stdin=body)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["registered"] == ["a-1"]


def test_errors_are_one_line_and_a_nonzero_exit(server: ServerProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: web-1\nservice: web\naddress: 10.0.0.1\nport: 0\n")
    r = cli("register", "-f", str(bad), "--server", server.url)
    assert r.returncode == 3
    assert "port" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("deregister", "nope", "--server", server.url)
    assert r.returncode == 4
    assert "not registered" in r.stderr
    r = cli("register", "-f", str(tmp_path / "missing.yaml"), "--server", server.url)
    assert r.returncode == 3
    assert "cannot read" in r.stderr
    r = cli("services", "--server", "http://127.0.0.1:1")
    assert r.returncode == 8
    assert "cannot reach" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("instances", "web", "--status", "sideways", "--server", server.url)
    assert r.returncode == 3
    assert "sideways" in r.stderr
    r = cli("server", "--store", "postgres://x", "--http", "127.0.0.1:0")
    assert r.returncode == 3
    assert "store" in r.stderr


def test_watch_prints_changes_as_json_lines(server: ServerProcess) -> None:
    import httpx

    with httpx.Client(base_url=server.url) as c:
        for n in range(3):
            c.put(
                f"/api/v1/instances/w{n}",
                json={"service": "web", "address": "10.0.0.1", "port": 80},
            )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waypost",
            "watch",
            "web",
            "--index",
            "0",
            "--json",
            "--server",
            server.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.kill()
        proc.communicate()
    assert [(x["revision"], x["type"], x["instance"]["id"]) for x in lines] == [
        (1, "put", "w0"),
        (2, "put", "w1"),
        (3, "put", "w2"),
    ]


def test_dev_serves_on_sqlite_in_dot_waypost(tmp_path: Path) -> None:
    import re

    import httpx

    proc = subprocess.Popen(
        [sys.executable, "-m", "waypost", "dev", "--http", "127.0.0.1:0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        m = re.search(r"serving (http://\S+) \(store sqlite", proc.stdout.readline())
        assert m, "waypost dev did not announce a SQLite-backed server"
        assert httpx.get(f"{m.group(1)}/health").status_code == 200
        assert (tmp_path / ".waypost" / "waypost.db").exists()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_checks_and_nodes(server: ServerProcess, tmp_path: Path) -> None:
    from tests.conftest import wait_until

    defs = tmp_path / "web.yaml"
    defs.write_text(
        "id: web-1\nservice: web\naddress: 127.0.0.1\nport: 8080\nnode: n1\n"
        "checks:\n"
        f"  - http: {server.url}/health\n    interval: 200ms\n    name: api\n"
        "  - tcp: 127.0.0.1:1\n    interval: 200ms\n    unhealthy_threshold: 1\n"
    )
    r = cli("register", "-f", str(defs), "--server", server.url)
    assert r.returncode == 0, r.stderr

    def rows() -> list[dict[str, object]]:
        r = cli("checks", "web", "--server", server.url, "--json")
        assert r.returncode == 0, r.stderr
        return list(json.loads(r.stdout))

    wait_until(lambda: all(row["last_run"] for row in rows()), 15, "both checks to run")
    by_name = {row["name"]: row for row in rows()}
    assert by_name["api"]["status"] == "passing"
    assert by_name["tcp"]["status"] == "critical"
    assert by_name["tcp"]["failures"] >= 1  # live: the server runs it
    table = cli("checks", "--node", "n1", "--server", server.url)
    assert table.returncode == 0
    assert "api" in table.stdout
    assert "critical" in table.stdout
    assert cli("checks", "--node", "n_1", "--server", server.url).returncode != 0
    r = cli("nodes", "--server", server.url, "--json")
    assert r.returncode == 0, r.stderr
    assert [(n["id"], n["registered"]) for n in json.loads(r.stdout)] == [("n1", False)]
    assert "n1" in cli("nodes", "--server", server.url).stdout


def test_every_command_prints_its_help() -> None:
    """Help texts go through rich markup: a "[...]" in one broke `waypost server --help`."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from waypost.cli import app

    group = get_command(app)
    names = [*group.commands, "agent status"]  # type: ignore[attr-defined]
    assert "server" in names
    # In this process (one child per command took 9 s); the child process is
    # tested once, for the entry point itself.
    runner = CliRunner()
    for name in ["", *names]:
        done = runner.invoke(app, [*name.split(), "--help"])
        assert done.exit_code == 0, (name, done.output[-500:], done.exception)
        assert "Usage" in done.output
    assert "Usage" in cli("--help").stdout
