"""An agent cut off from the registry (nftables in a namespace of our own) for longer than
its node TTL: its services go critical, as they should; once the partition heals they are
passing and registered again within one sync interval, with no duplicate."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_until
from tests.faults.conftest import Netns, partition_rules
from tests.integration.agents import AgentProcess
from waypost.testing import ServerProcess, free_port

NODE_TTL_S = 2.0
SYNC_S = 1.0


def web(h: httpx.Client) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = h.get("/api/v1/services/web").json()
    return got


def test_a_partitioned_agent_goes_critical_and_comes_back_once_healed(
    netns: Any, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    ns: Netns = netns()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.json").write_text('[{"id": "web-1", "service": "web", "port": 8080}]')
    with ns.inside():
        port = free_port()
        server = ServerProcess(["--no-dns"], tmp_path / "server").start(f"0.0.0.0:{port}")
        # The agent reaches the registry at 127.0.0.2 (the whole 127/8 is local): the
        # partition drops exactly that path, while this test reads at 127.0.0.1.
        agent = AgentProcess(
            f"http://127.0.0.2:{port}", "n1", conf, tmp_path / "agent",
            "--node-ttl", f"{NODE_TTL_S:g}s", "--sync-interval", f"{SYNC_S:g}s",
        ).start()  # fmt: skip
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as h:
                wait_until(lambda: [i["status"] for i in web(h)] == ["passing"], 15, "passing")
                ns.nft(partition_rules("127.0.0.2", port))
                cut_at = time.monotonic()
                wait_until(
                    lambda: [i["status"] for i in web(h)] in (["critical"], []),
                    NODE_TTL_S * 6,
                    "the cut-off node's service to go critical",
                )
                # Not before its TTL (less the third since its last keep-alive).
                assert time.monotonic() - cut_at >= NODE_TTL_S * 0.6
                ns.flush()
                healed_at = time.monotonic()
                wait_until(
                    lambda: [(i["id"], i["status"]) for i in web(h)] == [("web-1", "passing")],
                    SYNC_S * 6 + NODE_TTL_S,
                    "the service back, passing, once",
                )
                back_s = time.monotonic() - healed_at
                record_property("recovery_s", round(back_s, 2))
                nodes = [n["id"] for n in h.get("/api/v1/nodes").json()]
                assert nodes.count("n1") == 1
                assert back_s < SYNC_S * 6 + NODE_TTL_S
        finally:
            agent.stop()
            server.stop()
