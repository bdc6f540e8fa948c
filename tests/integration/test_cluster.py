"""Cluster mode: real ``waypost server`` processes sharing a real 3-member etcd cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, instance, wait_until
from tests.integration.test_events import read_events
from waypost.sse import SseMessage
from waypost.store import EtcdStore
from waypost.testing import EtcdCluster

StartServer = Callable[..., ServerProcess]


def on_etcd(cluster: EtcdCluster, prefix: str, fn: Callable[[EtcdStore], Any]) -> Any:
    """Run ``fn(store)`` on a store of its own under ``prefix``, straight on etcd (as an
    operator's tool would, with no Waypost server in between)."""

    async def go() -> Any:
        store = EtcdStore(cluster.endpoints, prefix=prefix)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


async def _keys(store: EtcdStore) -> list[str]:
    return [e.key for e in await store.list()]


def _prefix(store_url: str) -> str:
    return "/" + store_url.split("/", 3)[3]


@pytest.fixture
def store_url(etcd_cluster: EtcdCluster, tmp_path: Path) -> str:
    """The shared cluster, under a prefix of this test's own."""
    return etcd_cluster.url(f"/t/{tmp_path.name}/")


def test_a_write_on_one_server_reaches_blocking_queries_and_streams_on_another(
    start_server: StartServer, store_url: str
) -> None:
    a = start_server("--store", store_url, "--no-dns", name="a")
    b = start_server("--store", store_url, "--no-dns", name="b")
    with httpx.Client(base_url=b.url, timeout=15) as http_b:
        first = http_b.get("/api/v1/services/web")
        assert first.json() == []
        index = int(first.headers["X-Waypost-Index"])
        blocked: list[httpx.Response] = []
        streamed: list[SseMessage] = []
        waiter = threading.Thread(
            target=lambda: blocked.append(
                httpx.get(
                    f"{b.url}/api/v1/services/web",
                    params={"index": index, "wait": "10s"},
                    timeout=15,
                )
            )
        )
        reader = threading.Thread(target=lambda: streamed.extend(read_events(b.url, 1)))
        waiter.start()
        reader.start()
        wait_until(lambda: http_b.get("/status").json()["event_streams"] >= 1, what="stream")
        wait_until(lambda: http_b.get("/status").json()["blocking_waiters"] >= 1, what="park")
        with httpx.Client(base_url=a.url, timeout=15) as http_a:
            r = http_a.put("/api/v1/instances/web-1", json=instance("web-1"))
            assert r.status_code == 200, r.text
            revision = r.json()["index"]
        waiter.join(15)
        reader.join(15)
    assert [i["id"] for i in blocked[0].json()] == ["web-1"]
    assert int(blocked[0].headers["X-Waypost-Index"]) == revision
    assert [(m.event, m.id) for m in streamed] == [("put", str(revision))]
    assert '"id":"web-1"' in streamed[0].data
    # Both say where they keep their state.
    with httpx.Client(base_url=a.url) as http_a:
        status = http_a.get("/status").json()
    assert status["store"] == "etcd"
    assert status["store_member"] in store_url


def test_ttl_instances_expire_with_no_waypost_server_running(
    start_server: StartServer, store_url: str, etcd_cluster: EtcdCluster
) -> None:
    """etcd's lease removes a TTL instance whose heartbeats stopped, with every Waypost
    server down."""
    server = start_server("--store", store_url, "--no-dns", name="ttl")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        body = instance("beat-1", ttl="1s", deregister_after="1s")
        assert http.put("/api/v1/instances/beat-1", json=body).status_code == 200
        kept = http.put("/api/v1/instances/kept-1", json=instance("kept-1"))
        assert kept.status_code == 200
    server.stop()
    wait_until(
        lambda: on_etcd(etcd_cluster, _prefix(store_url), _keys) == ["kept-1"],
        20,
        "etcd to expire the TTL instance",
        interval_s=0.2,
    )
    # A server started now sees what etcd holds.
    again = start_server("--store", store_url, "--no-dns", name="ttl2")
    with httpx.Client(base_url=again.url) as http:
        assert [i["id"] for i in http.get("/api/v1/instances").json()] == ["kept-1"]


def test_a_bad_etcd_url_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    run: Any = subprocess.run(
        [sys.executable, "-m", "waypost", "server", "--store", "etcd://nohost", "--no-dns"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "is not an etcd endpoint" in run.stderr
    assert "Traceback" not in run.stderr


def test_killing_the_etcd_leader_loses_no_acknowledged_registration(
    start_server: StartServer, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with EtcdCluster(3, tmp_path / "etcd") as cluster:
        url = cluster.url()
        a = start_server("--store", url, "--no-dns", name="a")
        b = start_server("--store", url, "--no-dns", name="b")
        acked: list[str] = []
        failed: list[str] = []
        started = threading.Event()

        def register(n: int) -> None:
            iid = f"w{n}"
            try:
                r = httpx.put(f"{a.url}/api/v1/instances/{iid}", json=instance(iid), timeout=30)
            except httpx.HTTPError:
                failed.append(iid)  # no answer counts as not acknowledged
                return
            finally:
                if n == 40:
                    started.set()
            (acked if r.status_code == 200 else failed).append(iid)
            if r.status_code != 200:
                assert r.status_code == 503, r.text  # a clear "try again", nothing else

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(register, n) for n in range(300)]
            started.wait(30)
            leader = cluster.leader()
            cluster.kill(leader)
            for f in futures:
                f.result()
        assert len(acked) + len(failed) == 300
        assert len(acked) > 40
        for server in (a, b):
            with httpx.Client(base_url=server.url, timeout=10) as http:

                def present(http: httpx.Client = http) -> set[str]:
                    return {i["id"] for i in http.get("/api/v1/instances").json()}

                wait_until(lambda p=present: set(acked) <= p(), 20, f"every ack on {server.url}")
        cluster.restart(leader)
        cluster.wait_ready(30)


def test_a_lease_revoked_behind_a_live_agent_is_granted_again(
    start_server: StartServer, store_url: str, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """etcd-io/etcd#13260: a lease that ends behind its owner's back (revoked here
    through etcd itself) must not make a live agent's services disappear."""
    from tests.integration.agents import AgentProcess

    server = start_server("--store", store_url, "--no-dns", name="s")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "api.yaml").write_text("services:\n  - service: api\n    port: 9000\n")
    agent = AgentProcess(server.url, "n1", conf, tmp_path / "agent", "--node-ttl", "6s").start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:

            def node() -> dict[str, Any] | None:
                r = http.get("/api/v1/nodes/n1")
                return r.json() if r.status_code == 200 and r.json().get("lease") else None

            def api_passing() -> bool:
                insts = http.get("/api/v1/instances?service=api").json()
                return [i["status"] for i in insts] == ["passing"]

            first = wait_until(node, 15, "the node on its lease")
            wait_until(api_passing, 15, "the agent's instance")
            on_etcd(etcd_cluster, _prefix(store_url), lambda s: s.revoke(first["lease"]))
            revoked = time.monotonic()
            again = wait_until(
                lambda: (n := node()) is not None and n["lease"] != first["lease"] and n,
                6,
                "the node on a new lease within one node-TTL",
            )
            wait_until(api_passing, max(0.5, 6 - (time.monotonic() - revoked)), "api back")
            assert again["lease"] != first["lease"]
    finally:
        agent.stop()


def _compact(endpoints: list[str]) -> int:
    """Compact etcd's history at its current revision (as an operator or etcd's
    auto-compaction does); return that revision."""
    from aetcd import rpc

    async def go() -> int:
        import grpc

        async with grpc.aio.insecure_channel(endpoints[0]) as channel:
            kv = rpc.KVStub(channel)
            rev = (await kv.Range(rpc.RangeRequest(key=b"/", count_only=True))).header.revision
            await kv.Compact(rpc.CompactionRequest(revision=rev, physical=True))
            return int(rev)

    return asyncio.run(go())


def test_a_restarted_server_catches_up_and_streams_resume_once_across_a_compaction(
    start_server: StartServer, store_url: str, etcd_cluster: EtcdCluster
) -> None:
    a = start_server("--store", store_url, "--no-dns", name="a")
    b = start_server("--store", store_url, "--no-dns", name="b")
    start = httpx.get(f"{a.url}/status").json()["revision"]
    with httpx.Client(base_url=a.url, timeout=10) as http:
        for n in range(5):
            assert http.put(f"/api/v1/instances/w{n}", json=instance(f"w{n}")).status_code == 200
    first = read_events(a.url, 5, index=start)
    assert [m.event for m in first] == ["put"] * 5
    a.kill9()
    # Meanwhile, through the other server.
    with httpx.Client(base_url=b.url, timeout=10) as http:
        for n in range(5, 8):
            assert http.put(f"/api/v1/instances/w{n}", json=instance(f"w{n}")).status_code == 200
        assert http.delete("/api/v1/instances/w1").status_code == 200
    a.restart()
    with httpx.Client(base_url=a.url, timeout=10) as http:
        ids = {i["id"] for i in http.get("/api/v1/instances").json()}
    assert ids == {"w0", "w2", "w3", "w4", "w5", "w6", "w7"}  # caught up
    # Resumed from its last event id on the restarted server: every change once, in order.
    second = read_events(a.url, 4, last_event_id=first[-1].id)
    assert [(m.event, m.data.split('"id":"')[1].split('"')[0]) for m in second] == [
        ("put", "w5"),
        ("put", "w6"),
        ("put", "w7"),
        ("delete", "w1"),
    ]
    ids_seen = [int(m.id or 0) for m in first + second]
    assert ids_seen == sorted(set(ids_seen))  # increasing: nothing twice
    # etcd compacts its history; a later change still reaches a client resuming from
    # where it stopped, once (the server's own memory reaches back that far).
    compacted = _compact(etcd_cluster.endpoints)
    assert compacted >= int(second[-1].id or 0)
    with httpx.Client(base_url=b.url, timeout=10) as http:
        assert http.put("/api/v1/instances/w8", json=instance("w8")).status_code == 200
    third = read_events(a.url, 1, last_event_id=second[-1].id)
    assert [(m.event, '"id":"w8"' in m.data) for m in third] == [("put", True)]
    # From before the compaction, on a server that never saw it: a clear 410, re-list.
    c = start_server("--store", store_url, "--no-dns", name="c")
    gone = httpx.get(
        f"{c.url}/api/v1/events", headers={"Last-Event-ID": first[0].id or "0"}, timeout=10
    )
    assert gone.status_code == 410
    assert "re-list" in gone.json()["message"]


def test_a_server_whose_watch_falls_behind_a_compaction_sends_the_difference(
    start_server: StartServer, store_url: str, etcd_cluster: EtcdCluster
) -> None:
    """etcd-io/etcd#9386: a paused server's watch falls behind, etcd compacts past it;
    the server lists again and its stream clients get what changed, each once."""
    import os
    import signal

    a = start_server("--store", store_url, "--no-dns", name="a")
    b = start_server("--store", store_url, "--no-dns", name="b")
    start = httpx.get(f"{a.url}/status").json()["revision"]
    seen: dict[str, int] = {}
    done = threading.Event()
    total = 1500

    def stream() -> None:
        from waypost.sse import SseParser

        parser = SseParser()
        with httpx.stream(
            "GET",
            f"{a.url}/api/v1/events",
            params={"index": start},
            timeout=httpx.Timeout(60, read=60),
        ) as r:
            for chunk in r.iter_raw():
                for m in parser.feed(chunk):
                    if m.event == "put":
                        key = m.data.split('"id":"')[1].split('"')[0]
                        seen[key] = seen.get(key, 0) + 1
                if len(seen) >= total:
                    done.set()
                    return

    reader = threading.Thread(target=stream)
    reader.start()
    wait_until(lambda: httpx.get(f"{a.url}/status").json()["event_streams"] >= 1, what="stream")
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        # One revision each (etcd queues 128 watch responses before a watcher falls
        # behind), 8 KB each (more than the transport buffers hold).
        big = {f"k{i}": "x" * 500 for i in range(16)}
        with httpx.Client(base_url=b.url, timeout=30) as http:
            for n in range(total):
                r = http.put(f"/api/v1/instances/w{n}", json=instance(f"w{n}", meta=big))
                assert r.status_code == 200, r.text
        _compact(etcd_cluster.endpoints)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    assert done.wait(60), f"the stream got {len(seen)} of {total}"
    reader.join(10)
    assert len(seen) == total
    assert max(seen.values()) == 1  # each once
    log = a.log.read_text()
    assert "re-listing" in log, "the watch never fell behind: the test proved nothing"


def test_servers_on_one_etcd_split_the_checks_and_take_over_from_one_that_leaves(
    start_server: StartServer, store_url: str
) -> None:
    from tests.integration.targets import HttpTarget

    target = HttpTarget()
    try:
        a = start_server("--store", store_url, "--no-dns", name="a")
        b = start_server("--store", store_url, "--no-dns", name="b")
        servers = wait_until(
            lambda: len(s := httpx.get(f"{a.url}/status").json()["servers"]) == 2 and s,
            15,
            "both servers to know each other",
        )
        check = {"http": f"http://127.0.0.1:{target.port}/", "interval": "200ms"}
        body = instance("web-1", checks=[check], address="127.0.0.1", port=target.port)
        r = httpx.put(f"{a.url}/api/v1/instances/web-1", json=body, timeout=10)
        assert r.status_code == 200, r.text

        def runner(server: ServerProcess) -> str | None:
            rows = httpx.get(f"{server.url}/api/v1/checks", timeout=10).json()
            return rows[0]["server"] if rows else None

        # Both agree on the one server that runs it.
        owner = wait_until(lambda: runner(a) in servers and runner(a), 10, "an owner")
        assert runner(b) == owner
        wait_until(
            lambda: httpx.get(f"{a.url}/api/v1/instances/web-1").json()["status"] == "passing",
            10,
            "the check to pass",
        )
        # The owner leaves: the other takes over and still sees the target fail.
        owner_proc, other = (a, b) if owner.endswith(f".{a.pid}") else (b, a)
        owner_proc.stop()
        wait_until(lambda: runner(other) != owner, 15, "the other server to take over")
        target.code = 500
        wait_until(
            lambda: httpx.get(f"{other.url}/api/v1/instances/web-1").json()["status"] == "critical",
            15,
            "the remaining server to run the check",
        )
    finally:
        target.close()


def test_health_says_when_etcd_is_gone_and_reads_go_on(
    start_server: StartServer, tmp_path: Path
) -> None:
    with EtcdCluster(3, tmp_path / "etcd") as cluster:
        server = start_server("--store", cluster.url(), "--no-dns", name="s")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.put("/api/v1/instances/w1", json=instance("w1")).status_code == 200
            assert http.get("/health").status_code == 200
            for i in range(3):
                cluster.kill(i)
            r = http.get("/health")
            assert r.status_code == 503
            assert "etcd" in r.json()["message"]
            # Reads answer from memory meanwhile.
            assert [i["id"] for i in http.get("/api/v1/instances").json()] == ["w1"]
            for i in range(3):
                cluster.restart(i)
            cluster.wait_ready(30)
            wait_until(lambda: http.get("/health").status_code == 200, 30, "etcd back")
            assert http.put("/api/v1/instances/w2", json=instance("w2")).status_code == 200
            ids = [i["id"] for i in http.get("/api/v1/instances").json()]
            assert ids == ["w1", "w2"]


def test_a_server_notices_when_etcd_data_is_replaced_and_lists_again(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A restore from backup (or a new cluster on the same addresses) takes etcd's
    revision back: a server that kept watching from its old revision would miss every
    change from then on. It must notice and list again."""
    import shutil

    cluster = EtcdCluster(3, tmp_path / "etcd").start()
    try:
        server = start_server("--store", cluster.url(), "--no-dns", name="s")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for n in range(20):
                assert (
                    http.put(f"/api/v1/instances/w{n}", json=instance(f"w{n}")).status_code == 200
                )
            cluster.stop()
            for n in range(3):
                shutil.rmtree(tmp_path / "etcd" / f"m{n}")
            cluster.start()

            def fresh() -> bool:
                r = http.put("/api/v1/instances/new-1", json=instance("new-1"), timeout=30)
                ids = [i["id"] for i in http.get("/api/v1/instances").json()]
                return r.status_code == 200 and ids == ["new-1"]

            wait_until(fresh, 30, "the server to follow the new data")
        assert "revision went back" in server.log.read_text()
    finally:
        cluster.stop()


def test_the_etcd_prefix_keeps_two_registries_apart(
    start_server: StartServer, etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    plain = "etcd://" + ",".join(etcd_cluster.endpoints)
    team = f"/team-{tmp_path.name}/"
    a = start_server("--store", plain, "--etcd-prefix", team, "--no-dns", name="a")
    b = start_server("--store", plain + f"/other-{tmp_path.name}/", "--no-dns", name="b")
    assert httpx.put(f"{a.url}/api/v1/instances/w1", json=instance("w1")).status_code == 200
    assert httpx.get(f"{b.url}/api/v1/instances").json() == []

    assert on_etcd(etcd_cluster, team, _keys) == ["w1"]


def test_writes_that_touch_no_entry_still_move_the_catalog(
    start_server: StartServer, store_url: str
) -> None:
    """Revoking a lease that holds nothing deletes only its bookkeeping key on etcd: the
    catalog must still reach that revision (a write waits for it to answer)."""
    server = start_server("--store", store_url, "--no-dns", name="s")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        lease = http.post("/api/v1/leases", json={"ttl": "30s"}).json()["id"]
        r = http.delete(f"/api/v1/leases/{lease}")
        assert r.status_code == 200
        assert http.get("/status").json()["revision"] >= r.json()["index"]


def test_a_server_started_without_etcd_exits_with_one_line() -> None:
    import subprocess
    import sys

    from waypost.testing import free_port

    run: Any = subprocess.run(
        [
            sys.executable, "-m", "waypost", "server", "--no-dns", "--http", "127.0.0.1:0",
            "--store", f"etcd://127.0.0.1:{free_port()}",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 8
    assert "etcd did not answer" in run.stderr
    assert "Traceback" not in run.stderr


def _answering(url: str) -> str:
    """Which process answered a request on a new connection (``/status`` ``server``)."""
    with httpx.Client(base_url=url, timeout=15) as fresh:
        return str(fresh.get("/status").json()["server"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_http_workers_share_the_port_answer_alike_and_are_kept_running(
    start_server: StartServer, store_url: str
) -> None:
    server = start_server("--store", store_url, "--no-dns", "--http-workers", "2")
    with httpx.Client(base_url=server.url, timeout=15) as http:

        def workers() -> list[str]:
            # A new connection each time: one held by a killed worker is reset with it.
            with httpx.Client(base_url=server.url, timeout=15) as fresh:
                servers = fresh.get("/status").json()["servers"]
            return [m for m in servers if not m.endswith(f".{server.pid}")]

        def one_worker(but: str = "") -> list[str] | None:
            found = workers()
            return found if len(found) == 1 and found[0] != but else None

        (worker,) = wait_until(one_worker, what="the worker joins")
        worker_pid = int(worker.rsplit(".", 1)[1])
        # New connections land on both processes; each answers from the same store.
        seen: set[str] = set()
        wait_until(lambda: seen.add(_answering(server.url)) or len(seen) == 2, what="both")
        r = http.put("/api/v1/instances/web-1", json=instance("web-1"))
        assert r.status_code == 200, r.text
        index = r.json()["index"]
        for _ in range(20):
            with httpx.Client(base_url=server.url, timeout=15) as fresh:
                got = fresh.get("/api/v1/services/web", params={"index": index - 1, "wait": "5s"})
                assert [i["id"] for i in got.json()] == ["web-1"]
        # A worker that dies is started again; the port answers throughout.
        os.kill(worker_pid, signal.SIGKILL)
        (again,) = wait_until(
            lambda: one_worker(but=worker), timeout_s=30, what="the worker is started again"
        )
        new_pid = int(again.rsplit(".", 1)[1])
    # The server killed outright cannot stop its worker: the worker stops by itself.
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    wait_until(lambda: not _alive(new_pid), timeout_s=20, what="the orphaned worker stops")


def test_http_workers_need_the_etcd_store(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "waypost", "server", "--http-workers", "2", "--no-dns",
         "--http", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert r.returncode != 0
    assert "http_workers" in r.stderr, r.stderr
    assert "etcd" in r.stderr, r.stderr
    assert not (tmp_path / "waypost.db").exists()


@pytest.fixture(scope="module")
def etcd_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a certificate for the etcd members and a client certificate for Waypost."""
    from tests.conftest import make_pki

    return make_pki(tmp_path_factory.mktemp("etcd-tls"), servers=["etcd"], clients=["waypost"])


def test_servers_work_end_to_end_on_an_etcd_with_client_tls_and_auth(
    start_server: StartServer, etcd_pki: Path, tmp_path: Path
) -> None:
    """Security review finding 19: the etcd store connected only without TLS and
    without etcd's auth, so a production etcd could not be used safely. Three members
    serving clients over TLS with --client-cert-auth and auth enabled; Waypost's user
    may read and write only its prefix."""
    pki = etcd_pki
    tls = (pki / "etcd.pem", pki / "etcd-key.pem", pki / "ca.pem")
    client = (pki / "waypost.pem", pki / "waypost-key.pem")
    with EtcdCluster(3, tmp_path / "etcd", tls=tls, client_cert=client) as cluster:
        cluster.enable_auth("waypost", "s3cret", prefix="/waypost/")
        url = cluster.url("/waypost/")
        assert url.startswith("etcds://")
        flags = ("--store", url, "--no-dns", "--etcd-ca", str(pki / "ca.pem"),
                 "--etcd-cert", str(client[0]), "--etcd-key", str(client[1]),
                 "--etcd-user", "waypost")  # fmt: skip
        env = {"WAYPOST_ETCD_PASSWORD": "s3cret"}
        a = start_server(*flags, env=env, name="a", node="a")
        b = start_server(*flags, env=env, name="b", node="b")
        with (
            httpx.Client(base_url=a.url, timeout=10) as ha,
            httpx.Client(base_url=b.url, timeout=10) as hb,
        ):
            index = int(hb.get("/api/v1/services/web").headers["X-Waypost-Index"])
            assert ha.put("/api/v1/instances/w1", json=instance("w1")).status_code == 200
            woke = hb.get("/api/v1/services/web", params={"index": index, "wait": "10s"})
            assert [i["id"] for i in woke.json()] == ["w1"]
            assert hb.get("/health").status_code == 200
            settings = hb.get("/status").json()["config"]
            assert settings["etcd_password"] == "********"
        # Without the password, or without a client certificate: a clear refusal.
        for bad_flags, bad_env, says in (
            (flags, {"WAYPOST_ETCD_PASSWORD": "wrong"}, "etcd refused user 'waypost'"),
            (flags[:5] + flags[9:], env, "etcd did not answer"),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "waypost", "server", "--http", "127.0.0.1:0",
                 "--data-dir", str(tmp_path / "bad"), *bad_flags],
                capture_output=True, text=True, timeout=60, env={**os.environ, **bad_env},
            )  # fmt: skip
            assert done.returncode != 0
            assert says in done.stderr, done.stderr[-2000:]
        # The user may touch only its prefix.
        other = cluster.url("/elsewhere/")
        done = subprocess.run(
            [sys.executable, "-m", "waypost", "server", "--http", "127.0.0.1:0",
             "--data-dir", str(tmp_path / "other"), "--store", other, *flags[2:]],
            capture_output=True, text=True, timeout=60, env={**os.environ, **env},
        )  # fmt: skip
        assert done.returncode != 0
        assert "permission denied" in done.stderr, done.stderr[-2000:]
