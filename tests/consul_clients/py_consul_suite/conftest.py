"""Replaces py-consul's own top-level conftest.py (which starts Consul in Docker) when its
test suite runs against Waypost: every test gets a fresh ``waypost server`` on loopback,
the same fixtures by the same names. See tests/integration/test_py_consul_suite.py."""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterator

import pytest

from waypost.testing import ServerProcess

ConsulInstance = collections.namedtuple("ConsulInstance", ["container", "port", "version"])


@pytest.fixture
def consul_instance() -> Iterator[ConsulInstance]:
    with tempfile.TemporaryDirectory(prefix="waypost-py-consul-") as tmp:
        proc = ServerProcess(["--max-wait", "10m"], tmp).start()
        try:
            port = int(proc.url.rpartition(":")[2])
            yield ConsulInstance(None, port, "1.20.6")
        finally:
            proc.stop()


@pytest.fixture
def consul_port(consul_instance: ConsulInstance) -> tuple[int, str]:
    return consul_instance.port, consul_instance.version
