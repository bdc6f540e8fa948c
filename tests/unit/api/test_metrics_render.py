"""``waypost_instances`` is rendered a service at a time and kept until the service's
counts change: after any changes, the text equals ``prometheus_client`` rendering the
whole family afresh, byte for byte."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily

from waypost.api.metrics import RENDER_SLICE, InstanceGauge, _Family
from waypost.catalog import Catalog
from waypost.model import Event, Instance, Status

changes = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.sampled_from(["web", "db", "cache-1"]),
        st.sampled_from(list(Status)),
        st.booleans(),  # maintenance
    ),
    max_size=30,
)


def whole(catalog: Catalog) -> bytes:
    family = GaugeMetricFamily(
        "waypost_instances", "Registered instances by service and status",
        labels=["service", "status"],
    )  # fmt: skip
    for service, counts in catalog.status_counts():
        for status in Status:
            family.add_metric([service, status.value], counts[status])
    return generate_latest(_Family(family))


@settings(max_examples=150, deadline=None)
@given(changes)
def test_the_kept_lines_equal_the_whole_family_rendered(
    steps: list[tuple[str, str, str, Status, bool]],
) -> None:
    catalog = Catalog()
    gauge = InstanceGauge()
    render = lambda: asyncio.run(gauge.render(catalog))  # noqa: E731
    assert render() == whole(catalog)
    for n, (op, iid, service, status, maintenance) in enumerate(steps, start=1):
        inst = Instance(
            id=iid, service=service, address="10.0.0.1", port=80, status=status,
            maintenance=maintenance,
        )  # fmt: skip
        catalog.apply([Event(revision=n, type=op, entry=inst)])  # type: ignore[arg-type]
        assert render() == whole(catalog)


def test_the_first_render_of_many_services_lets_the_loop_run_between_slices() -> None:
    catalog = Catalog()
    catalog.apply(
        [
            Event(
                revision=n + 1,
                type="put",
                entry=Instance(
                    id=f"i-{n}",
                    service=f"s-{n}",
                    address="10.0.0.1",
                    port=80,
                ),
            )
            for n in range(3 * RENDER_SLICE)
        ]
    )

    async def run() -> tuple[bytes, int]:
        turns = 0
        done = asyncio.Event()

        async def count() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.create_task(count())
        text = await InstanceGauge().render(catalog)
        done.set()
        await counter
        return text, turns

    text, turns = asyncio.run(run())
    assert text == whole(catalog)
    assert turns >= 3  # the other task ran between the slices
