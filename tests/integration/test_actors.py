"""Actor networks in separate processes with one registry: discovery by capability and
tags, a workflow crossing two other networks and coming back (every message once, in
order), alias conflicts, a wrong token refused, graceful and abrupt ends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import ServerProcess, in_thread, until, wait_until
from waypost.actors import (
    Actor,
    ActorNotFound,
    AuthenticationFailed,
    Context,
    NameConflict,
    Network,
)

TOKEN = "s3cret"


@contextmanager
def worker(
    server: ServerProcess, network_id: str, actors: str, *args: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A network in a process of its own; yields it and its HTTP base URL."""
    cmd = [
        sys.executable, "-m", "waypost", "network", "--mode", "worker",
        "--discovery", server.url, "--network-id", network_id,
        "--instance-id", f"{network_id}-1", "--actors", actors, "--auth-token", TOKEN, *args,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        _, errs = proc.communicate(timeout=10)
        raise RuntimeError(f"worker {network_id} did not start: {line!r} {errs[-2000:]}")
    base = line.split("serving ", 1)[1].split(" ", 1)[0].replace("ws://", "http://")
    try:
        yield proc, base.removesuffix("/ws")
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=15)


async def handled(base: str) -> int:
    """How many messages a worker's actors have handled (its ``/status``)."""
    async with httpx.AsyncClient(timeout=10) as http:
        return int((await http.get(f"{base}/status")).json()["handled"])


class Source(Actor):
    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        await ctx.emit("out", payload)


class Sink(Actor):
    outports = ()

    def __init__(self) -> None:
        self.got: list[object] = []

    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        self.got.append(payload)


def test_three_networks_discover_each_other_and_run_one_workflow(server: ServerProcess) -> None:
    kit = "waypost.actors.examples"
    with (
        worker(server, "beta", f"upper={kit}:Upper", "--capabilities", "text", "--tags", "prod")
        as (_, beta),
        worker(server, "gamma", f"reverse={kit}:Reverse,upper={kit}:Upper",
               "--capabilities", "text,reverse") as (_, _gamma),
    ):  # fmt: skip

        async def go() -> None:
            alpha = Network(
                "alpha", instance_id="a1", discovery=[server.url], auth_token=TOKEN,
                capabilities=["orchestration"],
            )  # fmt: skip
            sink = Sink()
            alpha.add_node("src", Source())
            alpha.add_node("sink", sink)
            async with alpha:
                found = await alpha.discover_networks(capability="text")
                assert {n.network_id for n in found} == {"beta", "gamma"}
                assert [n.network_id for n in await alpha.discover_networks(tags=["prod"])] == [
                    "beta"
                ]
                assert [n.network_id for n in await alpha.discover_networks("reverse")] == ["gamma"]
                actors = {a.name: a for a in await alpha.discover_actors("gamma")}
                assert set(actors) == {"reverse", "upper"}
                assert actors["reverse"].component == "Reverse"
                assert actors["reverse"].inports == ["in"]
                assert "reverse" in actors["reverse"].capabilities
                assert await alpha.is_network_available("beta")
                assert not await alpha.is_network_available("nowhere")
                assert await alpha.ping("beta") > 0

                up = await alpha.register_remote_actor("upper", "beta")
                rev = await alpha.register_remote_actor("reverse", "gamma")
                # A second "upper": the name is taken, so it gets <network>_<actor>.
                assert await alpha.register_remote_actor("upper", "gamma") == "gamma_upper"
                with pytest.raises(NameConflict):
                    await alpha.register_remote_actor("upper", "gamma", strategy="fail")
                with pytest.raises(ActorNotFound):
                    await alpha.register_remote_actor("nope", "gamma")
                alpha.add_connection(("src", "out"), (up, "in"))
                alpha.add_connection((up, "out"), (rev, "in"))
                alpha.add_connection((rev, "out"), ("sink", "in"))
                sent = [f"m{i:04d}" for i in range(300)]
                for m in sent:
                    await alpha.send("src", "in", m)  # returns once the sink has it
                assert sink.got == [m.upper()[::-1] for m in sent]
                status = alpha.bridge_status()
                assert {link["network_id"] for link in status["links"]} == {"beta", "gamma"}
                assert all(link["queued"] == 0 for link in status["links"])

                # Concurrent senders: each message still handled once, none lost.
                sink.got.clear()
                await asyncio.gather(*(alpha.send("src", "in", f"c{i}") for i in range(200)))
                assert sorted(sink.got) == sorted(f"c{i}".upper()[::-1] for i in range(200))

                # A balanced alias spreads messages over every network offering it.
                assert sorted(await alpha.register_balanced("any-upper", "upper")) == [
                    "beta",
                    "gamma",
                ]
                bases = {"beta": beta, "gamma": _gamma}
                before = {n: await handled(u) for n, u in bases.items()}
                for i in range(10):
                    await alpha.send("any-upper", "in", f"b{i}")
                after = {n: await handled(u) for n, u in bases.items()}
                assert {n: after[n] - before[n] for n in after} == {"beta": 5, "gamma": 5}

                # A wrong token: refused, and nothing reaches beta's actor.
                handled_before = await handled(beta)
                intruder = Network(
                    "intruder", instance_id="x1", discovery=[server.url], auth_token="wrong"
                )
                async with intruder:
                    with pytest.raises(AuthenticationFailed):
                        await intruder.send_remote("beta", "upper", "in", "let me in")
                assert await handled(beta) == handled_before

        asyncio.run(go())


