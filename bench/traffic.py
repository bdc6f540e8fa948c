"""Traffic management figures: what one pick costs, per balancer, over 100 endpoints; and
``waypost proxy`` next to nginx ``proxy_pass`` in front of the same backend.

Picks: each balancer picks from 100 endpoints (weights 1-1000, a few requests in flight
and measured latencies, as a running client has them), a million times at most or for
about half a second, next to ``random.choice`` over the same list (the floor: a pick that
knows nothing).

Proxy: one backend (a bare aiohttp+uvloop handler returning 512 bytes), registered in a
``waypost server``; nginx (1 worker, upstream keep-alive) and ``waypost proxy`` (one
process) in front of it; wrk with 64 connections for requests/s, and with 1 connection
for the latency each adds to a direct request (p50, p99). Rounds alternate between the
three; the median of each is kept. Writes ``results/traffic.{json,md}``.

    .venv/bin/python bench/traffic.py            # needs nginx and wrk: make bench
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

from _harness import announced, free_port, waypost_server, write_results, wrk  # noqa: E402
from waypost.traffic import STRATEGIES, Endpoint, balancer  # noqa: E402

ENDPOINTS = 100
PROXY_ROUNDS = 3
PROXY_SECONDS = 5
LATENCY_SECONDS = 3
BODY = b'{"items": "' + b"x" * 497 + b'"}'
PATH = "/api/v1/services/shop"
MAX_PICKS = 1_000_000
BUDGET_S = 0.5


def fleet() -> tuple[Endpoint, ...]:
    rng = random.Random(1)
    eps = []
    for i in range(ENDPOINTS):
        e = Endpoint(f"i-{i}", "10.0.0.1", 8000 + i, weight=rng.randint(1, 1000))
        e.active = rng.randint(0, 5)
        e.finished(rng.uniform(0.001, 0.02), ok=True, now=1.0)
        e.active = rng.randint(0, 5)
        eps.append(e)
    return tuple(eps)


def per_pick_us(pick: object, eps: tuple[Endpoint, ...], keyed: bool) -> float:
    """Microseconds per call of ``pick`` (bounded in count and time)."""
    keys = [f"client-{n}" for n in range(1024)]
    fn = pick  # a bound method
    done = 0
    start = time.perf_counter()
    deadline = start + BUDGET_S
    while done < MAX_PICKS and time.perf_counter() < deadline:
        if keyed:
            for k in keys:
                fn(eps, k)  # type: ignore[operator]
        else:
            for _ in range(1024):
                fn(eps)  # type: ignore[operator]
        done += 1024
    return (time.perf_counter() - start) / done * 1e6


@contextlib.contextmanager
def nginx(backend_port: int) -> Iterator[str]:
    """nginx with one worker proxying to the backend over kept-alive connections."""
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(exe).exists():
        raise RuntimeError("nginx is not installed: run `make bench` (installs nginx-light)")
    tmp = Path(tempfile.mkdtemp(prefix="nginx-bench-"))
    port = free_port()
    (tmp / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    )
    proc = subprocess.Popen([exe, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log = (tmp / "error.log").read_text()
                    raise RuntimeError(f"nginx did not start: {log}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def proxy_section() -> tuple[dict[str, object], list[tuple[str, str, str, str]]]:
    import httpx

    from waypost.testing import proxy_process

    backend_cmd = [sys.executable, str(HERE / "_ceiling.py")]
    with (
        announced(backend_cmd, BODY) as backend,
        waypost_server("--no-dns") as registry,
    ):
        port = int(backend.rsplit(":", 1)[1])
        httpx.put(
            f"{registry}/api/v1/instances/shop-1",
            json={"service": "shop", "address": "127.0.0.1", "port": port},
        ).raise_for_status()
        with nginx(port) as peer, proxy_process(registry) as proxy:
            targets = {"direct": backend, "nginx": peer, "waypost": proxy.url}
            for url in targets.values():  # warm: connections, the proxy's cache
                r = httpx.get(url + PATH, headers={"Host": "shop"})
                assert r.status_code == 200, (url, r.status_code)
                assert r.content == BODY, url
            rps: dict[str, list[float]] = {k: [] for k in targets}
            lat: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
            for _ in range(PROXY_ROUNDS):
                for name, url in targets.items():
                    got = wrk(url + PATH, connections=64, seconds=PROXY_SECONDS, host="shop")
                    assert got["non_2xx"] == 0, (name, got)
                    rps[name].append(got["rps"])
                    lat[name].append(
                        wrk(url + PATH, connections=1, seconds=LATENCY_SECONDS, host="shop")
                    )
    med = {k: statistics.median(v) for k, v in rps.items()}
    p50 = {k: statistics.median(x["p50_ms"] for x in v) for k, v in lat.items()}
    p99 = {k: statistics.median(x["p99_ms"] for x in v) for k, v in lat.items()}
    added = {k: (p50[k] - p50["direct"], p99[k] - p99["direct"]) for k in ("nginx", "waypost")}
    data = {
        "proxy_rps": med,
        "proxy_rps_runs": rps,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "added_ms": added,
    }
    table = [
        ("proxy requests/s (64 connections, 1 worker)", f"{med['waypost']:.0f}",
         f"{med['nginx']:.0f}", f"{med['waypost'] / med['nginx']:.2f}x"),
        ("backend direct requests/s (same run)", f"{med['direct']:.0f}", "", ""),
        ("added latency p50 ms (1 connection)", f"{added['waypost'][0]:.3f}",
         f"{added['nginx'][0]:.3f}", ""),
        ("added latency p99 ms (1 connection)", f"{added['waypost'][1]:.3f}",
         f"{added['nginx'][1]:.3f}", ""),
    ]  # fmt: skip
    return data, table


def main() -> None:
    eps = fleet()
    rng = random.Random(2)
    floor = per_pick_us(lambda e: rng.choice(e), eps, keyed=False)
    rows = {}
    for name in STRATEGIES:
        b = balancer(name, rng=random.Random(3))
        rows[name] = per_pick_us(b.pick, eps, keyed=name == "consistent_hash")
    data: dict[str, object] = {"endpoints": ENDPOINTS, "random_choice_us": floor, "pick_us": rows}
    table = [
        (f"pick cost µs, {name}, {ENDPOINTS} endpoints", f"{us:.2f}", f"{floor:.2f}",
         f"{us / floor:.2f}x")
        for name, us in rows.items()
    ]  # fmt: skip
    notes = (
        "Peer: `random.choice` over the same 100 endpoints (a pick that knows nothing). "
        "Target: least_connections (power of two choices) <= 2 µs. consistent_hash is "
        "timed with a different key each pick (one blake2b of the key and one lookup in "
        "its Maglev table, built once for the set). Proxy: nginx `proxy_pass` with "
        "upstream keep-alive, 1 worker, against the same 512-byte backend in the same run "
        "(target >= 0.3x nginx's requests/s); added latency is each proxy's p50/p99 at one "
        "connection minus the backend's own."
    )
    if "--picks-only" not in sys.argv:
        proxy_data, proxy_table = proxy_section()
        data.update(proxy_data)
        table += proxy_table
    write_results("traffic", data, table, notes)


if __name__ == "__main__":
    main()
