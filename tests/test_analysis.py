"""The rollout analysis's decisions (sunday_release.analysis) and its config, without Prometheus."""

from __future__ import annotations

from typing import Any

import pytest

from sunday_release.analysis import REQUESTS, AnalysisRun, clipped_window, judge, queries, thresholds
from sunday_release.config import Analysis, parse_config
from sunday_release.errors import ConfigError
from sunday_release.prometheus import selector


def _m(requests: float, error_ratio: float | None, p95: float | None = 0.05, phase: str = "watch") -> Any:
    analysis = Analysis()
    return judge(phase, 1.0, {REQUESTS: requests, "error_ratio": error_ratio, "p95_seconds": p95, "restarts": 0.0},
                 thresholds(analysis), analysis.min_requests)


def test_a_value_above_its_limit_fails_the_measurement_and_names_it() -> None:
    measurement = _m(100, 0.31)
    assert measurement.failed == ("error_ratio 0.31 > 0.02",) and not measurement.inconclusive
    assert measurement.line() == ("watch +1.0s: 100 requests, error_ratio 0.31, p95_seconds 0.05, restarts 0: "
                                  "FAILED: error_ratio 0.31 > 0.02")
    assert _m(100, 0.0).failed == () and _m(100, 0.0).line().endswith(": passed")
    assert _m(100, None, None).failed == ()  # no value (no such series yet) is no failure


def test_too_few_requests_make_a_measurement_inconclusive() -> None:
    measurement = _m(5, 1.0)
    assert measurement.inconclusive and measurement.line().endswith("inconclusive (fewer requests than min_requests)")
    assert _m(0, None, None).inconclusive


def test_failure_limit_failed_measurements_in_a_row_fail_the_run() -> None:
    run = AnalysisRun(failure_limit=2)
    run.add(_m(100, 0.5))
    assert not run.failed
    run.add(_m(100, 0.0))  # a pass breaks the run of failures
    run.add(_m(100, 0.5))
    run.add(_m(3, 0.0))  # inconclusive: neither counts nor breaks it
    assert not run.failed
    run.add(_m(100, 0.4))
    assert run.failed
    assert run.reason() == ("analysis failed 2 measurements in a row (failure_limit 2): error_ratio 0.4 > 0.02")
    assert run.summary() == "5 measurements, 4 conclusive, 3 failed: FAILED"


def test_the_p95_limit_is_the_lower_of_the_absolute_one_and_the_baseline_plus_the_increase() -> None:
    analysis = Analysis(max_p95_seconds=1.0, max_p95_increase_seconds=0.2)
    assert thresholds(analysis)["p95_seconds"] == 1.0
    assert thresholds(analysis, baseline=0.05)["p95_seconds"] == pytest.approx(0.25)
    assert thresholds(analysis, baseline=0.95)["p95_seconds"] == 1.0
    assert thresholds(Analysis(max_p95_increase_seconds=None), baseline=0.05)["p95_seconds"] == 1.0


def test_queries_judge_one_color_and_fill_in_the_configs_own() -> None:
    analysis = Analysis(window="20s", queries=[{"name": "slow-writes", "max": 0.5, "query":  # type: ignore[list-item]
                        'max(rate(x{$selector, method="POST"}[$window]))'}])
    found = queries(analysis, "shop", "production", "green")
    where = 'project="shop", env="production", color="green"'
    assert found["error_ratio"] == (f'(sum(rate(http_requests_total{{{where}, status=~"5.."}}[20s]))'
                                    f" or 0 * sum(rate(http_requests_total{{{where}}}[20s])))"
                                    f" / sum(rate(http_requests_total{{{where}}}[20s]))")
    assert found["slow-writes"] == f'max(rate(x{{{where}, method="POST"}}[20s]))'
    assert thresholds(analysis)["slow-writes"] == 0.5
    assert set(found) == {REQUESTS, "error_ratio", "p95_seconds", "restarts", "slow-writes"}


def test_a_label_value_cannot_break_out_of_its_matcher() -> None:
    assert selector('a"b', "e\\") == 'project="a\\"b", env="e\\\\"'


@pytest.mark.parametrize(("analysis", "key", "why"), [
    ({"queries": [{"name": "x", "max": 1, "query": "up"}]}, "analysis.queries[0].query", "must use $selector"),
    ({"queries": [{"name": "x", "max": 1, "query": "up{$selector}\nor vector(1)"}]}, "analysis.queries[0].query",
     "one line"),
    ({"window": "30"}, "analysis.window", ""),
    ({"failure_limit": 0}, "analysis.failure_limit", ""),
    ({"interval": 0.1}, "analysis.interval", ""),
    ({"max_error_ratio": 2}, "analysis.max_error_ratio", ""),
    ({"enabled": "maybe"}, "analysis.enabled", ""),
])
def test_a_bad_analysis_is_refused_naming_its_key(analysis: dict[str, Any], key: str, why: str) -> None:
    data = {"project": "shop", "services": {"api": {"context": "api", "port": 8000, "metrics_path": "/metrics"}},
            "environments": {"staging": {"port": 8081, "analysis": analysis}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.path == f"environments.staging.{key}", str(caught.value)
    assert why in str(caught.value)


@pytest.mark.parametrize("path", ["metrics", "/metrics?x=1", "/me trics", "/" + "a" * 300])
def test_a_bad_metrics_path_is_refused(path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"project": "shop", "services": {"api": {"context": "api", "port": 8000, "metrics_path": path}}})
    assert caught.value.path == "services.api.metrics_path"


def test_the_window_is_cut_to_the_colors_age() -> None:
    """A color's labels are the same release after release: a new release reads only what its own replicas did."""
    analysis = Analysis(window="30s")
    assert clipped_window(analysis, None) == "30s"
    assert clipped_window(analysis, 12.7) == "12s"
    assert clipped_window(analysis, 2.0) == "6s"  # three scrapes at least
    assert clipped_window(Analysis(window="2m"), 500) == "120s"
    assert "[12s]" in queries(analysis, "shop", "staging", "blue", clipped_window(analysis, 12.7))["error_ratio"]
