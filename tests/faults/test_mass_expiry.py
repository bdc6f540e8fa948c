"""The registry itself loses the network (every agent cut off at once, for three node
TTLs): it holds the lapsing leases instead of emptying itself, says so in /status, and
deletes nothing; once the network is back the guard lets go. A single failed node is
still removed on time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import wait_until
from tests.faults.conftest import Netns, partition_rules, registry_and_agents
from tests.faults.test_packet_loss import events_since

NODE_TTL_S = 2.0
AGENTS = 5


def test_a_registry_cut_off_from_every_agent_does_not_empty_itself(
    netns: Callable[[], Netns], tmp_path: Path, record_property: Callable[[str, object], Any]
) -> None:
    ns = netns()
    with ns.inside(), registry_and_agents(
        tmp_path, AGENTS,
        lambda a, _: f'[{{"id": "web-{a}", "service": "web", "port": {8000 + a}}}]',
        "--node-ttl", f"{NODE_TTL_S:g}s", "--sync-interval", "1s",
    ) as (url, port, agents):  # fmt: skip
        with httpx.Client(base_url=url, timeout=10) as h:

            def web() -> list[str]:
                return sorted(i["id"] for i in h.get("/api/v1/services/web").json())

            everyone = [f"web-{a}" for a in range(AGENTS)]
            wait_until(lambda: web() == everyone, 20, "every agent registered")
            # One node really fails: its lease is revoked on time (the node is failed,
            # its instance critical, on the way out), the guard stays out of it.
            agents[0].kill9()
            failed_at = time.monotonic()

            def n0() -> str:
                nodes = {n["id"]: n["status"] for n in h.get("/api/v1/nodes").json()}
                return str(nodes.get("n0", "gone"))

            wait_until(lambda: n0() in ("failed", "gone"), NODE_TTL_S * 4, "n0 failed")
            # Not before its keep-alives stopped mattering (renewed every third of the TTL).
            assert time.monotonic() - failed_at >= NODE_TTL_S * 0.6
            assert h.get("/status").json()["lease_guard"]["times_triggered"] == 0
            start = h.get("/status").json()["revision"]
            # Now the registry loses the network: every agent cut off at once.
            ns.nft(partition_rules("127.0.0.2", port))
            wait_until(
                lambda: h.get("/status").json()["lease_guard"]["holding"],
                NODE_TTL_S * 4,
                "the guard to hold",
            )
            time.sleep(NODE_TTL_S * 3)  # the fault goes on: three TTLs cut off
            assert h.get("/status").json()["lease_guard"]["holding"]
            live = [f"web-{a}" for a in range(1, AGENTS)]
            assert [i for i in web() if i != "web-0"] == live
            ns.flush()
            healed = time.monotonic()
            wait_until(
                lambda: not h.get("/status").json()["lease_guard"]["holding"],
                NODE_TTL_S * 4,
                "the guard to let go once keep-alives are back",
            )
            record_property("recovery_s", round(time.monotonic() - healed, 2))
            end = h.get("/status").json()["revision"]
            nodes = {n["id"]: n["status"] for n in h.get("/api/v1/nodes").json()}
            assert all(nodes[f"n{a}"] == "alive" for a in range(1, AGENTS)), nodes
        seen = events_since(url, start, end) if end > start else []
        deleted = [e for name, e in seen if name in ("delete", "node.delete")
                   and e.get("id") not in ("n0", "web-0")]  # fmt: skip
        assert not deleted, f"the cut-off registry deleted {deleted[:3]}"
