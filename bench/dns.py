"""DNS queries/s: Waypost's DNS next to dnsmasq, serving the same records, with dnsperf.

20 A names (``sN.service.waypost``) and the SRV of a 5-instance service
(``_srv._tcp.service.waypost``), from a real ``waypost server`` (default DNS settings,
on a free port) and from dnsmasq 2.90 (``--host-record``/``--srv-host``, cache off).
dnsperf asks each for ``--seconds`` (default 15) at its full rate, one after the other,
in one run, on loopback; both share the 2 cores with dnsperf. Writes
``results/dns.{json,md}``: QPS, average latency and the ratio.

    .venv/bin/python bench/dns.py [--seconds 15]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file is bench/dns.py: with its folder first on sys.path, "import dns" anywhere
# would find it instead of dnspython. Its folder goes last.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

import argparse  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import httpx  # noqa: E402

from _harness import free_port, write_results  # noqa: E402
from waypost.testing import ServerProcess  # noqa: E402

NAMES = [f"s{n}.service.waypost" for n in range(20)]
SRV_NAME = "_srv._tcp.service.waypost"


def dnsperf(port: int, seconds: int, queries: Path) -> dict[str, float]:
    exe = shutil.which("dnsperf")
    if exe is None:
        raise RuntimeError("dnsperf is not installed: run `make bench` (installs dnsperf)")
    cmd = [exe, "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds)]
    out = subprocess.run(
        [*cmd, "-c", "4", "-Q", "1000000", "-t", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if qps is None or avg is None:
        raise RuntimeError(f"dnsperf said:\n{out}")
    return {
        "qps": float(qps.group(1)),
        "avg_latency_ms": float(avg.group(1)) * 1000,
        "lost": float(lost.group(1)) if lost else 0.0,
    }


def run_dnsmasq(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    args = [
        exe,
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--cache-size=0",
        f"--pid-file={tmp / 'dnsmasq.pid'}",
        "--user=root",
    ]
    args += [f"--host-record={name},10.0.0.{n + 1}" for n, name in enumerate(NAMES)]
    for n in range(5):
        target = f"srv-{n}.instance.waypost"
        args += [f"--srv-host={SRV_NAME},{target},{9000 + n},1,100"]
        args += [f"--host-record={target},10.1.0.{n + 1}"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def peer_run(tmp: Path, seconds: int, queries: Path) -> dict[str, float]:
    port = free_port()
    proc = run_dnsmasq(port, tmp)
    try:
        subprocess.run(["sleep", "1"], check=True)  # dnsmasq reads its records at start
        return dnsperf(port, seconds, queries)
    finally:
        proc.terminate()
        proc.wait(10)


def waypost_run(tmp: Path, workers: int, seconds: int, queries: Path) -> dict[str, float]:
    args = ["--store", "memory://", "--log-level", "warning", "--dns-workers", str(workers)]
    server = ServerProcess(args, tmp / f"w{workers}").start()
    try:
        with httpx.Client(base_url=server.url) as http:
            for n in range(20):
                body = {"service": f"s{n}", "address": f"10.0.0.{n + 1}", "port": 80}
                http.put(f"/api/v1/instances/s{n}-1", json=body).raise_for_status()
            for n in range(5):
                body = {"service": "srv", "address": f"10.1.0.{n + 1}", "port": 9000 + n}
                http.put(f"/api/v1/instances/srv-{n}", json=body).raise_for_status()
        assert server.dns is not None
        return dnsperf(server.dns[1], seconds, queries)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="--dns-workers values to run"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="waypost-dns-bench-"))
    queries = tmp / "queries.txt"
    queries.write_text("".join(f"{n} A\n" for n in NAMES) + f"{SRV_NAME} SRV\n" * 5)

    # dnsmasq runs before and after Waypost: the machine's load drifts over a minute, and
    # the peer's figure is the mean of the two.
    peers = [peer_run(tmp, args.seconds, queries)]
    runs: dict[int, dict[str, float]] = {}
    try:
        for workers in args.workers:
            runs[workers] = waypost_run(tmp, workers, args.seconds, queries)
        peers.append(peer_run(tmp, args.seconds, queries))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peer = {k: sum(p[k] for p in peers) / len(peers) for k in peers[0]}

    ours = runs[args.workers[0]]
    ratio = ours["qps"] / peer["qps"]
    table = []
    for workers, got in runs.items():
        label = "default (1 process)" if workers == 1 else f"--dns-workers {workers}"
        table.append(
            (
                f"queries/s, {label}",
                f"{got['qps']:,.0f}",
                f"{peer['qps']:,.0f}",
                f"{got['qps'] / peer['qps']:.2f}",
            )
        )
        table.append(
            (
                f"average latency (ms), {label}",
                f"{got['avg_latency_ms']:.3f}",
                f"{peer['avg_latency_ms']:.3f}",
                f"{peer['avg_latency_ms'] / max(got['avg_latency_ms'], 1e-9):.2f}",
            )
        )
    notes = (
        f"dnsperf -c 4 -Q 1000000 for {args.seconds} s each, 20 A names and the SRV of 5 "
        "instances. Waypost: `waypost server` (cached wire answers), with its default DNS "
        "settings and with --dns-workers; peer: dnsmasq --host-record/--srv-host, "
        "--cache-size=0, run before and after Waypost (the mean is shown). Ratios > 1 "
        "favour Waypost. dnsperf shares the 2 cores with the server it measures."
    )
    write_results(
        "dns",
        {
            "waypost": ours,
            "waypost_by_workers": {str(k): v for k, v in runs.items()},
            "dnsmasq": peer,
            "dnsmasq_runs": peers,
            "ratio_qps": ratio,
            "seconds": args.seconds,
        },
        table,
        notes,
    )


if __name__ == "__main__":
    main()
