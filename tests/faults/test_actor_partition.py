"""An actor network cut off from its peer (nftables, in a namespace of our own) in the
middle of a message stream: when the partition heals, every acknowledged message was
handled, and none twice."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import until
from tests.faults.conftest import Netns, partition_rules
from tests.integration.test_actors import Sink
from waypost.actors import Network
from waypost.testing import ServerProcess

CUT_S = 3.0
SENDERS = 16
PER_SENDER = 60


def test_a_partition_mid_stream_loses_and_duplicates_no_acknowledged_message(
    netns: Callable[[], Netns], tmp_path: Path, record_property: Callable[[str, object], Any]
) -> None:
    ns = netns()
    with ns.inside():
        server = ServerProcess(["--no-dns"], tmp_path / "registry").start()

        async def go() -> tuple[list[str], list[object], float]:
            a = Network("net-a", instance_id="a1", discovery=[server.url], auth_token="links",
                        send_timeout="20s")  # fmt: skip
            # The peer on an address of its own, so the cut drops exactly its link.
            b = Network("net-b", instance_id="b1", discovery=[server.url], auth_token="links",
                        bind="127.0.0.3:0")  # fmt: skip
            sink = Sink()
            b.add_node("sink", sink)
            acked: list[str] = []
            async with a, b:
                port = int(b.endpoint.rsplit(":", 1)[1].split("/", 1)[0])
                await a.send_remote("net-b", "sink", "in", "hello")

                quarter = SENDERS * PER_SENDER // 4
                cut = asyncio.Event()

                async def sender(s: int) -> None:
                    for i in range(PER_SENDER):
                        m = f"s{s}-{i}"
                        if len(acked) >= quarter:
                            # The rest of the stream goes out after the cut is in place: on a
                            # fast machine it could otherwise be over before the rules load.
                            await cut.wait()
                        try:
                            await a.send_remote("net-b", "sink", "in", m)
                        except Exception:  # not acknowledged: may or may not have arrived
                            continue
                        acked.append(m)

                tasks = [asyncio.create_task(sender(s)) for s in range(SENDERS)]
                await until(lambda: len(acked) >= quarter, "a quarter acked")
                await asyncio.to_thread(ns.nft, partition_rules("127.0.0.3", port))
                cut.set()
                await asyncio.sleep(CUT_S)  # the fault: the link cut this long
                at_heal = len(acked)
                await asyncio.to_thread(ns.flush)
                healed = time.monotonic()
                await asyncio.wait_for(asyncio.gather(*tasks), 60)
                recovered = time.monotonic() - healed
                # The cut held the stream: it was not over before the heal.
                assert at_heal < SENDERS * PER_SENDER, "the stream ended before the cut"
                return acked, list(sink.got), recovered

        try:
            acked, got, recovered = asyncio.run(go())
        finally:
            server.stop()
    counts = collections.Counter(got)
    twice = [m for m, c in counts.items() if c > 1]
    assert not twice, f"handled more than once: {twice[:5]}"
    lost = [m for m in acked if counts[m] == 0]
    assert not lost, f"acknowledged but never handled: {lost[:5]}"
    assert len(acked) == SENDERS * PER_SENDER, "a send failed; the cut was shorter than its timeout"
    record_property("recovery_s", round(recovered, 2))
