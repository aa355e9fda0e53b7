"""Who hears about an alert: the Alertmanager configuration, made from where each receiver is.

Routing by severity: `critical` pages (PagerDuty Events v2) and goes to the team's Slack channel and mail,
`warning` to Slack and mail only. Alerts are grouped per environment (alertname, project, env); a critical alert
inhibits the warnings of the same project, env and namespace (a service that is down is also slow). Secrets
(the Slack webhook URL, the PagerDuty routing key, the SMTP password) are only ever named by file
(`*_file`): the configuration holds no secret and can be shown, logged and kept in a ConfigMap.

infra/k8s/monitoring/alertmanager.yml is `alertmanager_config(KUBERNETES)` (tests/test_alerting.py keeps them
equal); `make server` writes the local one from SUNDAY_ALERT_* (deployments/alerting.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["KUBERNETES", "PAGERDUTY_EVENTS_V2", "Receivers", "alertmanager_config"]

PAGERDUTY_EVENTS_V2 = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class Receivers:
    """Where alerts go; a channel left None is not used."""

    slack_url_file: str | None = None
    slack_channel: str = "#sunday-alerts"
    email_to: str | None = None
    smtp_smarthost: str | None = None  # host:port
    smtp_from: str = "alertmanager@sunday.com"
    smtp_username: str | None = None
    smtp_password_file: str | None = None
    smtp_require_tls: bool = True
    pagerduty_key_file: str | None = None
    pagerduty_url: str = PAGERDUTY_EVENTS_V2


KUBERNETES = Receivers(
    slack_url_file="/etc/alertmanager/secrets/slack-webhook-url",
    email_to="oncall@sunday.com", smtp_smarthost="smtp.sunday.com:587", smtp_username="alertmanager@sunday.com",
    smtp_password_file="/etc/alertmanager/secrets/smtp-password",
    pagerduty_key_file="/etc/alertmanager/secrets/pagerduty-routing-key")

SUMMARY = '{{ range .Alerts }}{{ .Annotations.summary }}\n{{ end }}'
TITLE = '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.project }}/{{ .CommonLabels.env }})'


def _slack(r: Receivers) -> list[dict[str, Any]]:
    if r.slack_url_file is None:
        return []
    return [{"api_url_file": r.slack_url_file, "channel": r.slack_channel, "send_resolved": True,
             "title": TITLE, "text": SUMMARY}]


def _email(r: Receivers) -> list[dict[str, Any]]:
    return [{"to": r.email_to, "send_resolved": True}] if r.email_to and r.smtp_smarthost else []


def _pagerduty(r: Receivers) -> list[dict[str, Any]]:
    if r.pagerduty_key_file is None:
        return []
    return [{"routing_key_file": r.pagerduty_key_file, "url": r.pagerduty_url, "send_resolved": True,
             "severity": "critical", "description": TITLE,
             "details": {"summary": SUMMARY, "firing": '{{ .Alerts.Firing | len }}'}}]


def alertmanager_config(r: Receivers, group_wait: str = "30s", group_interval: str = "5m",
                        repeat_interval: str = "4h") -> dict[str, Any]:
    """The whole alertmanager.yml for these receivers."""
    config: dict[str, Any] = {"global": {"resolve_timeout": "5m"}}
    if r.smtp_smarthost:
        config["global"] |= {"smtp_smarthost": r.smtp_smarthost, "smtp_from": r.smtp_from,
                             "smtp_require_tls": r.smtp_require_tls}
        if r.smtp_username:
            config["global"]["smtp_auth_username"] = r.smtp_username
        if r.smtp_password_file:
            config["global"]["smtp_auth_password_file"] = r.smtp_password_file
    page = {"name": "page", **{k: v for k, v in (("pagerduty_configs", _pagerduty(r)), ("slack_configs", _slack(r)),
                                                 ("email_configs", _email(r))) if v}}
    team = {"name": "team", **{k: v for k, v in (("slack_configs", _slack(r)), ("email_configs", _email(r))) if v}}
    config["route"] = {
        "receiver": "team", "group_by": ["alertname", "project", "env"], "group_wait": group_wait,
        "group_interval": group_interval, "repeat_interval": repeat_interval,
        "routes": [{"matchers": ['severity="critical"'], "receiver": "page"}],
    }
    config["inhibit_rules"] = [{"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                                "equal": ["project", "env", "namespace"]}]
    config["receivers"] = [page, team]
    return config
