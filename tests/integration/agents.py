"""``waypost agent`` as a real child process for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

STATUS = re.compile(r"status (https?://\S+)")


class AgentProcess:
    """A running agent; its stderr goes to ``DATA_DIR/agent.log``."""

    def __init__(
        self,
        server: str,
        node: str,
        config_dir: Path,
        data_dir: Path,
        *args: str,
    ) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "waypost",
            "agent",
            "--server",
            server,
            "--node",
            node,
            "--config-dir",
            str(config_dir),
            "--data-dir",
            str(data_dir),
            *args,
        ]
        if "--drain" not in args:
            # A test's agent stops at its end: no 5 s drain unless the test is about it.
            self.cmd += ["--drain", "100ms"]
        self.data_dir = data_dir
        self.log = data_dir / "agent.log"
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> AgentProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=dict(os.environ)
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = STATUS.search(line)
        if found is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"agent did not start: {line!r}\n{self.log.read_text()}")
        self.url = found.group(1)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def wait(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout_s)
        self._close()
        return code

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
