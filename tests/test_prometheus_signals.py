"""sunday_release.prometheus against a real Prometheus scraping a real exporter: the signals `status` and the
rollout analysis read (request rate, 5xx ratio, p95), per service of one color of one environment."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from sunday_release.prometheus import Prometheus, PrometheusUnavailable, selector, signals_of
from sunday_release.status import live_metrics
from tests.conftest import free_port
from tests.prometheus_fixture import running_prometheus

WINDOW_SECONDS = 6


class _Traffic:
    """A service that has served 100 requests a second since it started: `failing` of them 5xx (none: it has no
    5xx series at all); 80 % under 0.1 s, 15 % more under 0.25 s, the rest under 0.5 s (so its p95 is 0.25 s)."""

    def __init__(self, failing: float) -> None:
        self.started, self.failing = time.monotonic(), failing

    def collect(self) -> Iterator[Any]:
        t = (time.monotonic() - self.started) * 100
        requests = CounterMetricFamily("http_requests", "requests", labels=["method", "route", "status"])
        requests.add_metric(["GET", "/api/boards", "200"], (1 - self.failing) * t)
        if self.failing:
            requests.add_metric(["GET", "/api/boards", "500"], self.failing * t)
        yield requests
        duration = HistogramMetricFamily("http_request_duration_seconds", "durations", labels=["method", "route"])
        duration.add_metric(["GET", "/api/boards"], [("0.1", 0.8 * t), ("0.25", 0.95 * t), ("0.5", t),
                                                     ("+Inf", t)], sum_value=0.1 * t)
        yield duration


def _exporter(failing: float) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(_Traffic(failing))  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def exporters() -> Iterator[dict[str, str]]:
    """The backend fails 10 % of its requests; the frontend none (it has no 5xx series)."""
    servers = {"backend": _exporter(0.1), "frontend": _exporter(0.0)}
    yield {service: f"127.0.0.1:{server.server_address[1]}" for service, server in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prometheus(promtool: str, exporters: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    where = {"project": "sunday", "env": "staging", "color": "blue"}
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "sunday-services", "static_configs": [{"targets": [target], "labels": {**where, "service": name}}
                                                           for name, target in exporters.items()]}]}
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), config) as url:
        client = Prometheus(url)
        deadline = time.monotonic() + 30  # a rate needs two scrapes
        while not client.query(f'rate(http_requests_total{{{selector("sunday", "staging", "blue")}}}[1m])'):
            assert time.monotonic() < deadline, "Prometheus scraped nothing in 30 s"
            time.sleep(0.5)
        time.sleep(WINDOW_SECONDS + 1)  # a whole window of samples: a rate over less is extrapolated short
        yield client


def test_the_signals_of_one_color_by_service(prometheus: Prometheus) -> None:
    backend, frontend = signals_of(prometheus, "sunday", "staging", "blue", f"{WINDOW_SECONDS}s")
    assert (backend.service, frontend.service) == ("backend", "frontend")
    assert frontend.error_ratio == 0.0 and frontend.requests_per_second == pytest.approx(100, rel=0.1)
    assert backend.requests_per_second == pytest.approx(100, rel=0.1)
    assert backend.error_ratio == pytest.approx(0.1, rel=0.01)
    assert backend.p95_seconds == pytest.approx(0.25, rel=0.05)


def test_another_color_or_environment_has_no_signals(prometheus: Prometheus) -> None:
    assert signals_of(prometheus, "sunday", "staging", "green") == []
    assert signals_of(prometheus, "sunday", "production", "blue") == []
    assert signals_of(prometheus, 'sunday", env=~".*', "staging", "blue") == []  # a value stays a value


def test_status_reports_the_live_colors_signals(prometheus: Prometheus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUNDAY_PROMETHEUS_URL", prometheus.url)
    metrics = live_metrics("sunday", "staging", "blue")
    assert metrics["source"] == prometheus.url and metrics["window"] == "1m"
    backend, frontend = metrics["services"]
    assert backend["error_ratio"] == pytest.approx(0.1, rel=0.01) and frontend["error_ratio"] == 0.0


def test_a_bad_query_or_no_prometheus_is_named(prometheus: Prometheus, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    with pytest.raises(PrometheusUnavailable, match="refused 'sum by \\(service'"):
        prometheus.query("sum by (service")
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusUnavailable, match=f"Prometheus at {nobody} did not answer"):
        Prometheus(nobody).query("up")
    monkeypatch.setenv("SUNDAY_PROMETHEUS_URL", nobody)
    assert live_metrics("sunday", "staging", "blue")["reason"].startswith(f"Prometheus at {nobody} did not answer")
    monkeypatch.delenv("SUNDAY_PROMETHEUS_URL")
    assert live_metrics("sunday", "staging", "blue") == {"source": None,
                                                         "reason": "no Prometheus (SUNDAY_PROMETHEUS_URL)"}
