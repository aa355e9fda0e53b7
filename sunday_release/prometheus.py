"""Reading an environment's health from Prometheus: the queries, and a small client of its HTTP API.

The services' own metrics (the sample backend's /metrics: http_requests_total, http_request_duration_seconds),
labelled by the platform's scrape with project, env, service and color (infra/local/prometheus.yml). The same
queries feed `sunday-release status` and the rollout analysis.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import httpx

from sunday_release.errors import PipelineError

__all__ = ["Prometheus", "PrometheusUnavailable", "Signals", "prometheus_url", "selector", "signal_queries",
           "signals_of"]


class PrometheusUnavailable(PipelineError):
    """Prometheus did not answer, or refused a query."""


def prometheus_url() -> str | None:
    """The Prometheus the platform scrapes with (SUNDAY_PROMETHEUS_URL: `make server` sets it for its workers, the
    CLI for the flows it runs beside its local server); None when there is none."""
    url = os.environ.get("SUNDAY_PROMETHEUS_URL", "").strip()
    return url.rstrip("/") or None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(project: str, env: str, color: str | None = None, service: str | None = None) -> str:
    """The label matchers of one environment (one color of it, one service of it)."""
    pairs = [("project", project), ("env", env), ("color", color), ("service", service)]
    return ", ".join(f"{name}={_quoted(value)}" for name, value in pairs if value is not None)


def signal_queries(project: str, env: str, color: str, window: str = "1m") -> dict[str, str]:
    """The PromQL of each signal, by service: requests per second, the 5xx ratio and the p95 latency over `window`."""
    where = selector(project, env, color)
    return {
        "requests_per_second": f"sum by (service) (rate(http_requests_total{{{where}}}[{window}]))",
        # a service that never failed has no 5xx series: its numerator is 0, not absent
        "error_ratio": (f"(sum by (service) (rate(http_requests_total{{{where}, status=~\"5..\"}}[{window}]))"
                        f" or 0 * sum by (service) (rate(http_requests_total{{{where}}}[{window}])))"
                        f" / sum by (service) (rate(http_requests_total{{{where}}}[{window}]))"),
        "p95_seconds": ("histogram_quantile(0.95, sum by (service, le) "
                        f"(rate(http_request_duration_seconds_bucket{{{where}}}[{window}])))"),
    }


@dataclass(frozen=True)
class Signals:
    """One service's signals over the window; a ratio or quantile is None when it saw no request."""

    service: str
    requests_per_second: float
    error_ratio: float | None
    p95_seconds: float | None


class Prometheus:
    """Instant queries against Prometheus's HTTP API (GET /api/v1/query)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """Each series of an instant vector as (labels, value).

        Raises:
            PrometheusUnavailable: Prometheus did not answer, or answered with an error (a bad query).
        """
        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=self.timeout,
                                 trust_env=False)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.url} did not answer: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"Prometheus at {self.url} refused {expr!r}: {body.get('error')}")
        data = body["data"]
        if data.get("resultType") != "vector":
            raise PrometheusUnavailable(f"{expr!r}: expected an instant vector, got {data.get('resultType')}")
        return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=self.timeout, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else value


def signals_of(prometheus: Prometheus, project: str, env: str, color: str, window: str = "1m") -> list[Signals]:
    """Every scraped service of `color` with its signals over `window` (a service with no request in it has
    a rate of 0 and no ratio or quantile)."""
    values: dict[str, dict[str, float]] = {}
    for name, expr in signal_queries(project, env, color, window).items():
        for labels, value in prometheus.query(expr):
            values.setdefault(labels.get("service", ""), {})[name] = value
    return [Signals(service, values[service].get("requests_per_second", 0.0),
                    _finite(values[service].get("error_ratio")), _finite(values[service].get("p95_seconds")))
            for service in sorted(values)]
