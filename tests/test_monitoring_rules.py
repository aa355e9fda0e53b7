"""The monitoring configuration is tested, not just written: promtool checks and unit tests every alert rule
(devtools/monitoring_check.py), a real Prometheus loads the rules and runs every dashboard panel's query, and the
kustomize overlay mounts exactly these files."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from devtools.monitoring_check import DEFAULT_ROOT, alerts, check
from tests.infra_checks import K8S, render_kustomize
from tests.prometheus_fixture import running_prometheus

RULES = sorted((DEFAULT_ROOT / "rules").glob("*.yml"))
DASHBOARDS = sorted((DEFAULT_ROOT / "dashboards").glob("*.json"))
# what Grafana puts in for its built-in variables when it sends a panel's query
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def test_every_rule_passes_promtool_and_every_alert_is_tested_firing_and_not(promtool: str) -> None:
    assert check() == []
    assert sum(len(alerts(f)) for f in RULES) >= 10


@pytest.fixture()
def monitoring_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "monitoring"
    shutil.copytree(DEFAULT_ROOT, copy)
    return copy


def test_a_broken_rule_fails_the_check_naming_its_file(promtool: str, monitoring_copy: Path) -> None:
    rules = monitoring_copy / "rules" / "sunday.rules.yml"
    rules.write_text(rules.read_text().replace("up{job=\"sunday-services\"} == 0", "up{job=\"sunday-services\" == 0"))
    problems = check(monitoring_copy)
    assert problems and problems[0].startswith("rules/sunday.rules.yml: promtool check rules failed:"), problems


def test_an_alert_without_a_test_fails_the_check_naming_it(promtool: str, monitoring_copy: Path) -> None:
    rules = monitoring_copy / "rules" / "sunday.rules.yml"
    data = yaml.safe_load(rules.read_text())
    data["groups"][0]["rules"].append({"alert": "SundayUntested", "expr": "vector(1) > 2", "for": "1m",
                                       "labels": {"severity": "warning"}, "annotations": {"summary": "x"}})
    rules.write_text(yaml.safe_dump(data))
    assert check(monitoring_copy) == [
        "rules/sunday.rules.yml: SundayUntested: no test case where it fires (tests/*.yml, exp_alerts not empty)",
        "rules/sunday.rules.yml: SundayUntested: no test case where it does not fire (tests/*.yml, exp_alerts: [])",
    ]


def test_an_alert_tested_only_firing_fails_the_check(promtool: str, monitoring_copy: Path) -> None:
    tests = monitoring_copy / "tests" / "sunday.rules.test.yml"
    data = yaml.safe_load(tests.read_text())
    for group in data["tests"]:
        group["alert_rule_test"] = [case for case in group.get("alert_rule_test", [])
                                    if case["alertname"] != "SundayServiceDown" or case.get("exp_alerts")]
    tests.write_text(yaml.safe_dump(data))
    assert check(monitoring_copy) == [
        "rules/sunday.rules.yml: SundayServiceDown: no test case where it does not fire (tests/*.yml, exp_alerts: [])"]


def test_a_wrong_expectation_fails_promtool_test_rules(promtool: str, monitoring_copy: Path) -> None:
    tests = monitoring_copy / "tests" / "sunday.rules.test.yml"
    tests.write_text(tests.read_text().replace('description: "5xx ratio over 5 minutes is 10%."',
                                               'description: "5xx ratio over 5 minutes is 11%."'))
    problems = check(monitoring_copy)
    assert len(problems) == 1 and problems[0].startswith("tests/sunday.rules.test.yml: promtool test rules failed:")
    assert "SundayServiceErrorRatio" in problems[0]


def test_the_overlay_mounts_exactly_the_rule_and_dashboard_files() -> None:
    maps = {m["metadata"]["name"]: m for m in render_kustomize(K8S / "monitoring") if m["kind"] == "ConfigMap"}
    assert set(maps["prometheus-rules"]["data"]) == {f.name for f in RULES}
    for rule_file in RULES:
        assert maps["prometheus-rules"]["data"][rule_file.name] == rule_file.read_text()
    dashboards = {key: value for name, m in maps.items() if name.startswith("grafana-dashboard-")
                  for key, value in m["data"].items()}
    assert dashboards == {f.name: f.read_text() for f in DASHBOARDS}
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1"
               for name, m in maps.items() if name.startswith("grafana-dashboard-"))


@pytest.fixture(scope="module")
def prometheus(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with the repository's rule files loaded."""
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), {
        "global": {"evaluation_interval": "1s"}, "rule_files": [str(DEFAULT_ROOT / "rules" / "*.yml")],
    }) as url:
        yield url


def test_a_real_prometheus_loads_every_rule(prometheus: str) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"}
    assert loaded == {name for rule_file in RULES for name in alerts(rule_file)}
    assert all(rule["health"] != "err" for group in groups for rule in group["rules"])


def _panel_queries(dashboard: dict[str, object]) -> Iterator[tuple[str, str]]:
    """(panel title, query with the dashboard's variables put in as Grafana would) for every panel target."""
    values = dict(GRAFANA_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):  # type: ignore[union-attr]
        current = variable.get("current", {}).get("value")
        if current is not None:
            values[variable["name"]] = current
    for panel in dashboard["panels"]:  # type: ignore[union-attr]
        for target in panel.get("targets", []):
            query = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), target["expr"])
            yield panel["title"], query


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_panel_query_runs_on_a_real_prometheus(prometheus: str, dashboard: Path) -> None:
    queries = list(_panel_queries(json.loads(dashboard.read_text())))
    assert queries
    for title, query in queries:
        assert "$" not in query, f"{dashboard.name}: panel {title!r}: a variable the dashboard does not define"
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
        assert answer["status"] == "success", f"{dashboard.name}: panel {title!r}: {query}: {answer.get('error')}"


def test_a_panel_query_prometheus_refuses_is_caught(prometheus: str) -> None:
    broken = {"panels": [{"title": "broken", "targets": [{"expr": "sum by (service (rate(x[5m]))"}]}]}
    (_title, query), = _panel_queries(broken)
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=10).json()
    assert answer["status"] == "error" and "parse error" in answer["error"]
