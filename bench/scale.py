"""Costs that must not grow with the registry (issue 12): a server holding 200,000 and
1,000,000 instances, with a dashboard-like watcher parked on ``/api/v1/services``.

For each size: register the instances (batches of 1,000 through ``POST /api/v1/batch``),
then, with a blocking query on ``/api/v1/services`` re-armed after every answer, time
single registrations one at a time (p50/p99), time ``/api/v1/services`` and
``/api/v1/nodes`` right after a change, read the server's longest event-loop stall over
that window (``/status`` ``event_loop``), its RSS per instance, and the time from a
restart to serving every instance again.

The peer is a single etcd member holding the same records (one key per instance, as the
etcd store keeps them): its RSS, and its restart time until a range answers.

    .venv/bin/python bench/scale.py [--sizes 200000 1000000] [--no-etcd]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

HERE = Path(__file__).resolve().parent
# bench/dns.py would shadow dnspython ("import dns"): this folder goes last on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

from _harness import ETCD_ENV, etcd_command, free_port, percentile, write_results  # noqa: E402
from waypost.testing import ServerProcess  # noqa: E402

ENC = msgspec.json.encode
JSON = {"Content-Type": "application/json"}
PER_SERVICE = 200
NODES = 1000
BATCH = 1000


def record(n: int, services: int) -> dict[str, object]:
    return {
        "id": f"i-{n}",
        "service": f"svc-{n % services}",
        # One address per node, as machines have: instances on a node differ by port.
        "address": f"10.0.{n % NODES >> 8}.{n % NODES & 255}",
        "port": 8000 + n // NODES % 50000,
        "node": f"node-{n % NODES}",
        "version": f"1.{n % 3}.0",
        "tags": ["prod", f"zone-{n % 4}"],
        "meta": {"team": f"t{n % 10}"},
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def load(url: str, total: int, services: int) -> float:
    """Register ``total`` instances; registrations per second."""
    counter = iter(range(0, total, BATCH))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def worker() -> None:
            for start in counter:
                items = [record(n, services) for n in range(start, min(start + BATCH, total))]
                async with s.post(
                    f"{url}/api/v1/batch", data=ENC({"register": items}), headers=JSON
                ) as r:
                    assert r.status == 200, await r.text()
                    await r.read()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(4)))
        return total / (time.perf_counter() - began)


async def status(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(f"{url}/status") as r:
        out: dict[str, Any] = await r.json()
        return out


async def watched_writes(url: str, total: int, services: int, writes: int) -> dict[str, Any]:
    """Single registrations with a parked ``/services`` watcher, then reads after a change."""
    wakes = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def watcher() -> None:
            nonlocal wakes
            index = 0
            while True:
                async with s.get(
                    f"{url}/api/v1/services", params={"index": str(index), "wait": "60s"}
                ) as r:
                    await r.read()
                    index = int(r.headers["X-Waypost-Index"])
                    wakes += 1

        watch = asyncio.create_task(watcher())
        while wakes == 0:
            await asyncio.sleep(0.01)
        began = time.time()
        took = []
        for k in range(writes):
            # A new instance: its service's count changes, so the watcher wakes each time.
            n = total + k
            body = ENC(record(n, services))
            start = time.perf_counter()
            async with s.put(f"{url}/api/v1/instances/i-{n}", data=body, headers=JSON) as r:
                assert r.status == 200, await r.text()
                await r.read()
            took.append((time.perf_counter() - start) * 1000)
        reads: dict[str, list[float]] = {"services": [], "nodes": [], "metrics": []}
        for k in range(20):
            n = (k * 104729) % total
            async with s.put(
                f"{url}/api/v1/instances/i-{n}/heartbeat", data=b"", headers=JSON
            ) as r:
                await r.read()
            for what in reads:
                start = time.perf_counter()
                path = "/metrics" if what == "metrics" else f"/api/v1/{what}"
                async with s.get(f"{url}{path}") as r:
                    assert r.status == 200
                    await r.read()
                reads[what].append((time.perf_counter() - start) * 1000)
        st = await status(s, url)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    # The server notes every stall over 5 ms (the latest 64): the window's own.
    stalls = [ms for at, ms in st["event_loop"]["recent_stalls"] if at >= began]
    return {
        "write_p50_ms": percentile(took, 50),
        "write_p99_ms": percentile(took, 99),
        "watcher_wakes": wakes,
        "services_ms": percentile(reads["services"], 50),
        "services_max_ms": max(reads["services"]),
        "nodes_ms": percentile(reads["nodes"], 50),
        "nodes_max_ms": max(reads["nodes"]),
        "metrics_ms": percentile(reads["metrics"], 50),
        "metrics_max_ms": max(reads["metrics"]),
        "max_stall_ms": max(stalls, default=0.0),
        "stalls_over_20ms": sum(1 for ms in stalls if ms > 20),
    }


def waypost_size(total: int, writes: int) -> dict[str, Any]:
    services = max(1, total // PER_SERVICE)
    data = Path(tempfile.mkdtemp(prefix="waypost-scale-"))
    server = ServerProcess(["--log-level", "warning", "--max-conns-per-client", "0"], data_dir=data)
    try:
        server.start()
        rate = asyncio.run(load(server.url, total, services))
        rss_loaded = rss_bytes(server.pid)
        watched = asyncio.run(watched_writes(server.url, total, services, writes))
        server.stop()
        began = time.perf_counter()
        server.start(server.url.removeprefix("http://"))
        restart_s = time.perf_counter() - began
        rss_restarted = rss_bytes(server.pid)
        count = asyncio.run(_instances(server.url))
        assert count == total + writes, (count, total)
        return {
            "services": services,
            "nodes": NODES,
            **watched,
            **_common(total, rate, rss_loaded, rss_restarted, restart_s),
        }
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def _common(
    total: int, rate: float, rss_loaded: int, rss_restarted: int, restart_s: float
) -> dict[str, Any]:
    """The figures both systems report."""
    return {
        "instances": total,
        "load_per_s": rate,
        "rss_loaded_mib": rss_loaded / 2**20,
        "rss_restarted_mib": rss_restarted / 2**20,
        "rss_bytes_per_instance": max(rss_loaded, rss_restarted) / total,
        "restart_s": restart_s,
    }


async def _instances(url: str) -> int:
    async with aiohttp.ClientSession() as s:
        return int((await status(s, url))["instances"])


def etcd_size(total: int) -> dict[str, Any]:
    """One etcd member holding ``total`` records: RSS, and restart until a range answers."""
    import aetcd

    data = Path(tempfile.mkdtemp(prefix="etcd-scale-"))
    client, peer = free_port(), free_port()
    cmd = etcd_command(data, client, peer, "--quota-backend-bytes", str(8 * 2**30))
    env = ETCD_ENV
    services = max(1, total // PER_SERVICE)

    async def ready() -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with aetcd.Client(host="127.0.0.1", port=client, timeout=1) as c:
                    await c.get(b"/waypost/instances/i-0")
                    return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def fill() -> float:
        async with aetcd.Client(host="127.0.0.1", port=client) as c:
            counter = iter(range(0, total, 100))

            async def worker() -> None:
                for start in counter:
                    ops = [
                        c.transactions.put(f"/waypost/instances/i-{n}".encode(),
                                           ENC(record(n, services)))
                        for n in range(start, min(start + 100, total))
                    ]  # fmt: skip
                    await c.transaction(compare=[], success=ops, failure=[])

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(8)))
            return total / (time.perf_counter() - began)

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        asyncio.run(ready())
        rate = asyncio.run(fill())
        rss_loaded = rss_bytes(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        asyncio.run(ready())
        restart_s = time.perf_counter() - began
        rss_restarted = rss_bytes(proc.pid)
        return _common(total, rate, rss_loaded, rss_restarted, restart_s)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--writes", type=int, default=2000)
    ap.add_argument("--no-etcd", action="store_true")
    args = ap.parse_args()
    rows: dict[str, Any] = {}
    for total in args.sizes:
        rows[str(total)] = {"waypost": waypost_size(total, args.writes)}
        print(total, rows[str(total)], flush=True)
        if not args.no_etcd:
            rows[str(total)]["etcd"] = etcd_size(total)
            print(total, rows[str(total)]["etcd"], flush=True)
    table: list[tuple[str, str, str, str]] = []
    for total, row in rows.items():
        w, e = row["waypost"], row.get("etcd", {})
        n = f"{int(total):,}"

        def fmt(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        def ratio(key: str, higher_wins: bool, w: dict[str, Any] = w, e: dict[str, Any] = e) -> str:
            if key not in e or not w[key] or not e[key]:
                return "-"
            return f"{(w[key] / e[key]) if higher_wins else (e[key] / w[key]):.2f}x"

        table += [
            (f"{n}: load, registrations/s (batches of 1,000; etcd: txns of 100)",
             f"{w['load_per_s']:,.0f}", fmt(e.get("load_per_s"), ",.0f"),
             ratio("load_per_s", True)),
            (f"{n}: registration p50 / p99 ms, `/services` watcher parked (p99 target <= 5)",
             f"{w['write_p50_ms']:.2f} / {w['write_p99_ms']:.2f}", "-", "-"),
            (f"{n}: `/api/v1/services` after a change, p50 / max ms (target <= 10)",
             f"{w['services_ms']:.2f} / {w['services_max_ms']:.2f}", "-", "-"),
            (f"{n}: `/api/v1/nodes` after a change, p50 / max ms (target <= 10)",
             f"{w['nodes_ms']:.2f} / {w['nodes_max_ms']:.2f}", "-", "-"),
            (f"{n}: `/metrics` scrape, p50 / max ms (issue 13 target <= 50)",
             f"{w['metrics_ms']:.2f} / {w['metrics_max_ms']:.2f}", "-", "-"),
            (f"{n}: longest event-loop stall while measured, ms (count > 20 ms; target <= 20)",
             f"{w['max_stall_ms']:.1f} ({w['stalls_over_20ms']})" if w["max_stall_ms"]
             else "< 5 (0)", "-", "-"),
            (f"{n}: RSS MiB, loaded / after restart (target at 1M: <= 1,536)",
             f"{w['rss_loaded_mib']:.0f} / {w['rss_restarted_mib']:.0f}",
             f"{fmt(e.get('rss_loaded_mib'), '.0f')} / {fmt(e.get('rss_restarted_mib'), '.0f')}",
             ratio("rss_bytes_per_instance", False)),
            (f"{n}: RSS bytes per instance", f"{w['rss_bytes_per_instance']:,.0f}",
             fmt(e.get("rss_bytes_per_instance"), ",.0f"), ratio("rss_bytes_per_instance", False)),
            (f"{n}: restart to serving every instance, s (target at 1M: <= 10)",
             f"{w['restart_s']:.2f}", fmt(e.get("restart_s"), ".2f"), ratio("restart_s", False)),
        ]  # fmt: skip
    write_results(
        "scale",
        {"sizes": rows, "per_service": PER_SERVICE, "nodes": NODES, "writes": args.writes},
        table,
        "Waypost: one `waypost server` on SQLite (DNS on), instances in services of "
        f"{PER_SERVICE} over {NODES} nodes; single registrations are sequential PUTs from "
        "one aiohttp client while a blocking query on `/api/v1/services` is re-armed after "
        "every answer. The stall is the server's own figure (`/status` `event_loop`: how "
        "late a 10 ms timer ran). etcd 3.4: one member, one key per instance (the same "
        "JSON), restart timed until a get answers. The load generator shares the 2 cores.",
    )


if __name__ == "__main__":
    main()
