"""Health: TTL timers now; check kinds (HTTP, TCP, command, gRPC) and their scheduler later."""

from __future__ import annotations
