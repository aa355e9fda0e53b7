"""Prometheus metrics of the API (prometheus-client), served on GET /metrics.

- http_requests_total{method, route, status}: every request but the scrapes themselves; `route` is the route's
  pattern (/api/boards/{id}), never the raw path, so an id or a scanner's junk path cannot explode the series.
- http_request_duration_seconds{method, route}: a histogram of the same requests.
- db_pool_connections{state="in_use"} and db_pool_max_connections: the PostgreSQL pool's use (the in-memory
  store has no pool and exports neither).
- process_*: the process's CPU, memory and start time (a restart changes process_start_time_seconds).
The scrape adds project, env, service and color (the platform's Prometheus); the rules and dashboards under
infra/k8s/monitoring are written against these names.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The API's metrics in a registry of their own (one per server: tests start several in one process)."""

    def __init__(self, pool: Optional[Tuple[Callable[[], int], int]] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_start_time_seconds: a restart shows as its change
        self.requests = Counter("http_requests", "HTTP requests served, by route pattern and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds",
                                  "Time to serve a request, by route pattern.", ["method", "route"],
                                  buckets=BUCKETS, registry=self.registry)
        if pool is not None:
            in_use, size = pool
            connections = Gauge("db_pool_connections", "Database connections of the pool, by state.",
                                ["state"], registry=self.registry)
            connections.labels(state="in_use").set_function(lambda: float(in_use()))
            Gauge("db_pool_max_connections", "Most connections the pool opens.",
                  registry=self.registry).set(size)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.duration.labels(method=method, route=route).observe(seconds)

    def exposition(self) -> Tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
