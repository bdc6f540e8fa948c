"""Where an instance's custom domain may be (``zones.py``)."""

from __future__ import annotations

import pytest

from waypost.errors import Forbidden
from waypost.zones import CustomZones


def test_the_default_zones_are_private_use_suffixes_only() -> None:
    z = CustomZones(own="waypost")
    for name in ("web.local", "WEB.Local.", "db.internal", "nas.home.arpa", "a.b.local"):
        assert z.covers(name), name
    for name in ("pypi.org", "local", "internal", "home.arpa", "xlocal", "web.waypost",
                 "local.example.com", "arpa"):  # fmt: skip
        assert not z.covers(name), name


def test_the_servers_own_zone_is_never_a_custom_one() -> None:
    z = CustomZones("corp", own="sd.corp")
    assert z.covers("web.corp")
    assert not z.covers("web.sd.corp")


def test_no_zones_allow_no_custom_domain_and_say_how_to_set_them() -> None:
    z = CustomZones("")
    assert not z.covers("web.local")
    with pytest.raises(Forbidden, match="--dns-custom-zones") as got:
        z.require("web.local", iid="w1")
    assert got.value.field == "domain"
    assert "(none)" in got.value.message
