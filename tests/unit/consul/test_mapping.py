"""Consul's shapes over the model: ids every client may send become labels the registry
keeps, requests read in any key spelling, and answers come back as registered."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.consul import mapping as cm
from waypost.model import LABEL_RE, Status


@given(st.text(min_size=1, max_size=200))
def test_every_consul_id_has_a_stable_label(text: str) -> None:
    label = cm.local_label(text)
    assert LABEL_RE.match(label)
    assert cm.local_label(text) == label  # the same on every server, every time
    if LABEL_RE.match(text):
        assert label == text


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_ids_that_are_not_labels_do_not_collide(a: str, b: str) -> None:
    if a != b and not LABEL_RE.match(a) and not LABEL_RE.match(b):
        assert cm.local_label(a) != cm.local_label(b)


def reg(body: dict[str, object]) -> cm.Instance:
    return cm.registration(msgspec.json.encode(body), node="n1", node_address="10.9.9.9")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "web", "id": "web:1", "port": 80, "tags": ["a"], "check": {"ttl": "10s"}},
        {"Name": "web", "ID": "web:1", "Port": 80, "Tags": ["a"], "Check": {"TTL": "10s"}},
        {"NAME": "web", "Id": "web:1", "port": 80, "tags": ["a"], "Checks": [{"T_T_L": "10s"}]},
    ],
)
def test_keys_are_read_in_any_case_and_spelling(body: dict[str, object]) -> None:
    inst = reg(body)
    assert inst.service == "web"
    assert cm.consul_id(inst) == "web:1"
    assert inst.ttl == "10s"
    assert inst.status is Status.CRITICAL  # Consul's TTL checks start critical
    assert [c.name for c in inst.checks] == ["service:web:1"]
    assert inst.node == "n1"


def test_meta_keys_are_kept_as_written() -> None:
    inst = reg({"Name": "web", "Meta": {"Team_Name": "x"}})
    assert cm.agent_service(inst)["Meta"] == {"Team_Name": "x"}


def test_a_registration_without_address_or_port_answers_as_consul() -> None:
    inst = reg({"Name": "worker"})
    assert inst.address == "10.9.9.9"
    svc = cm.agent_service(inst)
    assert svc["Address"] == ""
    assert svc["Port"] == 0
    assert svc["TaggedAddresses"] == {}
    assert svc["Weights"] == {"Passing": 1, "Warning": 1}
    assert svc["Tags"] == []


def test_weights_round_trip_and_scale_to_the_balancer() -> None:
    inst = reg({"Name": "web", "Weights": {"Passing": 3, "Warning": 1}})
    assert inst.weight == 300
    assert cm.agent_service(inst)["Weights"] == {"Passing": 3, "Warning": 1}


def test_several_checks_get_consuls_numbered_ids_and_thresholds() -> None:
    inst = reg(
        {
            "Name": "web",
            "ID": "w1",
            "Port": 80,
            "Checks": [
                {"HTTP": "http://127.0.0.1:80/health", "Interval": "5s", "Name": "http up"},
                {"TCP": "127.0.0.1:80", "Interval": "10s", "Status": "passing"},
            ],
        }
    )
    assert [c.name for c in inst.checks] == ["service:w1:1", "service:w1:2"]
    assert inst.checks[0].http == "http://127.0.0.1:80/health"
    assert inst.checks[1].initial_status == "passing"
    assert inst.checks[0].healthy_threshold == 1
    assert inst.checks[0].unhealthy_threshold == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing service name"),
        ({"Name": "x", "Port": 70000}, "Invalid port"),
        ({"Name": "x", "Check": {"HTTP": "http://a/"}}, "Interval"),
        ({"Name": "x", "Check": {"DockerContainerID": "c1", "Interval": "1s"}}, "not supported"),
        ({"Name": "x", "Tags": "a"}, "Tags"),
        ({"Name": "x", "Meta": {"consul.id": "y"}}, "reserved"),
        ({"Name": "x", "Kind": "connect-proxy"}, "not supported"),
        ({"Name": "x", "Check": {"TTL": "soon"}}, "not a duration"),
    ],
)
def test_bad_registrations_are_refused_with_consuls_words(
    body: dict[str, object], message: str
) -> None:
    with pytest.raises(cm.ConsulInputError, match=message):
        reg(body)


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(cm.ConsulInputError, match="decode"):
        cm.registration(b"{nope", node="n1", node_address="10.0.0.1")


def test_a_checks_consul_name_and_notes_are_answered_as_registered() -> None:
    inst = reg(
        {"Name": "web", "ID": "w1", "Check": {"TTL": "5s", "Name": "heartbeat", "Notes": "n"}}
    )
    state = cm.CheckState(name="service:w1", kind="ttl", status=Status.PASSING)
    inst = msgspec.structs.replace(inst, health=(state,), status=Status.PASSING)
    [check] = cm.service_checks(inst, "n1")
    assert (check["CheckID"], check["Name"], check["Notes"]) == ("service:w1", "heartbeat", "n")
    assert check["Status"] == "passing"


@given(
    st.lists(
        st.tuples(st.integers(0, 99999), st.sampled_from(["ms", "s", "m", "h"])),
        min_size=1,
        max_size=4,
    )
)
def test_go_durations_read_as_go_reads_them(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    assert cm.go_duration_s(text, "wait") == pytest.approx(sum(n * unit[u] for n, u in parts))


@pytest.mark.parametrize("text", ["", "10", "1x", "s", "-1s", "1s2", "1.5.5s", "9" * 70 + "s"])
def test_what_go_refuses_is_refused(text: str) -> None:
    with pytest.raises(cm.ConsulInputError):
        cm.go_duration_s(text, "wait")


def test_a_check_interval_in_go_spelling_is_kept_in_ours() -> None:
    inst = reg({"Name": "w", "Check": {"TCP": "127.0.0.1:1", "Interval": "120000ms"}})
    assert inst.checks[0].interval == "2m"
