"""What Go's Consul clients (hashicorp/consul/api, used by Prometheus' ``consul_sd_configs``
and Traefik's Consul catalog provider) send and decode, replayed against a real server.

Neither program is in Debian here, so the test sends their documented request sequences
and decodes the answers into types that mirror the Go structs field for field (strings,
integers, maps where Go has them): a value of the wrong JSON type fails the decode, as it
would fail ``encoding/json`` in the real program.
"""

from __future__ import annotations

import threading
import time

import httpx
import msgspec

from tests.conftest import ServerProcess, instance


class AgentConfig(msgspec.Struct):
    Datacenter: str
    NodeName: str


class AgentSelf(msgspec.Struct):
    Config: AgentConfig


class ServiceAddress(msgspec.Struct):
    Address: str
    Port: int


class AgentWeights(msgspec.Struct):
    Passing: int
    Warning: int


class HealthNode(msgspec.Struct):  # api.Node
    ID: str
    Node: str
    Address: str
    Datacenter: str
    TaggedAddresses: dict[str, str]
    Meta: dict[str, str]
    CreateIndex: int
    ModifyIndex: int


class AgentService(msgspec.Struct):  # api.AgentService
    ID: str
    Service: str
    Tags: list[str]
    Meta: dict[str, str]
    Port: int
    Address: str
    TaggedAddresses: dict[str, ServiceAddress]
    Weights: AgentWeights
    EnableTagOverride: bool
    CreateIndex: int
    ModifyIndex: int


class HealthCheck(msgspec.Struct):  # api.HealthCheck
    Node: str
    CheckID: str
    Name: str
    Status: str
    Notes: str
    Output: str
    ServiceID: str
    ServiceName: str
    ServiceTags: list[str]


class ServiceEntry(msgspec.Struct):  # api.ServiceEntry
    Node: HealthNode
    Service: AgentService
    Checks: list[HealthCheck]


class CatalogService(msgspec.Struct):  # api.CatalogService (what Traefik reads)
    ID: str
    Node: str
    Address: str
    Datacenter: str
    TaggedAddresses: dict[str, str]
    NodeMeta: dict[str, str]
    ServiceID: str
    ServiceName: str
    ServiceAddress: str
    ServiceTags: list[str]
    ServiceMeta: dict[str, str]
    ServicePort: int
    ServiceWeights: AgentWeights
    ServiceEnableTagOverride: bool
    CreateIndex: int
    ModifyIndex: int


def consul_index(r: httpx.Response) -> int:
    """As the Go client parses X-Consul-Index: a uint64, required."""
    value = int(r.headers["X-Consul-Index"])
    assert 0 < value < 2**64
    assert r.headers["X-Consul-KnownLeader"] == "true"
    assert r.headers["content-type"].startswith("application/json")
    return value


def test_prometheus_consul_sd_sequence(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for n, status in enumerate(["passing", "passing", "critical"]):
            body = instance(f"web-{n}", address=f"10.0.0.{n}", tags=["prod"], status=status,
                            meta={"version": "1"})  # fmt: skip
            assert http.put(f"/api/v1/instances/web-{n}", json=body).status_code == 200
        reg = {"Name": "db", "ID": "db-1", "Port": 5432, "Address": "10.0.1.1"}
        assert http.put("/v1/agent/service/register", json=reg).status_code == 200

        # 1. The datacenter, from the agent.
        me = msgspec.json.decode(http.get("/v1/agent/self").content, type=AgentSelf)
        assert me.Config.Datacenter == "dc1"
        # 2. The services, as a blocking query with the wait and stale Prometheus sends.
        params = {"wait": "120000ms", "index": "1", "stale": ""}
        r = http.get("/v1/catalog/services", params=params)
        services = msgspec.json.decode(r.content, type=dict[str, list[str]])
        assert services == {"db": [], "web": ["prod"]}
        index = consul_index(r)
        # 3. Each service's instances with their health.
        r = http.get("/v1/health/service/web", params={"wait": "120000ms", "stale": ""})
        entries = msgspec.json.decode(r.content, type=list[ServiceEntry])
        consul_index(r)
        assert [(e.Service.ID, e.Service.Address, e.Service.Port) for e in entries] == [
            ("web-0", "10.0.0.0", 8080),
            ("web-1", "10.0.0.1", 8080),
            ("web-2", "10.0.0.2", 8080),
        ]
        assert entries[0].Service.Meta == {"version": "1"}
        # Prometheus keeps every entry and labels it with its checks' health.
        assert [c.Status for c in entries[2].Checks] == ["passing", "critical"]
        assert [c.Status for c in entries[0].Checks] == ["passing"]
        r = http.get("/v1/health/service/db", params={"stale": ""})
        [db] = msgspec.json.decode(r.content, type=list[ServiceEntry])
        assert (db.Service.ID, db.Service.Port, db.Node.Node) == ("db-1", 5432, "test-node")

        # 4. The services watch wakes when one is added, within the wait.
        def add() -> None:
            body = instance("api-1", "api", address="10.0.2.1")
            httpx.put(f"{server.url}/api/v1/instances/api-1", json=body).raise_for_status()

        timer = threading.Timer(0.3, add)
        timer.start()
        try:
            start = time.monotonic()
            r = http.get(
                "/v1/catalog/services",
                params={"wait": "120000ms", "index": str(index), "stale": ""},
            )
        finally:
            timer.join()
        assert time.monotonic() - start < 1.3
        assert consul_index(r) > index
        assert "api" in msgspec.json.decode(r.content, type=dict[str, list[str]])


def test_traefik_consul_catalog_sequence(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        reg = {
            "Name": "whoami",
            "ID": "whoami-1",
            "Address": "10.0.3.1",
            "Port": 80,
            "Tags": ["traefik.enable=true", "traefik.http.routers.w.rule=Host(`w.local`)"],
            "Meta": {"env": "prod"},
        }
        assert http.put("/v1/agent/service/register", json=reg).status_code == 200
        # Traefik lists the catalog's services, then each one's healthy instances.
        r = http.get("/v1/catalog/services", params={"stale": ""})
        services = msgspec.json.decode(r.content, type=dict[str, list[str]])
        assert "traefik.enable=true" in services["whoami"]
        r = http.get("/v1/health/service/whoami", params={"passing": "1", "stale": ""})
        entries = msgspec.json.decode(r.content, type=list[ServiceEntry])
        assert [e.Service.ID for e in entries] == ["whoami-1"]
        r = http.get("/v1/catalog/service/whoami", params={"stale": ""})
        [row] = msgspec.json.decode(r.content, type=list[CatalogService])
        assert (row.ServiceAddress, row.ServicePort, row.ServiceMeta) == (
            "10.0.3.1",
            80,
            {"env": "prod"},
        )
        assert row.ServiceTags[1] == "traefik.http.routers.w.rule=Host(`w.local`)"
        assert row.ModifyIndex > 0
