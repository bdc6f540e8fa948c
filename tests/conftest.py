"""Fixtures that start real ``waypost`` processes on free loopback ports and always stop them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVING = re.compile(r"serving (http://\S+)")


def wait_until(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


class ServerProcess:
    """A ``waypost server`` child process; ``url`` once it serves."""

    def __init__(self, args: list[str], data_dir: Path, env: dict[str, str] | None = None):
        self.args = args
        self.data_dir = data_dir
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log = data_dir / "server.log"

    def start(self, http: str = "127.0.0.1:0") -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "waypost",
            "server",
            "--http",
            http,
            "--data-dir",
            str(self.data_dir),
            "--node",
            "test-node",
            *self.args,
        ]
        env = {**os.environ, **(self.env or {})}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server prints this line once it serves
        m = SERVING.search(line)
        if m is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not start: {line!r}\n{self.log.read_text()}")
        self.url = m.group(1)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close_pipe()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart(self) -> ServerProcess:
        """Stop (if running) and start again on the same port and data."""
        port = self.port
        self.stop()
        return self.start(f"127.0.0.1:{port}")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (keep-alives, stores not closed)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"threads left running: {[t.name for t in leaked]}")
        time.sleep(0.01)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``waypost server`` processes; every one is stopped when the test ends."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, name: str = "s") -> ServerProcess:
        proc = ServerProcess(list(args), tmp_path / name, env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One SQLite-backed server."""
    return start_server()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def instance(iid: str, service: str = "web", **fields: Any) -> dict[str, Any]:
    """A valid instance body."""
    return {"id": iid, "service": service, "address": "10.0.0.1", "port": 8080, **fields}
