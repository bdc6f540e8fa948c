"""Traffic policies live in the registry: a service's config carries them, validated with
the field named, read back as written, and turned into the objects that apply them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration.test_cli import cli as waypost
from waypost import Client
from waypost.errors import InvalidInput
from waypost.traffic import ConsistentHash, ZonePreference
from waypost.traffic.policy import (
    balancer_for,
    limits_policy,
    outlier_policy,
    retry_policy,
    split_for,
)

POLICIES = {
    "load_balancer": {"strategy": "consistent_hash", "hash_on": "header:X-User",
                      "prefer_zone": True},
    "retry": {"max_retries": 3, "retry_on": ["gateway-error", "reset"], "per_try_timeout": "2s"},
    "circuit_breaker": {"consecutive_errors": 7, "base_ejection_time": "10s", "max_requests": 50},
    "timeout": "5s",
    "split": [{"version": "^1", "weight": 80}, {"version": "^2", "weight": 20}],
}  # fmt: skip


def test_policies_round_trip_and_apply(http: httpx.Client) -> None:
    r = http.put("/api/v1/services/user-api/config", json=POLICIES)
    assert r.status_code == 200, r.text
    got = http.get("/api/v1/services/user-api/config").json()
    for key, value in POLICIES.items():
        if isinstance(value, dict):
            assert {k: got[key][k] for k in value} == value
        else:
            assert got[key] == value
    with Client(str(http.base_url)) as c:
        cfg = c.service_config("user-api")
    assert cfg is not None
    b = balancer_for(cfg.load_balancer, zone="eu-1")
    assert isinstance(b, ZonePreference)
    assert isinstance(b.inner, ConsistentHash)
    retry = retry_policy(cfg.retry, cfg.timeout)
    assert (retry.max_retries, retry.per_try_timeout_s, retry.timeout_s) == (3, 2.0, 5.0)
    assert retry.should_retry("GET", 0, status=504)
    assert not retry.should_retry("GET", 0, status=500)  # not gateway-error
    outlier = outlier_policy(cfg.circuit_breaker)
    assert (outlier.consecutive_errors, outlier.base_ejection_s) == (7, 10.0)
    assert limits_policy(cfg.circuit_breaker).max_requests == 50
    split = split_for(cfg)
    assert split is not None
    assert [s.weight for s in split.sides] == [80, 20]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"load_balancer": {"strategy": "fastest"}}, "load_balancer.strategy"),
        ({"load_balancer": {"strategy": "consistent_hash", "hash_on": "ip"}},
         "load_balancer.hash_on"),
        ({"retry": {"max_retries": 11}}, "retry.max_retries"),
        ({"retry": {"retry_on": ["5XX"]}}, "retry.retry_on[0]"),
        ({"retry": {"retriable_status_codes": [99]}}, "retry.retriable_status_codes[0]"),
        ({"circuit_breaker": {"interval": "0s"}}, "circuit_breaker.interval"),
        ({"circuit_breaker": {"max_ejection_percent": 101}},
         "circuit_breaker.max_ejection_percent"),
        ({"timeout": "0"}, "timeout"),
        ({"split": [{"version": "banana", "weight": 1}]}, "split[0].version"),
        ({"split": [{"version": "^1"}]}, "split[0].weight"),
    ],
)  # fmt: skip
def test_bad_policies_are_refused_naming_the_field(
    http: httpx.Client, body: dict[str, object], field: str
) -> None:
    http.put("/api/v1/services/web/config", json={"timeout": "1s"}).raise_for_status()
    r = http.put("/api/v1/services/web/config", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.json()
    assert r.json()["message"].startswith(field + ":")
    # Nothing stored changed.
    assert http.get("/api/v1/services/web/config").json()["timeout"] == "1s"


def test_what_the_schema_cannot_say_is_read_leniently(http: httpx.Client) -> None:
    """Cross-field rules a JSON schema cannot state are not refusals (the OpenAPI says
    what is accepted): a cap below its base is the base, all-zero weights are no split."""
    body = {
        "retry": {"backoff_base": "1s", "backoff_max": "10ms"},
        "circuit_breaker": {"base_ejection_time": "1m", "max_ejection_time": "30s"},
        "split": [{"version": "^1", "weight": 0}],
    }
    assert http.put("/api/v1/services/lenient/config", json=body).status_code == 200
    with Client(str(http.base_url)) as c:
        cfg = c.service_config("lenient")
    assert cfg is not None
    assert retry_policy(cfg.retry).backoff_max_s == 1.0
    assert outlier_policy(cfg.circuit_breaker).max_ejection_s == 60.0
    assert split_for(cfg) is None
    assert cfg.load_balancer is None


def test_the_client_checks_before_sending(server: ServerProcess) -> None:
    with Client(server.url) as c, pytest.raises(InvalidInput) as exc:
        c.set_service_config("web", {"retry": {"max_retries": -1}})
    assert exc.value.field == "retry.max_retries"


def test_cli_config_and_routes(server: ServerProcess, tmp_path: Path) -> None:
    s = ["--server", server.url]
    done = waypost("config", "set", "web", "-", *s, stdin="retry:\n  max_retries: 1\ntimeout: 3s\n")
    assert done.returncode == 0, done.stderr
    got = waypost("config", "get", "web", *s)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["retry"]["max_retries"] == 1
    bad = waypost("config", "set", "web", "-", *s, stdin="retry:\n  max_retries: 99\n")
    assert bad.returncode != 0
    assert "retry.max_retries" in bad.stderr
    assert waypost("config", "delete", "web", *s).returncode == 0
    missing = waypost("config", "get", "web", *s)
    assert missing.returncode == 4
    assert "has no config" in missing.stderr
    route = tmp_path / "route.yaml"
    route.write_text("name: v2-api\nservice: web\nmatch:\n  path_prefix: /v2\n")
    assert waypost("routes", "--set", str(route), *s).returncode == 0
    listed = waypost("routes", "--json", *s)
    assert [r["name"] for r in json.loads(listed.stdout)] == ["v2-api"]
    assert "v2-api" in waypost("routes", *s).stdout
    assert waypost("routes", "--delete", "v2-api", *s).returncode == 0
    assert json.loads(waypost("routes", "--json", *s).stdout) == []
