"""Findings of the security review (each one request that stopped a server), each
attacked on a real server on loopback and shown to hold."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.conftest import ServerProcess, instance, wait_until


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
                    "/api/v1/instances/hang1", json=instance("hang1", checks=https_check(path))
                )
                assert got.status_code == 403, got.text
                assert "outside the server's check files directory" in got.json()["message"]
            # Named under the directory: accepted, and refused when read (never waited on).
            for iid, name in (("link", "stdin.pem"), ("fifo", "fifo.pem")):
                got = h.put(
                    f"/api/v1/instances/{iid}", json=instance(iid, checks=https_check(name))
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
            got = h.put("/api/v1/instances/a", json=instance("a", checks=[check]))
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
