"""How the etcd store is told to use TLS and auth (``etcds://``, ``EtcdSecurity``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost.errors import InvalidInput
from waypost.store import EtcdSecurity, EtcdStore, open_store


def test_etcds_urls_dial_over_tls_and_keep_the_given_files() -> None:
    plain = open_store("etcd://127.0.0.1:2379")
    assert isinstance(plain, EtcdStore)
    assert not plain.security.uses_tls
    sec = EtcdSecurity(ca_file="/x/ca.pem", user="w", password="p")
    secure = open_store("etcds://127.0.0.1:2379,127.0.0.2:2379/team/", etcd_security=sec)
    assert isinstance(secure, EtcdStore)
    assert secure.security.tls
    assert secure.security.ca_file == "/x/ca.pem"
    assert secure.security.user == "w"
    assert secure.prefix == b"/team/"
    assert EtcdSecurity(cert_file="c", key_file="k").uses_tls


def test_unreadable_or_unpaired_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="needs its key"):
        EtcdSecurity(cert_file=str(tmp_path / "c.pem")).credentials()
    with pytest.raises(InvalidInput, match="etcd_ca: cannot read") as got:
        EtcdSecurity(ca_file=str(tmp_path / "missing.pem")).credentials()
    assert got.value.field == "etcd_ca"
