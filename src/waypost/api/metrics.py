"""``GET /metrics``: the server in Prometheus' text format, through ``prometheus_client``.

Nothing is kept in ``prometheus_client`` objects between scrapes: a collector reads the
catalog's kept counts, the API's gauges and the process's ``Telemetry`` when scraped
(O(services), not O(instances)), plus the library's process, platform and GC
collectors. Every metric is listed in docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from waypost.catalog import Catalog
from waypost.model import DnsStatus, Status
from waypost.registry import Registry
from waypost.telemetry import Histogram, Telemetry

# DNS answers by (query type, rcode) and their latency (``DnsServer.query_counts``).
DnsCounts = tuple[dict[tuple[str, str], int], Histogram]

DNS_COUNTERS = (
    ("queries", "DNS queries received"),
    ("cache_hits", "DNS queries answered from cached wire bytes"),
    ("formerr", "DNS queries answered FORMERR"),
    ("refused", "DNS queries answered REFUSED"),
    ("forwarded", "DNS queries forwarded to a recursor"),
    ("forward_failures", "forwarded DNS queries that failed"),
    ("forward_dropped", "DNS queries to forward dropped while too many were in flight"),
    ("truncated", "DNS answers truncated for UDP"),
    ("errors", "DNS queries that failed inside the server (answered SERVFAIL)"),
    ("dropped", "UDP DNS queries dropped while too many waited"),
)


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


class WaypostCollector(Collector):
    """The registry, the API and the store, read at each scrape."""

    def __init__(
        self,
        registry: Registry,
        telemetry: Telemetry,
        gauges: Callable[[], dict[str, int]],
        dns: Callable[[], DnsStatus | None],
        dns_counts: Callable[[], DnsCounts | None] = lambda: None,
    ) -> None:
        self.dns_counts = dns_counts
        self.registry = registry
        self.telemetry = telemetry
        self.gauges = gauges
        self.dns = dns

    def collect(self) -> Iterator[Metric]:
        cat = self.registry.catalog
        t = self.telemetry
        # waypost_instances: InstanceGauge, a service at a time (see exposition).
        yield GaugeMetricFamily(
            "waypost_services", "Services with an instance", cat.service_count()
        )
        nodes = GaugeMetricFamily("waypost_nodes", "Nodes by status", labels=["status"])
        for node_status, n in cat.node_status_counts().items():
            nodes.add_metric([node_status.value], n)
        yield nodes
        yield GaugeMetricFamily("waypost_revision", "The registry's revision", cat.revision)
        following = int(self.registry.problem is None)
        yield GaugeMetricFamily(
            "waypost_following", "1 while the catalog follows the store", following
        )
        for name, value in self.gauges().items():
            doc = {
                "blocking_queries": "Blocking queries parked",
                "event_streams": "Event streams (SSE) open",
                "leases": "Live leases",
            }[name]
            yield GaugeMetricFamily(f"waypost_{name}", doc, value)

        requests = CounterMetricFamily(
            "waypost_http_requests", "HTTP requests answered, by route, method and status code",
            labels=["route", "method", "code"],
        )  # fmt: skip
        latency = _histogram(
            "waypost_http_request_duration_seconds",
            "Time to answer an HTTP request (blocking queries and streams not timed)",
            ["route", "method"],
        )
        for (route, method), stats in sorted(t.routes.items()):
            for code, n in sorted(stats.by_code().items()):
                requests.add_metric([route, method, str(code)], n)
            if stats.seconds.count:
                latency.add_metric([route, method], stats.seconds.cumulative(), stats.seconds.sum)
        yield requests
        yield latency

        ops = CounterMetricFamily("waypost_store_ops", "Store write operations", labels=["op"])
        for op, n in sorted(t.store_ops.items()):
            ops.add_metric([op], n)
        yield ops
        writes = _histogram("waypost_store_write_duration_seconds", "Time of a store write", [])
        writes.add_metric([], t.store_seconds.cumulative(), t.store_seconds.sum)
        yield writes
        yield CounterMetricFamily(
            "waypost_store_errors", "Store writes that failed", t.store_errors
        )
        yield CounterMetricFamily(
            "waypost_store_skipped_records", "Stored records that could not be read",
            self.registry.store.skipped_records,
        )  # fmt: skip

        runs = CounterMetricFamily(
            "waypost_check_runs", "Health check runs by kind and result", labels=["kind", "status"]
        )
        for (kind, result), n in sorted(t.check_runs.items()):
            runs.add_metric([kind, result], n)
        yield runs

        dns = self.dns()
        if dns is not None:
            for field, doc in DNS_COUNTERS:
                yield CounterMetricFamily(f"waypost_dns_{field}", doc, getattr(dns, field))
        counted = self.dns_counts()
        if counted is not None:
            by_type, seconds = counted
            answers = CounterMetricFamily(
                "waypost_dns_answers", "DNS answers by query type and rcode (forwarded "
                "queries apart)", labels=["qtype", "rcode"],
            )  # fmt: skip
            for (qtype, rcode), n in sorted(by_type.items()):
                answers.add_metric([qtype, rcode], n)
            yield answers
            latency = _histogram(
                "waypost_dns_answer_duration_seconds",
                "Time to answer a DNS query once read (one in 16 cached UDP answers timed)",
                [],
            )
            latency.add_metric([], seconds.cumulative(), seconds.sum)
            yield latency


def metrics_registry(collector: WaypostCollector) -> CollectorRegistry:
    """A registry of its own (not the library's global one) with the process metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


async def exposition(reg: CollectorRegistry, instances: InstanceGauge, catalog: Catalog) -> bytes:
    """The text format of everything ``reg`` holds now, ``waypost_instances`` first."""
    head = await instances.render(catalog)
    return head + generate_latest(reg)


class _Family:
    """A collector of one metric family, to render it alone."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


def _instances_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "waypost_instances", "Registered instances by service and status",
        labels=["service", "status"],
    )  # fmt: skip


_counts_of = operator.itemgetter(*Status)
# Services whose lines are rendered anew per turn of the event loop (~20 us each).
RENDER_SLICE = 250


class InstanceGauge:
    """``waypost_instances``: a sample per service and status, which is most of a scrape
    (5,000 services: 25,000 lines, 80 ms of the event loop through ``prometheus_client``
    each time). Each service's lines are rendered by ``prometheus_client`` itself, so the
    text is its own, and kept until that service's counts change; what must be rendered
    anew (all of it, at the first scrape) is rendered ``RENDER_SLICE`` services per turn
    of the event loop, from counts taken at the start."""

    def __init__(self) -> None:
        empty = generate_latest(_Family(_instances_family()))
        self._head = empty  # the HELP and TYPE lines (a family with no sample)
        self._kept: dict[str, tuple[tuple[int, ...], bytes]] = {}

    async def render(self, catalog: Catalog) -> bytes:
        counts: list[tuple[str, tuple[int, ...]]] = [
            (service, _counts_of(by_status)) for service, by_status in catalog.status_counts()
        ]
        kept = self._kept
        fresh: dict[str, tuple[tuple[int, ...], bytes]] = {}
        parts = [self._head]
        left = RENDER_SLICE
        for service, key in counts:
            got = kept.get(service)
            if got is None or got[0] != key:
                got = (key, self._lines(service, key))
                left -= 1
                if not left:
                    left = RENDER_SLICE
                    await asyncio.sleep(0)
            fresh[service] = got
            parts.append(got[1])
        self._kept = fresh  # services gone are forgotten
        return b"".join(parts)

    def _lines(self, service: str, counts: tuple[int, ...]) -> bytes:
        family = _instances_family()
        for status, n in zip(Status, counts, strict=True):
            family.add_metric([service, status.value], n)
        text = generate_latest(_Family(family))
        return text[len(self._head) :]
