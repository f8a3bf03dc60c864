"""``/metrics`` in Prometheus' text format (prometheus_client): the server's requests, and
the home's copies as they are when scraped."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..cloud import Cloud

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TASK_STATES = ("Pending", "Running", "Completed", "Failed", "Cancelled")


class CopiesCollector(Collector):
    """Copies by state, bytes moved and the queue, read from the catalog at each scrape
    (every account's jobs: the numbers are the home's, not one account's)."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        states: Tally[str] = Tally()
        moved = 0
        for account in self._cloud.accounts:
            for job in self._cloud.as_account(account.id).jobs():
                for task in job.tasks.values():
                    states[str(task.state)] += 1
                    moved += task.bytes_transferred
        copies = GaugeMetricFamily("imagerelay_copies", "Copies (tasks) by state",
                                   labels=["state"])
        for state in TASK_STATES:
            copies.add_metric([state], states[state])
        yield copies
        yield CounterMetricFamily("imagerelay_copy_bytes_moved",
                                  "Bytes written to destination regions by copies",
                                  value=moved)
        yield GaugeMetricFamily("imagerelay_copy_queue_depth",
                                "Copies waiting for a slot (Pending)", value=states["Pending"])


class Metrics:
    def __init__(self, cloud: Cloud) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("imagerelay_serve_requests", "Requests answered",
                                ["region", "route", "status"], registry=self.registry)
        self.seconds = Histogram("imagerelay_serve_request_duration_seconds",
                                 "Time to answer a request", ["route"], registry=self.registry)
        self.registry.register(CopiesCollector(cloud))

    def observe(self, region: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(region, route, str(status)).inc()
        self.seconds.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
