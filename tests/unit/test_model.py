from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost.errors import InvalidInput
from waypost.model import Instance, Status, decode_instance, parse_status


def body(**over: object) -> bytes:
    base: dict[str, object] = {"id": "web-1", "service": "web", "address": "10.0.0.1", "port": 80}
    base.update(over)
    return msgspec.json.encode({k: v for k, v in base.items() if v is not None})


def test_a_minimal_instance_gets_the_defaults() -> None:
    inst = decode_instance(body())
    assert (inst.weight, inst.status, inst.kind.value, inst.tags) == (
        100,
        Status.PASSING,
        "service",
        (),
    )


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"service": "web_app"}, "service"),
        ({"service": "-web"}, "service"),
        ({"service": "a" * 64}, "service"),
        ({"id": "has space"}, "id"),
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "80"}, "port"),
        ({"address": "10.0.0.999"}, "address"),
        ({"address": "not valid!"}, "address"),
        ({"version": "1.2"}, "version"),
        ({"weight": 0}, "weight"),
        ({"weight": 1001}, "weight"),
        ({"tags": ["t"] * 65}, "tags"),
        ({"tags": ["x" * 256]}, "tags[0]"),
        ({"meta": {f"k{i}": "v" for i in range(65)}}, "meta"),
        ({"meta": {"k": "v" * 513}}, "meta"),
        ({"meta": {"k" * 129: "v"}}, "meta"),
        ({"ttl": "10 seconds"}, "ttl"),
        ({"ttl": "0s"}, "ttl"),
        ({"status": "bogus"}, "status"),
        ({"kind": "robot"}, "kind"),
        ({"surprise": 1}, "surprise"),
        ({"domain": "bad domain"}, "domain"),
    ],
)
def test_bad_fields_are_refused_with_the_field_named(over: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        decode_instance(body(**over))
    assert exc.value.field == field
    assert exc.value.message.startswith(field.split("[")[0])


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(InvalidInput) as exc:
        decode_instance(b'{"id":"a","service":"web","address":"::1"}')
    assert (exc.value.field, exc.value.message) == ("port", "port: required")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"port": 0}, "port: must be a number >= 1"),
        ({"port": "80"}, "port: must be of type int, not str"),
        ({"tags": ["x" * 256]}, "tags[0]: must be at most 255 characters"),
        ({"tags": ["t"] * 65}, "tags: must have at most 64 items"),
    ],
)
def test_messages_are_in_plain_words(over: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        decode_instance(body(**over))
    assert exc.value.message == message


@pytest.mark.parametrize("address", ["10.0.0.1", "::1", "fe80::1", "db.internal", "host-1"])
def test_addresses_may_be_ip_literals_or_host_names(address: str) -> None:
    assert decode_instance(body(address=address)).address == address


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("healthy", Status.PASSING),
        ("degraded", Status.WARNING),
        ("unhealthy", Status.CRITICAL),
        ("critical", Status.CRITICAL),
    ],
)
def test_status_aliases_from_the_seeds(word: str, status: Status) -> None:
    assert parse_status(word) is status


@pytest.mark.parametrize("word", ["Critical", " passing", "passing\n", ""])
def test_statuses_are_read_exactly_as_written(word: str) -> None:
    with pytest.raises(InvalidInput):
        parse_status(word)


@given(st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"))
def test_every_dns_label_is_a_valid_service_name(name: str) -> None:
    assert decode_instance(body(service=name)).service == name


@given(st.text(max_size=70))
def test_names_are_accepted_only_when_dns_safe(name: str) -> None:
    import re

    ok = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", name) is not None
    if ok:
        assert decode_instance(body(service=name)).service == name
    else:
        with pytest.raises(InvalidInput, match=r"^service"):
            decode_instance(body(service=name))


def test_instances_encode_and_decode_unchanged() -> None:
    inst = decode_instance(body(tags=["a", "b"], meta={"zone": "eu"}, version="1.0.0-rc.1"))
    assert msgspec.json.decode(msgspec.json.encode(inst), type=Instance) == inst


@given(st.ip_addresses())
def test_every_ip_address_is_an_address_in_any_spelling(ip: object) -> None:
    import ipaddress

    from waypost.model import is_address

    assert isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert is_address(str(ip))
    if isinstance(ip, ipaddress.IPv6Address):
        assert is_address(ip.exploded)
        assert is_address(ip.exploded.upper())


@given(st.text(alphabet="0123456789abcdef:.ABCDEFx-", max_size=45))
def test_an_address_is_an_ip_literal_or_a_host_name_never_anything_else(text: str) -> None:
    import ipaddress

    from waypost.model import is_address, is_hostname

    try:
        ipaddress.ip_address(text)
        literal = True
    except ValueError:
        literal = False
    if "%" in text:
        literal = False
    assert is_address(text) == (literal or is_hostname(text))


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("db.internal", True),
        ("host-1", True),
        ("web.local.", True),
        ("10.0.0.999", False),
        ("1.2.3", False),
        ("-a.b", False),
        ("a..b", False),
        ("a" * 64, False),
        ("x.1com", True),
    ],
)
def test_host_names_follow_rfc_1123(name: str, ok: bool) -> None:
    from waypost.model import is_hostname

    assert is_hostname(name) is ok
