"""``waypost proxy``: an HTTP/1.1 reverse proxy that applies the registry's routes and
traffic policies, for programs that are not written in Python."""

from __future__ import annotations

from waypost.proxy.server import Proxy, ProxySettings, run_proxy

__all__ = ["Proxy", "ProxySettings", "run_proxy"]
