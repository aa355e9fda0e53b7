"""Rollout analysis: judging the new color of a release from Prometheus, as Argo Rollouts' AnalysisRun does.

A measurement evaluates every query of the environment's `analysis:` (sunday_release.config.Analysis) on one
color over the window, and compares each value with its maximum. The run fails after `failure_limit` failed
measurements in a row; a measurement with too few requests in the window is inconclusive (it neither counts nor
breaks the run). Everything here but `measure` (which asks Prometheus) is a pure decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sunday_release.config import Analysis
from sunday_release.prometheus import Prometheus, PrometheusUnavailable, selector

__all__ = ["AnalysisRun", "Measurement", "baseline_p95", "clipped_window", "measure", "queries", "thresholds"]

REQUESTS = "requests"  # the requests the color served in the window: what makes a measurement conclusive


MIN_WINDOW_SECONDS = 6  # three of the platform's scrapes (every 2 s): the least a rate is read over


def window_seconds(window: str) -> int:
    """`30s` / `2m` in seconds."""
    return int(window[:-1]) * (60 if window.endswith("m") else 1)


def clipped_window(analysis: Analysis, color_age: float | None) -> str:
    """The analysis window, cut to the age of the color's replicas (`color_age` seconds since they started, None:
    unknown). The color's labels are the same release after release: without the cut, a release's first
    measurements would read what the previous release on its color did in its last seconds (a rolled-back
    release's errors failed the healthy one after it)."""
    seconds = window_seconds(analysis.window)
    if color_age is not None:
        seconds = max(MIN_WINDOW_SECONDS, min(seconds, int(color_age)))
    return f"{seconds}s"


def queries(analysis: Analysis, project: str, env: str, color: str, window: str | None = None) -> dict[str, str]:
    """Name → PromQL of one number, on `color` of the environment, over `window` (default: the analysis's)."""
    where, window = selector(project, env, color), window or analysis.window
    found = {
        REQUESTS: f"sum(increase(http_requests_total{{{where}}}[{window}]))",
        # no 5xx series (the color never failed) is a ratio of 0, not no value
        "error_ratio": (f"(sum(rate(http_requests_total{{{where}, status=~\"5..\"}}[{window}]))"
                        f" or 0 * sum(rate(http_requests_total{{{where}}}[{window}])))"
                        f" / sum(rate(http_requests_total{{{where}}}[{window}]))"),
        "p95_seconds": ("histogram_quantile(0.95, sum by (le) "
                        f"(rate(http_request_duration_seconds_bucket{{{where}}}[{window}])))"),
        "restarts": f"sum(changes(process_start_time_seconds{{{where}}}[{window}]))",
    }
    for extra in analysis.queries:
        found[extra.name] = extra.query.replace("$selector", where).replace("$window", window)
    return found


def thresholds(analysis: Analysis, baseline: float | None = None) -> dict[str, float]:
    """Name → the most a measurement may show; the p95's is the lower of its absolute maximum and the previous
    color's p95 (`baseline`) plus the allowed increase."""
    p95 = analysis.max_p95_seconds
    if baseline is not None and analysis.max_p95_increase_seconds is not None:
        p95 = min(p95, baseline + analysis.max_p95_increase_seconds)
    return {"error_ratio": analysis.max_error_ratio, "p95_seconds": p95, "restarts": float(analysis.max_restarts),
            **{extra.name: extra.max for extra in analysis.queries}}


@dataclass(frozen=True)
class Measurement:
    """One evaluation of every query on one color."""

    phase: str  # "smoke" (before traffic moved: the new color's smoke requests only) or "watch" (live traffic)
    at: float  # seconds since the analysis began
    values: dict[str, float | None]  # a query with no result (no series, NaN) has None
    limits: dict[str, float]
    requests: float
    failed: tuple[str, ...]  # "error_ratio 0.31 > 0.02", one per value above its maximum
    inconclusive: bool

    def line(self) -> str:
        values = ", ".join(f"{name} {_fmt(value)}" for name, value in self.values.items() if name != REQUESTS)
        verdict = ("inconclusive (fewer requests than min_requests)" if self.inconclusive
                   else "FAILED: " + "; ".join(self.failed) if self.failed else "passed")
        return f"{self.phase} +{self.at:.1f}s: {self.requests:.0f} requests, {values}: {verdict}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def judge(phase: str, at: float, values: dict[str, float | None], limits: dict[str, float],
          min_requests: int) -> Measurement:
    """The measurement of `values`: which are above their maximum, and whether it is conclusive at all."""
    requests = values.get(REQUESTS) or 0.0
    failed = tuple(f"{name} {_fmt(values.get(name))} > {limit:.4g}" for name, limit in limits.items()
                   if (value := values.get(name)) is not None and value > limit)
    return Measurement(phase, at, dict(values), dict(limits), requests, failed, requests < min_requests)


def _one(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    if not result:
        return None
    value = result[0][1]
    return None if math.isnan(value) or math.isinf(value) else value


def measure(prometheus: Prometheus, analysis: Analysis, project: str, env: str, color: str, phase: str, at: float,
            baseline: float | None = None, color_age: float | None = None) -> Measurement:
    """Evaluate every query on `color` now, over the window cut to the color's age (`clipped_window`).

    Raises:
        PrometheusUnavailable: Prometheus did not answer or refused a query.
    """
    window = clipped_window(analysis, color_age)
    values = {name: _one(prometheus, expr)
              for name, expr in queries(analysis, project, env, color, window).items()}
    return judge(phase, at, values, thresholds(analysis, baseline), analysis.min_requests)


def baseline_p95(prometheus: Prometheus, analysis: Analysis, project: str, env: str, color: str) -> float | None:
    """The p95 of the color that is live before the switch, when it served `min_requests` in the window."""
    try:
        values = {name: _one(prometheus, expr) for name, expr in queries(analysis, project, env, color).items()
                  if name in (REQUESTS, "p95_seconds")}
    except PrometheusUnavailable:
        return None
    if (values.get(REQUESTS) or 0.0) < analysis.min_requests:
        return None
    return values.get("p95_seconds")


@dataclass
class AnalysisRun:
    """The measurements of one release so far, and the verdict they make."""

    failure_limit: int
    measurements: list[Measurement] = field(default_factory=list)
    consecutive: int = 0

    def add(self, measurement: Measurement) -> None:
        self.measurements.append(measurement)
        if measurement.inconclusive:
            return
        self.consecutive = self.consecutive + 1 if measurement.failed else 0

    @property
    def failed(self) -> bool:
        return self.consecutive >= self.failure_limit

    def reason(self) -> str:
        last = self.measurements[-1]
        return (f"analysis failed {self.consecutive} measurements in a row (failure_limit {self.failure_limit}): "
                + "; ".join(last.failed))

    def summary(self) -> str:
        conclusive = [m for m in self.measurements if not m.inconclusive]
        failed = sum(1 for m in conclusive if m.failed)
        return (f"{len(self.measurements)} measurements, {len(conclusive)} conclusive, {failed} failed"
                + (": FAILED" if self.failed else ""))
