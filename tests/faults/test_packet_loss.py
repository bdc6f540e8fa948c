"""1 % packet loss between agents and the registry (nftables ``numgen random``, both ways)
for two minutes (ten in bench/faults.py): with the default node TTL, sync interval and
check thresholds, not one service is deregistered and not one changes status."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.faults.conftest import Netns, loss_rules, registry_and_agents
from waypost.sse import SseParser

LOSS_S = float(os.environ.get("WAYPOST_FAULT_LOSS_S", "120"))
AGENTS = 3


def events_since(url: str, revision: int, upto: int) -> list[tuple[str, dict[str, Any]]]:
    """Every event after ``revision`` up to ``upto``, as (event name, entry)."""
    import msgspec

    out: list[tuple[str, dict[str, Any]]] = []
    parser = SseParser()
    timeout = httpx.Timeout(10, read=30)
    with httpx.stream("GET", f"{url}/api/v1/events?index={revision}", timeout=timeout) as r:
        for chunk in r.iter_bytes():
            for msg in parser.feed(chunk):
                if msg.data:
                    out.append((msg.event, msgspec.json.decode(msg.data)))
                if msg.id and int(msg.id.split(".")[0]) >= upto:
                    return out
    return out


@pytest.mark.timeout(LOSS_S + 120)
def test_one_percent_loss_makes_no_false_deregistration_and_no_flap(
    netns: Any, tmp_path: Path
) -> None:
    ns: Netns = netns()
    with ns.inside(), registry_and_agents(
        tmp_path, AGENTS,
        lambda a, port: "".join(
            f"- id: s{a}-{k}\n  service: svc{k}\n  port: {9000 + k}\n"
            f"  checks:\n    - http: http://127.0.0.1:{port}/health\n      interval: 5s\n"
            for k in range(2)
        ),
    ) as (url, port, _):  # fmt: skip
        with httpx.Client(base_url=url, timeout=10) as h:

            def statuses() -> list[str]:
                return [i["status"] for i in h.get("/api/v1/instances").json()]

            wait_until(lambda: statuses() == ["passing"] * (2 * AGENTS), 30, "all passing")
            start = h.get("/status").json()["revision"]
            ns.nft(loss_rules("127.0.0.2", port, 1))
            time.sleep(LOSS_S)  # the fault: this long under loss
            ns.flush()
            end = h.get("/status").json()["revision"]
            assert statuses() == ["passing"] * (2 * AGENTS)
            assert sorted(n["status"] for n in h.get("/api/v1/nodes").json()) == ["alive"] * AGENTS
        seen = events_since(url, start, end) if end > start else []
        deletes = [e for name, e in seen if name in ("delete", "node.delete")]
        flaps = [e for name, e in seen if name == "put" and e.get("status") != "passing"]
        assert not deletes, f"false deregistrations under 1% loss: {deletes[:3]}"
        assert not flaps, f"status flaps under 1% loss: {flaps[:3]}"
