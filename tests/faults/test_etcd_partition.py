"""etcd partitions: a 3-member cluster, each member in a namespace of its own linked to a
hub namespace (where the test, its clients and the Waypost servers run), nftables in a
member's namespace cutting it off from the other members while clients still reach it.
Writes go on through two Waypost servers on different sides; no acknowledged write is
lost, the cut-off side acknowledges none, and no client sees a revision go backwards."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import instance, wait_until
from tests.faults.conftest import Netns, isolation_rules, link
from waypost.testing import EtcdCluster, ServerProcess

HOSTS = ["10.77.0.2", "10.77.1.2", "10.77.2.2"]
CUT_S = 3.0
# Writes in flight when the cut comes may still be acknowledged for this long (etcd's
# election timeout in the test cluster is 0.5 s).
GRACE_S = 1.0


@contextlib.contextmanager
def cluster_in_namespaces(
    netns: Callable[[], Netns], data: Path
) -> Iterator[tuple[Netns, list[Netns], EtcdCluster]]:
    """The hub (entered), the members' namespaces, and the running cluster."""
    hub = netns()
    members = [netns() for _ in HOSTS]
    hub.forward()
    for i, (ns, host) in enumerate(zip(members, HOSTS, strict=True)):
        link(hub, ns, f"10.77.{i}.1", host)
        ns.ip("route", "add", "default", "via", f"10.77.{i}.1")
    cluster = EtcdCluster(3, data, hosts=HOSTS)
    try:
        for i, ns in enumerate(members):
            with ns.inside():  # the member's process lives in its namespace
                cluster._spawn(i)
        with hub.inside():
            cluster.wait_ready(30)
            yield hub, members, cluster
    finally:
        cluster.stop()


class Writer(threading.Thread):
    """Registers instances through one server until stopped; keeps what was acknowledged
    and every revision it was answered with (its own view, in order)."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.name_ = name
        self.acked: list[str] = []
        self.ack_times: list[float] = []
        self.refused = 0
        self.seen: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=4) as h:
            n = 0
            while not self.stop.is_set():
                iid = f"{self.name_}-{n}"
                n += 1
                try:
                    r = h.put(f"/api/v1/instances/{iid}", json=instance(iid, "web"))
                except httpx.HTTPError:
                    self.refused += 1
                    continue
                if r.status_code == 200:
                    self.acked.append(iid)
                    self.ack_times.append(time.monotonic())
                    self.seen.append(r.json()["index"])
                else:
                    self.refused += 1
                try:
                    got = h.get("/api/v1/services/web")
                    if got.status_code == 200:
                        self.seen.append(int(got.headers["X-Waypost-Revision"]))
                except httpx.HTTPError:
                    pass


@contextlib.contextmanager
def two_sides(cluster: EtcdCluster, cut: int, data: Path) -> Iterator[list[Writer]]:
    """A Waypost server on member ``cut`` alone and one on the others, each with a writer
    (``[cut side, other side]``), writing from the start; stopped at the end."""
    eps = cluster.endpoints
    rest = ",".join(eps[i] for i in range(len(eps)) if i != cut)
    servers: list[ServerProcess] = []
    writers: list[Writer] = []
    try:
        for name, store in (("cut", eps[cut]), ("rest", rest)):
            args = ["--no-dns", "--store", f"etcd://{store}/t/"]
            servers.append(ServerProcess(args, data / name).start())
            writers.append(Writer(servers[-1].url, name))
            writers[-1].start()
        wait_until(lambda: all(w.acked for w in writers), 10, "writes on both sides")
        yield writers
    finally:
        for w in writers:
            w.stop.set()
        for server in servers:
            server.stop()


def settle_and_check(
    writers: list[Writer], cut_at: float, healed_at: float, record: Callable[[str, object], Any]
) -> None:
    """After the heal: stop writing; every acknowledged write on both servers; no
    revision backwards for a client; nothing acknowledged by the cut side while cut."""
    for w in writers:
        w.stop.set()
    for w in writers:
        w.join(15)
    acked = {i for w in writers for i in w.acked}

    def listed(url: str) -> set[str]:
        return {i["id"] for i in httpx.get(f"{url}/api/v1/instances", timeout=10).json()}

    wait_until(
        lambda: all(acked <= listed(w.url) for w in writers),
        20,
        "every acknowledged write on both servers",
    )
    record("recovery_s", round(time.monotonic() - healed_at, 2))
    for w in writers:
        assert w.seen == sorted(w.seen), f"{w.name_}: a revision went backwards"
    assert writers[1].acked, "the side with the majority never wrote"
    # The cut-off side acknowledged nothing while cut off (past writes in flight).
    during = [t for t in writers[0].ack_times if cut_at + GRACE_S < t < healed_at]
    assert not during, f"the cut-off side acknowledged {len(during)} writes while cut off"


def others(cut: int) -> list[str]:
    return [h for i, h in enumerate(HOSTS) if i != cut]


def test_the_leader_cut_off_during_writes_loses_nothing_acknowledged(
    netns: Callable[[], Netns], tmp_path: Path, record_property: Callable[[str, object], Any]
) -> None:
    with cluster_in_namespaces(netns, tmp_path / "etcd") as (_, members, cluster):
        leader = cluster.leader()
        with two_sides(cluster, leader, tmp_path) as writers:
            members[leader].nft(isolation_rules(others(leader)))
            cut_at = time.monotonic()
            before = len(writers[1].acked)
            wait_until(lambda: len(writers[1].acked) > before + 5, 15, "the majority writing on")
            time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))  # the fault's length
            members[leader].flush()
            healed_at = time.monotonic()
            # Writes go on after the heal, on both sides, before the check.
            at_heal = [len(w.acked) for w in writers]
            wait_until(
                lambda: all(len(w.acked) > n + 5 for w, n in zip(writers, at_heal, strict=True)),
                30,
                "writes on both sides after the heal",
            )
            settle_and_check(writers, cut_at, healed_at, record_property)


def test_a_follower_cut_off_refuses_writes_says_so_and_catches_up(
    netns: Callable[[], Netns], tmp_path: Path, record_property: Callable[[str, object], Any]
) -> None:
    with cluster_in_namespaces(netns, tmp_path / "etcd") as (_, members, cluster):
        cut = next(i for i in range(3) if i != cluster.leader())
        with two_sides(cluster, cut, tmp_path) as writers:
            lone = writers[0].url
            members[cut].nft(isolation_rules(others(cut)))
            cut_at = time.monotonic()
            # The cut-off server knows it is not current: /health fails, with the reason.
            wait_until(
                lambda: httpx.get(f"{lone}/health", timeout=5).status_code == 503,
                15,
                "the cut-off server's /health to fail",
            )
            time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))  # the fault's length
            members[cut].flush()
            healed_at = time.monotonic()
            wait_until(
                lambda: httpx.get(f"{lone}/health", timeout=5).status_code == 200,
                20,
                "the cut-off server healthy again",
            )
            settle_and_check(writers, cut_at, healed_at, record_property)
