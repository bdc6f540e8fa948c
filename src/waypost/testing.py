"""Helpers worth shipping for users' own tests: a server on a free port, in process or as
a real ``waypost server`` child process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from waypost.server import WaypostServer
from waypost.settings import Settings


@contextlib.asynccontextmanager
async def running_server(
    *, store: str = "memory://", token: str = "", node: str = "test"
) -> AsyncIterator[WaypostServer]:
    """A Waypost server on 127.0.0.1 and a free port, stopped on exit; ``.url`` to reach it."""
    settings = Settings(http="127.0.0.1:0", store=store, token=token, node=node, dns="")
    server = WaypostServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class ManualClock:
    """A clock that moves only when told: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


SERVING = re.compile(r"serving (http://\S+)")
DNS = re.compile(r"dns (\S+)\)")


class ServerProcess:
    """A ``waypost server`` child process on loopback; ``url`` once it serves.

    Its stderr goes to ``DATA_DIR/server.log``. ``restart`` keeps the port and the data,
    ``kill9`` is the crash a durability test needs.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        data_dir: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        node: str = "test-node",
    ) -> None:
        self.args = list(args)
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="waypost-"))
        self.env = dict(env or {})
        self.node = node
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.dns: tuple[str, int] | None = None
        self.dns_listeners: list[tuple[str, int]] = []
        self.log = self.data_dir / "server.log"

    def start(self, http: str = "127.0.0.1:0") -> ServerProcess:
        """Start and wait until the server announces its address (port 0: a free one)."""
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
            self.node,
            *self.args,
        ]
        if not any(a in ("--dns", "--no-dns") or a.startswith("--dns=") for a in self.args):
            # DNS on a free port of its own (the default 8600 would clash between
            # servers); a restart takes a new one (the old may be a client's port by now).
            cmd += ["--dns", "127.0.0.1:0"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, **self.env},
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the server serves
        found = SERVING.search(line)
        if found is None:
            self.proc.kill()
            self.proc.wait()
            self._close_pipe()
            raise RuntimeError(f"waypost server did not start: {line!r}\n{self.log.read_text()}")
        self.url = found.group(1)
        dns_found = DNS.search(line)
        self.dns_listeners = []
        for where in dns_found.group(1).split(",") if dns_found else ():
            dns_host, _, dns_port = where.rpartition(":")
            self.dns_listeners.append((dns_host.strip("[]"), int(dns_port)))
        self.dns = self.dns_listeners[0] if self.dns_listeners else None
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill9(self) -> None:
        """Kill the process with SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close_pipe()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
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

    def restart(self) -> ServerProcess:
        """Stop (if running) and start again on the same port and data."""
        port = self.port
        self.stop()
        return self.start(f"127.0.0.1:{port}")

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def server_process(*args: str, data_dir: str | Path | None = None) -> Iterator[ServerProcess]:
    """A started ``ServerProcess``, stopped on exit."""
    proc = ServerProcess(args, data_dir).start()
    try:
        yield proc
    finally:
        proc.stop()
