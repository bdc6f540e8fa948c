"""SIGSTOP of a server (a GC pause, a frozen VM) for longer than every lease's TTL: on
SIGCONT it does not empty itself. The mass-expiry guard holds the lapsed leases one more
TTL, the keep-alives that were waiting renew them, and only the lease whose holder really
stopped goes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable

import httpx

from tests.conftest import ServerProcess, instance, wait_until
from waypost import Client
from waypost.sse import SseParser

PAUSE_S = float(os.environ.get("WAYPOST_FAULT_PAUSE_S", "5"))
TTL_S = 2.0


def test_a_paused_server_keeps_live_leases_and_drops_only_the_dead_one(
    start_server: Callable[..., ServerProcess], record_property: Callable[[str, object], None]
) -> None:
    server = start_server("--no-dns")
    assert server.proc is not None
    with Client(server.url, timeout_s=PAUSE_S + 10) as c:
        kept = [c.lease(f"{TTL_S:g}s") for _ in range(7)]
        for n, lease in enumerate(kept):
            c.register(instance(f"web-{n}", lease=lease.id))
        dead = kept.pop()  # its holder stops for good just before the pause
        dead.stop(revoke=False)
        lines: list[str] = []
        notices: list[dict[str, object]] = []

        def follow() -> None:
            parser = SseParser()
            timeout = httpx.Timeout(10, read=PAUSE_S + 30)
            with httpx.stream("GET", f"{server.url}/api/v1/events", timeout=timeout) as r:
                for chunk in r.iter_bytes():
                    lines.append(chunk.decode(errors="replace"))
                    for msg in parser.feed(chunk):
                        if msg.event == "lease_guard":
                            notices.append(json.loads(msg.data))
                    if len(notices) >= 2:
                        return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        wait_until(lambda: any("retry:" in x for x in lines), 10, "the event stream")
        try:
            server.proc.send_signal(signal.SIGSTOP)
            time.sleep(PAUSE_S)  # the fault itself: the server frozen this long
            server.proc.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=10) as h:
                guard = wait_until(
                    lambda: (g := h.get("/status").json()["lease_guard"])["times_triggered"] and g,
                    10,
                    "the guard to hold the wave of lapsed leases",
                )
                assert guard["since"] is not None
                live = {f"web-{n}" for n in range(6)}

                def ids() -> set[str]:
                    return {i["id"] for i in h.get("/api/v1/services/web").json()}

                # The dead lease goes at its second deadline; the live ones never do.
                wait_until(lambda: ids() == live, TTL_S * 4, "only the dead lease's instance gone")
                assert time.monotonic() - resumed < TTL_S * 4
                wait_until(
                    lambda: not h.get("/status").json()["lease_guard"]["holding"],
                    TTL_S * 3,
                    "the guard to let go",
                )
                assert ids() == live
                # The event stream said so too: holding, then letting go.
                wait_until(lambda: len(notices) >= 2, 5, "two lease_guard notices")
                assert [n["holding"] for n in notices[:2]] == [True, False]
                record_property("recovery_s", round(time.monotonic() - resumed, 2))
        finally:
            for lease in kept:
                lease.stop()
