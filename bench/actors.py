"""Actor networks: messages/s and latency between two networks in separate processes,
next to a raw ``websockets`` echo server and client in the same run.

- request-response: one send at a time (each waits for its ack: handled downstream);
- pipelined: 64 sends in flight at once.

Waypost: a worker process runs ``echo`` (an actor that handles and returns); this process
runs a network that sends to it with ``send_remote`` (auth, routing, seq/ack, dedupe).
Peer: a ``websockets`` echo server in another process and a ``websockets`` client here,
one message answered by one message. Writes ``results/actors.{json,md}``.

    .venv/bin/python bench/actors.py
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

from _harness import percentile, waypost_server, write_results  # noqa: E402

SECONDS = 3.0
PIPELINE = 64
ROUNDS = 2

ECHO_SERVER = """
import asyncio, sys, websockets
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", 0, compression=None) as s:
        print("serving", s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"""

ACTOR = """
from waypost.actors import Actor
class Echo(Actor):
    async def handle(self, port, payload, ctx):
        return None
"""


async def timed(one: object, concurrency: int) -> tuple[float, float, float]:
    """Messages/s, p50 and p99 ms of ``one()`` called by ``concurrency`` loops."""
    lat: list[float] = []
    stop = time.perf_counter() + SECONDS

    async def loop() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await one()  # type: ignore[operator]
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    took = time.perf_counter() - start
    return len(lat) / took, percentile(lat, 50) * 1000, percentile(lat, 99) * 1000


async def raw(port: int, concurrency: int) -> tuple[float, float, float]:
    import websockets

    conns = [
        await websockets.connect(f"ws://127.0.0.1:{port}", compression=None)
        for _ in range(concurrency)
    ]
    free = list(conns)

    async def one() -> None:
        ws = free.pop()
        await ws.send(b'{"n": 1}')
        await ws.recv()
        free.append(ws)

    try:
        return await timed(one, concurrency)
    finally:
        for ws in conns:
            await ws.close()


async def waypost(registry: str, concurrency: int) -> tuple[float, float, float]:
    from waypost.actors import Network

    net = Network("bench-src", instance_id="s1", discovery=[registry], auth_token="t")
    await net.start()
    try:
        await net.send_remote("bench-echo", "echo", "in", {"n": 0})  # the link, once

        async def one() -> None:
            await net.send_remote("bench-echo", "echo", "in", {"n": 1})

        return await timed(one, concurrency)
    finally:
        await net.stop()


def main() -> None:
    tmp = Path(__file__).resolve().parent / "results"
    tmp.mkdir(exist_ok=True)
    kit = tmp / "_bench_actor_kit.py"
    kit.write_text(ACTOR)
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None
    port = int(echo.stdout.readline().split()[1])
    rows: dict[str, list[tuple[float, float, float]]] = {}
    try:
        with waypost_server("--no-dns") as registry:
            worker = subprocess.Popen(
                [sys.executable, "-m", "waypost", "network", "--mode", "worker",
                 "--discovery", registry, "--network-id", "bench-echo",
                 "--actors", "echo=_bench_actor_kit:Echo", "--auth-token", "t"],
                stdout=subprocess.PIPE, text=True, cwd=tmp,
                env={**__import__("os").environ, "PYTHONPATH": str(tmp)},
            )  # fmt: skip
            assert worker.stdout is not None
            assert "serving" in worker.stdout.readline()
            try:
                for _ in range(ROUNDS):
                    for name, conc in (("rr", 1), ("pipelined", PIPELINE)):
                        rows.setdefault(f"raw-{name}", []).append(asyncio.run(raw(port, conc)))
                        rows.setdefault(f"waypost-{name}", []).append(
                            asyncio.run(waypost(registry, conc))
                        )
            finally:
                worker.terminate()
                worker.wait(10)
    finally:
        echo.terminate()
        echo.wait(10)
        kit.unlink(missing_ok=True)
    best = {k: max(v, key=lambda r: r[0]) for k, v in rows.items()}
    table = []
    for name, label in (("rr", "request-response"), ("pipelined", f"pipelined ({PIPELINE})")):
        w, r = best[f"waypost-{name}"], best[f"raw-{name}"]
        table.append((f"messages/s, {label}", f"{w[0]:.0f}", f"{r[0]:.0f}", f"{w[0] / r[0]:.2f}x"))
        table.append((f"p99 ms, {label}", f"{w[2]:.2f}", f"{r[2]:.2f}", ""))
    data = {"runs": rows, "best": best, "seconds": SECONDS, "pipeline": PIPELINE}
    notes = (
        "Peer: a `websockets` echo server in another process, one message answered by one "
        "message, no auth or routing. Waypost: `send_remote` to an actor in a worker "
        "process, each send returning once the actor handled it (seq, ack, token, "
        "routing). Best of two rounds each. Target >= 0.5x raw."
    )
    write_results("actors", data, table, notes)


if __name__ == "__main__":
    main()
