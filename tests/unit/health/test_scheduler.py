"""The scheduler on a real event loop: it reports only changes, keeps a check's state
across an unchanged re-registration, bounds parallelism, and lets go of what it no
longer checks (long runs)."""

from __future__ import annotations

import asyncio

from tests.conftest import until
from waypost.health.scheduler import Scheduler
from waypost.model import Check, CheckState, Status


def test_reports_changes_only_and_keeps_state_on_unchanged_checks() -> None:
    async def main() -> None:
        reports: list[tuple[str, tuple[CheckState, ...]]] = []

        async def report(iid: str, states: tuple[CheckState, ...]) -> None:
            reports.append((iid, states))

        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = Scheduler(report, first_run_spread_s=0.0)
        check = Check(tcp=f"127.0.0.1:{port}", name="t", interval="20ms")
        s.set_instance("a", [check])
        await until(lambda: s.runs >= 10, "ten runs")
        assert len(reports) == 1  # the first result only: nothing changed after
        assert reports[0][1][0].status is Status.PASSING
        machine = next(m for _, m in s.machines())
        s.set_instance("a", [check])  # the same definition: the same machine
        assert next(m for _, m in s.machines()) is machine
        server.close()
        await server.wait_closed()
        await until(lambda: len(reports) == 2, "the second report")
        assert reports[1][1][0].status is Status.CRITICAL
        await s.close()

    asyncio.run(main())


def test_parallelism_is_bounded() -> None:
    async def main() -> None:
        running = 0
        most = 0

        async def report(iid: str, states: tuple[CheckState, ...]) -> None:
            pass

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(slow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = Scheduler(report, parallelism=3, first_run_spread_s=0.0)
        original = s._execute

        async def counted(check: Check, limit_s: float) -> tuple[Status, str]:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                await asyncio.sleep(0.02)  # a check that takes a while (the fake)
                return await original(check, limit_s)
            finally:
                running -= 1

        s._execute = counted  # type: ignore[method-assign]
        for n in range(20):
            s.set_instance(f"i{n}", [Check(tcp=f"127.0.0.1:{port}", interval="50ms")])
        await until(lambda: s.runs >= 60, "sixty runs")
        assert most == 3
        await s.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_grpc_channels_of_removed_checks_are_closed() -> None:
    async def main() -> None:
        async def report(iid: str, states: tuple[CheckState, ...]) -> None:
            pass

        s = Scheduler(report, first_run_spread_s=0.0)
        for n in range(50):
            check = Check(grpc=f"127.0.0.1:{20000 + n}", interval="10ms", timeout="50ms")
            s.set_instance(f"i{n}", [check])
            await until(lambda n=n: s.runs > n, "a run")  # type: ignore[misc]
            s.remove_instance(f"i{n}")
        # Without the release, one channel per target ever checked would stay open.
        assert s.context.grpc_channels == {}
        await s.close()

    asyncio.run(main())


def test_a_grpc_check_removed_as_its_run_begins_leaves_no_channel() -> None:
    """Security review finding 15: a run that had started, but not yet opened its
    channel, when its check was removed cached the channel for good (one per target
    that came and went: +47 MB after 9,000)."""

    async def main() -> None:
        async def report(iid: str, states: tuple[CheckState, ...]) -> None:
            pass

        s = Scheduler(report, first_run_spread_s=0.0)
        for n in range(10):
            check = Check(grpc=f"127.0.0.1:{21000 + n}", interval="10ms", timeout="50ms")
            s.set_instance(f"i{n}", [check])
            # Polled every turn of the loop: the run is started, its task not yet run.
            await until(lambda: s._running > 0, "a run started", interval_s=0)
            s.remove_instance(f"i{n}")
            await until(lambda: s._running == 0, "the run over")
        assert s.context.grpc_channels == {}
        await s.close()

    asyncio.run(main())
