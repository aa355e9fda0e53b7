"""Alerts that reach people: the real Alertmanager (Debian's) with the configuration sunday_release.alerting makes,
delivering to a Slack-compatible webhook, to mail (an SMTP server, aiosmtpd) and to PagerDuty Events v2 (a FAKE
PagerDuty: a local HTTP server checking the documented request shape). Routing by severity, inhibition of warnings
while a critical fires, grouping per environment."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deployments.alerting import local_receivers, render
from sunday_release.alerting import KUBERNETES, alertmanager_config
from tests.alerting_fixture import Mail, Receivers, pagerduty_problems, running_alertmanager
from tests.infra_checks import K8S, render_kustomize

OVERLAY_FILE = K8S / "monitoring" / "alertmanager.yml"


def test_the_overlays_configuration_is_the_generated_one_and_alertmanager_takes_it(promtool: str) -> None:
    assert yaml.safe_load(OVERLAY_FILE.read_text()) == alertmanager_config(KUBERNETES)
    done = subprocess.run(["amtool", "check-config", str(OVERLAY_FILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    maps = {m["metadata"]["name"]: m for m in render_kustomize(K8S / "monitoring") if m["kind"] == "ConfigMap"}
    assert maps["alertmanager-config"]["data"] == {"alertmanager.yml": OVERLAY_FILE.read_text()}


def test_no_secret_is_in_the_configuration(tmp_path: Path) -> None:
    env = {"SUNDAY_ALERT_SLACK_URL": "https://hooks.example/services/T0/B0/Xk9slackCANARY",
           "SUNDAY_ALERT_PAGERDUTY_KEY": "pdCANARY0123456789abcd", "SUNDAY_ALERT_EMAIL_TO": "a@b.c",
           "SUNDAY_ALERT_SMTP": "127.0.0.1:25"}
    text = render(local_receivers(tmp_path, env))
    assert "CANARY" not in text and "hooks.example" not in text
    assert str(tmp_path / "slack-webhook-url") in text and str(tmp_path / "pagerduty-routing-key") in text
    assert (tmp_path / "slack-webhook-url").read_text() == env["SUNDAY_ALERT_SLACK_URL"]
    assert oct((tmp_path / "pagerduty-routing-key").stat().st_mode & 0o777) == "0o600"


@pytest.fixture(scope="module")
def alerting(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Receivers, Mail]]:
    with running_alertmanager(tmp_path_factory.mktemp("alertmanager")) as found:
        yield found


def _alert(name: str, severity: str, env: str, summary: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, "severity": severity, "project": "sunday", "env": env,
                       "service": "backend"},
            "annotations": {"summary": summary}, "startsAt": datetime.now(UTC).isoformat()}


def _until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def test_a_critical_pages_and_tells_the_team_a_warning_only_tells_the_team_and_is_inhibited_by_a_critical(
        alerting: tuple[str, Receivers, Mail]) -> None:
    url, receivers, mail = alerting
    alerts = [_alert("SundayServiceErrorRatio", "critical", "staging", "backend of sunday/staging: 30% fail"),
              _alert("SundayServiceLatencyP95", "warning", "staging", "backend of sunday/staging: slow"),
              _alert("SundayServiceLatencyP95", "warning", "production", "backend of sunday/production: slow")]
    assert httpx.post(f"{url}/api/v2/alerts", json=alerts, timeout=10).status_code == 200
    _until(lambda: len(receivers.pagerduty) >= 1 and len(receivers.slack) >= 2 and len(mail.messages) >= 2,
           "a page, two Slack messages and two mails")
    time.sleep(3)  # what else would come (the inhibited warning, a second page) has had its group_wait

    assert receivers.problems == []
    (page,) = receivers.pagerduty
    assert page["routing_key"] == "R0UT1NGKEY" and page["event_action"] == "trigger"
    assert page["payload"]["severity"] == "critical" and "SundayServiceErrorRatio" in page["payload"]["summary"]
    assert "sunday/staging" in page["payload"]["summary"]

    titles = sorted(message["attachments"][0]["title"] for message in receivers.slack)
    assert titles == ["[FIRING] SundayServiceErrorRatio (sunday/staging)",
                      "[FIRING] SundayServiceLatencyP95 (sunday/production)"]  # staging's warning: inhibited
    assert all(message["channel"] == "#sunday-alerts" for message in receivers.slack)
    texts = {message["attachments"][0]["title"]: message["attachments"][0]["text"] for message in receivers.slack}
    assert "30% fail" in texts["[FIRING] SundayServiceErrorRatio (sunday/staging)"]

    assert all(to == ["oncall@sunday.test"] for to, _ in mail.messages)
    subjects = " | ".join(str(message["Subject"]) for _, message in mail.messages)
    assert "SundayServiceErrorRatio" in subjects and "SundayServiceLatencyP95" in subjects
    assert len(mail.messages) == 2


def test_a_refused_event_is_seen_by_the_fake_pagerduty() -> None:
    """The FAKE PagerDuty's checks can fail: what it refuses, named."""
    assert pagerduty_problems({"routing_key": "", "event_action": "fire", "dedup_key": "x" * 300,
                                "payload": {"summary": "", "severity": "high"}}) == [
        "routing_key missing", "event_action 'fire'", "dedup_key"]
    assert pagerduty_problems({"routing_key": "k", "event_action": "trigger", "dedup_key": "d",
                                "payload": {"summary": "s", "severity": "high"}}) == [
        "payload.source", "payload.severity 'high'"]
