"""A catalog kept in step with a server from its HTTP API, for DNS worker processes.

A worker lists what the server holds (instances, registered nodes, the configs of its
services), then follows the event stream from that index, applying each event as it
comes. If the stream falls behind the event log (410) or anything fails, it lists
again after a pause; meanwhile it keeps answering from what it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from waypost.catalog import Catalog
from waypost.client import AsyncClient
from waypost.errors import Gone, WaypostError
from waypost.model import Entry, Event

log = logging.getLogger("waypost.dns.follower")

RETRY_S = 0.5
KINDS = ("instance", "node", "service_config")


class Feed:
    """A catalog and the listeners of its changes: what a DnsServer reads from (a
    Registry is one too)."""

    def __init__(self) -> None:
        self.catalog = Catalog()
        self.listeners: list[Callable[[Sequence[Event] | None], None]] = []
        self.problem: str | None = "not yet following"

    def tell(self, batch: Sequence[Event] | None) -> None:
        for listener in self.listeners:
            try:
                listener(batch)
            except Exception:
                log.exception("a catalog listener failed")


async def _snapshot(client: AsyncClient, feed: Feed) -> int:
    listed = await client.instances()
    rows: list[tuple[Entry, int]] = [(i, listed.revision) for i in listed.instances]
    rows += [(n, listed.revision) for n in await client.nodes() if n.registered]
    rows += [(c, listed.revision) for c in await client.service_configs()]
    feed.catalog.load(rows, listed.revision)
    feed.tell(None)
    return listed.revision


async def follow(feed: Feed, client: AsyncClient) -> None:
    """Keep ``feed`` in step with the server, forever."""
    while True:
        try:
            revision = await _snapshot(client, feed)
            feed.problem = None
            async for ev in client.watch(index=revision, kinds=KINDS):
                feed.catalog.apply([ev])
                feed.tell([ev])
        except asyncio.CancelledError:
            raise
        except Gone:
            log.warning("fell behind the event log; listing again")
            continue
        except WaypostError as exc:
            feed.problem = exc.message
            log.warning("cannot follow the server (%s); retrying", exc.message)
        except Exception as exc:
            feed.problem = f"internal error: {exc}"
            log.exception("following the server failed; retrying")
        await asyncio.sleep(RETRY_S)
