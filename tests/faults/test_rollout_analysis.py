"""Rollout analysis on real components: the sample app deployed on the docker target, the platform's Prometheus
(infra/local/prometheus.yml: docker discovery, the repository's rules) scraping every replica, real traffic
through the router. A release that fails 30 % of its users' requests only once it takes their traffic is rolled
back by the analysis inside the watch window; a healthy one under the same traffic is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sunday_release.prometheus import Prometheus, selector
from tests.alerting_fixture import Mail, Receivers, running_alertmanager
from tests.app_variants import Users, inject_user_fault
from tests.conftest import APP, free_port
from tests.prometheus_fixture import platform_config, running_prometheus
from tests.test_cd import Env, _rollout_markdown, ci_passed, deploy, status
from tests.test_ci_flow import sunday

WATCH_SECONDS = 40


@pytest.fixture(scope="module")
def alerting(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Receivers, Mail]]:
    """The platform's Alertmanager configuration, its receivers the tests' own (tests/alerting_fixture.py)."""
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager")) as found:
        yield found


@pytest.fixture(scope="module")
def prometheus(alerting: tuple[str, Receivers, Mail], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = platform_config()
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alerting[0].removeprefix("http://")]}]}]}
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), config) as url:
        yield url


def _heard(alerting: tuple[str, Receivers, Mail]) -> list[object]:
    """Every notification the receivers got so far."""
    _, receivers, mail = alerting
    return [*receivers.slack, *receivers.pagerduty, *mail.messages]


@pytest.fixture
def env(prometheus: str) -> Iterator[Env]:
    e = Env()
    e.env["SUNDAY_PROMETHEUS_URL"] = prometheus
    try:
        yield e
    finally:
        e.teardown()


def _watch_longer(env: Env) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        env.edit(repo)
        config = repo / "sunday-release.yaml"
        config.write_text(config.read_text().replace("watch_seconds: 2,", f"watch_seconds: {WATCH_SECONDS},", 1))
    return edit


def test_a_release_failing_its_users_is_rolled_back_by_the_analysis_and_a_healthy_one_is_not(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        env: Env, prometheus: str, alerting: tuple[str, Receivers, Mail]) -> None:
    repo = make_repo(APP, edit=_watch_longer(env))
    v1 = ci_passed(repo, prefect_api, git)
    assert deploy(env, repo, v1, prefect_api).returncode == 0
    with Users(env.url) as users:
        time.sleep(5)
        index = repo / "frontend" / "public" / "index.html"  # a healthy release under the same traffic
        index.write_text(index.read_text().replace("</title>", " v2</title>", 1))
        git(repo, "commit", "-qam", "v2")
        v2 = ci_passed(repo, prefect_api, git)
        healthy = deploy(env, repo, v2, prefect_api)
        assert healthy.returncode == 0, healthy.stderr
        markdown = _rollout_markdown(env)
        assert f"analysis: Prometheus {prometheus}" in markdown
        assert "analysis watch +" in markdown and ": passed" in markdown, markdown  # conclusive, and passed
        assert "FAILED" not in markdown, markdown
        assert _heard(alerting) == []  # nothing reaches anyone for a healthy deploy

        inject_user_fault(repo, fail_percent=30)
        git(repo, "commit", "-qam", "v3 fails 30 % of its users' requests")
        v3 = ci_passed(repo, prefect_api, git)  # its unit tests send no such header: CI is green
        done = deploy(env, repo, v3, prefect_api)
        time.sleep(2)
    assert done.returncode == 1, done.stderr
    assert "analysis failed 2 measurements in a row" in done.stderr and "error_ratio" in done.stderr, done.stderr
    st = status(env)
    assert st["live_color"] == "green" and st["version"] == v2 and st["serving"] is True
    backend = next(s for s in st["metrics"]["services"] if s["service"] == "backend")  # type: ignore[index]
    assert st["metrics"]["source"] == prometheus and backend["requests_per_second"] > 1  # type: ignore[index]
    assert backend["error_ratio"] < 0.02 and backend["p95_seconds"] is not None
    last = st["history"][-1]  # type: ignore[index]
    assert last["outcome"] == "rolled-back" and last["version"] == v3
    detected = last["timings"]["failed_at"] - last["timings"]["switched_at"]
    assert detected < WATCH_SECONDS, detected  # within the watch window
    markdown = _rollout_markdown(env)
    decisive = [line for line in markdown.splitlines() if "analysis watch +" in line and "FAILED" in line]
    assert len(decisive) >= 2, markdown
    ratio = float(decisive[-1].split("error_ratio ")[1].split(",")[0])
    assert 0.15 <= ratio <= 0.45, decisive  # the 30 % the users met, as Prometheus measured it
    assert "error_ratio" in decisive[-1] and "> 0.02" in decisive[-1]
    # the users' requests after the rollback reach the healthy release again
    back = last["timings"]["failed_at"] + last["timings"].get("rollback_seconds", 0) + 1
    after = [code for at, code, _ in users.seen if at > back]
    assert after and all(code == 200 for code in after), after[-20:]
    assert _heard(alerting) == []  # a release rolled back within seconds alerts nobody
    _exporter_matches_dora(env, prefect_api)
    _database_scraped(env, prometheus)
    print(json.dumps({"detected_after_switch_s": round(detected, 1),
                      "failed_requests": users.failed_between(last["timings"]["switched_at"], back)}))


def _database_scraped(env: Env, prometheus: str) -> None:
    """The environment's PostgreSQL, through the exporter its deploy started, is in the platform's Prometheus (job
    sunday-databases, found through the file the deploy wrote), labelled with its project and env."""
    deadline, seen = time.monotonic() + 40, []
    while time.monotonic() < deadline:
        seen = Prometheus(prometheus).query(f'pg_up{{job="sunday-databases", {selector(env.project, env.name)}}}')
        if seen:
            break
        time.sleep(1)
    assert [(labels["instance"], value) for labels, value in seen] == [(f"{env.project}/{env.name}", 1.0)], seen


def _exporter_matches_dora(env: Env, api: str) -> None:
    """`sunday-release exporter` (the pipeline's metrics, read with curl) says what `sunday-release dora` says:
    here 2 changes live and 1 rolled back."""
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "adapters.cli", "exporter", "--port", str(port)],
                                env={**os.environ, "PREFECT_API_URL": api}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            done = subprocess.run(["curl", "-fsS", f"http://127.0.0.1:{port}/metrics"], capture_output=True,
                                  text=True, check=False)
            if done.returncode == 0:
                text = done.stdout
                break
            assert exporter.poll() is None, exporter.communicate()[1]
            time.sleep(0.5)
        assert text, "the exporter did not answer within 60 s"
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def value(name: str, **labels: str) -> float:
        wanted = {"project": env.project, "env": env.name, **labels}
        return next(s.value for s in samples if s.name == name and s.labels == wanted)

    done = sunday("dora", "--env", env.name, "--project", env.project, "--json", api=api)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)["reports"]
    assert value("sunday_dora_change_failure_rate") == pytest.approx(report["change_failure_rate"]["rate"])
    assert report["change_failure_rate"]["failed"] == 1 and report["deployment_frequency"]["successful"] >= 2
    assert value("sunday_dora_deployment_frequency_per_day") == pytest.approx(
        report["deployment_frequency"]["per_day"])
    assert value("sunday_dora_lead_time_seconds", quantile="0.5") == pytest.approx(
        report["lead_time_for_changes"]["median_seconds"])
    assert value("sunday_deploys", outcome="failed") == 1
    assert 'sunday_flow_runs{flow="cd",state="COMPLETED"}' in text and 'sunday_last_ci_run_timestamp_seconds' in text
    # the rolled-back release's failure, counted by stage and cause
    causes = {(s.labels["flow"], s.labels["cause"]) for s in samples if s.name == "sunday_task_run_failures"}
    assert ("cd", "rollout") in causes, causes


def test_a_live_release_failing_its_users_alerts_slack_mail_and_pagerduty(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        env: Env, prometheus: str, alerting: tuple[str, Receivers, Mail]) -> None:
    """Nothing judges this environment's releases (no analysis, any error rate): a release failing 30 % of its
    users' requests goes live, and the rule SundayServiceErrorRatio (5xx above 5 % for 2 minutes) reaches
    every receiver through Alertmanager."""
    def edit(repo: Path) -> None:
        env.edit(repo)
        config = repo / "sunday-release.yaml"
        config.write_text(config.read_text().replace(
            "watch_seconds: 2,", "watch_seconds: 2, max_error_rate: 1.0, analysis: {enabled: false},", 1))

    _, receivers, mail = alerting
    repo = make_repo(APP, edit=edit)
    inject_user_fault(repo, fail_percent=30)
    git(repo, "commit", "-qam", "fails 30 % of its users' requests")
    version = ci_passed(repo, prefect_api, git)
    live = deploy(env, repo, version, prefect_api)
    assert live.returncode == 0, live.stderr
    assert "analysis: disabled" in _rollout_markdown(env)
    deadline = time.monotonic() + 300  # the rule's `for: 2m`, its 5-minute rate, and the evaluation cadence
    with Users(env.url):
        while not (receivers.pagerduty and receivers.slack and mail.messages):
            assert time.monotonic() < deadline, f"not every receiver heard within 5 minutes: {_heard(alerting)}"
            time.sleep(2)
    assert receivers.problems == []  # PagerDuty's documented shape
    page = receivers.pagerduty[0]
    assert page["event_action"] == "trigger" and page["payload"]["severity"] == "critical"
    assert f"SundayServiceErrorRatio (sunday/{env.name})" in page["payload"]["summary"]
    assert any(f"SundayServiceErrorRatio (sunday/{env.name})" in m["attachments"][0]["title"]
               for m in receivers.slack)
    assert any("SundayServiceErrorRatio" in str(message["Subject"]) for _, message in mail.messages)
