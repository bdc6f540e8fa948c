"""Helpers every benchmark shares: start Waypost and its peers on loopback, time, report.

Each benchmark runs Waypost and the thing a user would pick instead side by side in one
run and writes ``bench/results/<name>.json`` and ``.md`` with the ratios.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from waypost.testing import SERVING, server_process

RESULTS = Path(__file__).resolve().parent / "results"


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (10k waiters need 10k fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))
    return ordered[k]


@contextlib.contextmanager
def waypost_server(*args: str) -> Iterator[str]:
    """A ``waypost server`` process (SQLite unless told) on a free port; yields its URL.
    A benchmark's load comes from one address (thousands of parked watchers): the
    per-client connection cap is off."""
    tmp = Path(tempfile.mkdtemp(prefix="waypost-bench-"))
    args = ("--max-conns-per-client", "0", *args)
    try:
        with server_process("--log-level", "warning", *args, data_dir=tmp) as proc:
            yield proc.url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def announced(cmd: list[str], stdin: bytes = b"") -> Iterator[str]:
    """A process that prints ``serving URL`` once it listens (as ``waypost server``
    does); yields the URL and terminates the process on exit."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    try:
        m = SERVING.search(proc.stdout.readline().decode())
        if m is None:
            raise RuntimeError(f"{cmd[-1]} did not start")
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def etcd_command(data_dir: Path, client: int, peer: int, *extra: str) -> list[str]:
    """The command line of one etcd member on loopback (Debian's etcd-server)."""
    exe = shutil.which("etcd")
    if exe is None:
        raise RuntimeError("etcd is not installed: run `make bench` (installs etcd-server)")
    return [
        exe,
        "--data-dir",
        str(data_dir),
        "--name",
        "bench",
        "--listen-client-urls",
        f"http://127.0.0.1:{client}",
        "--advertise-client-urls",
        f"http://127.0.0.1:{client}",
        "--listen-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-cluster",
        f"bench=http://127.0.0.1:{peer}",
        "--log-level",
        "error",
        *extra,
    ]


ETCD_ENV = {**os.environ, "ETCD_UNSUPPORTED_ARCH": platform.machine()}


@contextlib.contextmanager
def etcd_member() -> Iterator[int]:
    """A single etcd member on loopback (Debian's etcd-server); yields its client port."""
    tmp = Path(tempfile.mkdtemp(prefix="etcd-bench-"))
    client, peer = free_port(), free_port()
    cmd = etcd_command(tmp, client, peer)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ETCD_ENV)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", client), 0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("etcd did not start") from None
                time.sleep(0.05)
        yield client
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def wrk(
    url: str,
    *,
    connections: int = 64,
    seconds: int = 5,
    threads: int = 1,
    script: str = "",
    host: str = "",
) -> dict[str, float]:
    """Run wrk against ``url`` (with a Lua ``script``, a ``Host`` header); requests/s and
    latency in ms."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed: run `make bench` (installs wrk)")
    out = subprocess.run(
        [
            exe,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            *(["-s", script] if script else []),
            *(["-H", f"Host: {host}"] if host else []),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        if m is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def write_results(
    name: str, data: dict[str, Any], table: list[tuple[str, str, str, str]], notes: str = ""
) -> None:
    """Write ``results/<name>.json`` and a markdown table (metric, waypost, peer, ratio)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# {name}",
        "",
        f"Run {data['when']} on {data['cpus']} cores, loopback.",
        "",
        "| metric | waypost | peer | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table]
    if notes:
        lines += ["", notes]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
