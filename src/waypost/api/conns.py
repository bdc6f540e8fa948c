"""What one client may hold of the HTTP listener: connections per client address, all
connections, and the time a new connection has to send its first request head.

A slow client (slowloris: a header byte every few seconds) once held 1,100 connections
of a server under systemd's 1,024 open files, and every ``/health`` and write failed;
idle connections lived an hour. Consul caps connections per client at 200
(``http_max_conns_per_client``) and Go's servers time out header reads: so here.
Pure bookkeeping (no sockets): the protocol asks ``admit`` and calls ``release``.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter

from waypost.model import ConnectionStatus

# Consul's http_max_conns_per_client.
MAX_CONNS_PER_CLIENT = 200
# A new connection that has not sent one whole request head by then is closed.
FIRST_HEAD_TIMEOUT_S = 10.0
# A connection with nothing in flight is closed after this long (aiohttp's old default).
IDLE_TIMEOUT_S = 75.0
# The least time between two log lines about refused connections.
REFUSAL_LOG_INTERVAL_S = 10.0
log = logging.getLogger("waypost.http")


def default_max_connections() -> int:
    """Three quarters of this process's open-file limit: the rest stays for the store,
    DNS, checks and the connections a server makes itself."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 65536
    return max(64, soft * 3 // 4)


class ConnectionLimits:
    """Counts open connections by client address; refuses past either limit (0: none)."""

    def __init__(
        self,
        per_client: int = MAX_CONNS_PER_CLIENT,
        total: int | None = None,
        first_head_timeout_s: float = FIRST_HEAD_TIMEOUT_S,
    ) -> None:
        self.per_client = per_client
        self.first_head_timeout_s = first_head_timeout_s
        self.total = default_max_connections() if total is None else total
        self.by_client: Counter[str] = Counter()
        self.open = 0
        self.refused_per_client = 0
        self.refused_total = 0
        self.slow_heads = 0
        self._logged = -REFUSAL_LOG_INTERVAL_S

    def admit(self, client: str) -> bool:
        """Count a new connection from ``client``; False (and counted) when refused."""
        if self.total and self.open >= self.total:
            self.refused_total += 1
            self._note(f"{self.open} connections open, the most this server takes")
            return False
        if self.per_client and self.by_client[client] >= self.per_client:
            self.refused_per_client += 1
            self._note(f"{client} holds {self.per_client} connections, the most one client may")
            return False
        self.by_client[client] += 1
        self.open += 1
        return True

    def release(self, client: str) -> None:
        """An admitted connection from ``client`` closed."""
        self.open -= 1
        left = self.by_client[client] - 1
        if left > 0:
            self.by_client[client] = left
        else:
            del self.by_client[client]

    def _note(self, why: str) -> None:
        now = time.monotonic()
        if now - self._logged >= REFUSAL_LOG_INTERVAL_S:
            self._logged = now
            log.warning("HTTP: refusing connections: %s", why)

    def status(self) -> ConnectionStatus:
        return ConnectionStatus(
            open=self.open,
            clients=len(self.by_client),
            max_per_client=self.per_client,
            max_total=self.total,
            refused_per_client=self.refused_per_client,
            refused_total=self.refused_total,
            slow_heads_closed=self.slow_heads,
        )