def test_a_stopped_network_unregisters_and_a_killed_one_expires(server: ServerProcess) -> None:
    kit = "waypost.actors.examples"

    def entries(network: str) -> list[dict[str, object]]:
        rows = httpx.get(f"{server.url}/api/v1/instances").json()
        return [
            r
            for r in rows
            if r["meta"].get("network_id") == network or r["meta"].get("network") == network
        ]

    with worker(server, "calm", f"upper={kit}:Upper", "--heartbeat-interval", "1s") as (p, _):
        wait_until(lambda: len(entries("calm")) == 2, 10, "calm registered")
        p.terminate()
        p.wait(15)
        assert entries("calm") == []  # unregistered on the way out
    with worker(server, "doomed", f"upper={kit}:Upper", "--heartbeat-interval", "1s") as (p, _):
        wait_until(lambda: len(entries("doomed")) == 2, 10, "doomed registered")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        wait_until(
            lambda: {r["status"] for r in entries("doomed")} == {"critical"},
            15,
            "the killed network's entries to go critical",
        )
        wait_until(lambda: entries("doomed") == [], 20, "them to be deregistered")


def test_kill9_of_the_primary_fails_over_and_every_acknowledged_send_is_handled_once(
    server: ServerProcess,
) -> None:
    kit = "waypost.actors.examples"
    with (
        worker(server, "prim", f"upper={kit}:Upper") as (primary, _),
        worker(server, "back", f"upper={kit}:Upper") as (_, _back),
    ):

        async def go() -> None:
            alpha = Network(
                "alpha", instance_id="a2", discovery=[server.url], auth_token=TOKEN,
                send_timeout="5s",
            )  # fmt: skip
            sink = Sink()
            alpha.add_node("src", Source())
            alpha.add_node("sink", sink)
            async with alpha:
                order = await alpha.register_failover("up", "upper", ["prim", "back"])
                assert order == ["prim", "back"]
                alpha.add_connection(("src", "out"), ("up", "in"))
                alpha.add_connection(("up", "out"), ("sink", "in"))
                acked: list[str] = []

                async def sender(k: int) -> None:
                    for i in range(60):
                        m = f"s{k}-{i:03d}"
                        await alpha.send("src", "in", m)
                        acked.append(m)

                senders = [asyncio.create_task(sender(k)) for k in range(4)]
                await until(lambda: len(acked) >= 60, "some sends through the primary")
                os.kill(primary.pid, signal.SIGKILL)  # mid-stream: sends are in flight
                await asyncio.gather(*senders)
                assert len(acked) == 240  # every send returned: the backup took over
                counts = Counter(sink.got)
                assert set(counts) == {m.upper() for m in acked}
                assert max(counts.values()) == 1, [m for m, c in counts.items() if c > 1]
                assert alpha.remote_actors()[0].network_id == "back"

        asyncio.run(go())


def test_a_remote_actor_that_stops_answering_is_marked_and_found_again(
    server: ServerProcess,
) -> None:
    from waypost.actors import DiscoveryConfig

    kit = "waypost.actors.examples"
    quick = DiscoveryConfig(
        refresh_interval="300ms", health_check_interval="200ms", retries=2, timeout="1s"
    )

    async def go() -> None:
        alpha = Network(
            "alpha", instance_id="a3", discovery=[server.url], auth_token=TOKEN,
            discovery_config=quick, send_timeout="3s",
        )  # fmt: skip
        sink = Sink()
        alpha.add_node("src", Source())
        alpha.add_node("sink", sink)
        async with alpha:
            flaky = worker(server, "flaky", f"upper={kit}:Upper", "--heartbeat-interval", "1s")
            async with in_thread(flaky) as (proc, _):
                up = await alpha.register_remote_actor("upper", "flaky")
                alpha.add_connection(("src", "out"), (up, "in"))
                alpha.add_connection((up, "out"), ("sink", "in"))
                await alpha.send("src", "in", "one")
                assert alpha.remote_actors()[0].available
                os.kill(proc.pid, signal.SIGKILL)
                await until(lambda: not alpha.remote_actors()[0].available, "marked unavailable")
            # The network comes back (a new process, a new port): found again.
            again = worker(server, "flaky", f"upper={kit}:Upper", "--heartbeat-interval", "1s")
            async with in_thread(again):
                await until(lambda: alpha.remote_actors()[0].available, "available again", 15)
                await alpha.send("src", "in", "two")
        assert sink.got == ["ONE", "TWO"]

    asyncio.run(go())


def test_limits_manual_registration_and_refusals() -> None:
    """In one process: the size limit, max_connections, manual registration, and a
    message to an actor that is not there."""
    from waypost.actors import MessageTooLarge, NetworkNotFound
    from waypost.testing import running_server

    async def go() -> None:
        async with running_server() as registry:
            urls = [registry.url]
            small = Network(
                "small", instance_id="s1", discovery=urls, auth_token=TOKEN, max_connections=1,
                auto_register=False, max_message_bytes=1000,
            )  # fmt: skip
            small.add_node("sink", Sink())
            a = Network("a", instance_id="a1", discovery=urls, auth_token=TOKEN)
            b = Network("b", instance_id="b1", discovery=urls, auth_token=TOKEN)
            async with small, a, b:
                # Not registered until asked.
                with pytest.raises(NetworkNotFound):
                    await a.send_remote("small", "sink", "in", "x")
                await small.register()
                await a.send_remote("small", "sink", "in", "x")
                # One connection at most: a second network is refused.
                with pytest.raises(AuthenticationFailed, match="too many connections"):
                    await b.send_remote("small", "sink", "in", "y")
                # Too large, before anything is sent; and no such actor, from the far end.
                with pytest.raises(MessageTooLarge):
                    await small.send("sink", "in", "z" * 2000)
                with pytest.raises(ActorNotFound):
                    await a.send_remote("small", "nobody", "in", "x")

    asyncio.run(go())
