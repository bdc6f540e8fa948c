"""Health: check kinds (HTTP, TCP, command, gRPC, TTL), one status machine, one scheduler."""

from __future__ import annotations
