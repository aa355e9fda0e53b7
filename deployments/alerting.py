"""Write an Alertmanager configuration (sunday_release.alerting).

    python -m deployments.alerting --kubernetes          # the overlay's: infra/k8s/monitoring/alertmanager.yml
    python -m deployments.alerting --local DIR           # make server's: DIR/alertmanager.yml from SUNDAY_ALERT_*

--local reads SUNDAY_ALERT_SLACK_URL (a Slack-compatible incoming webhook), SUNDAY_ALERT_EMAIL_TO with
SUNDAY_ALERT_SMTP (host:port; SUNDAY_ALERT_SMTP_FROM, SUNDAY_ALERT_SMTP_TLS=false for a relay without STARTTLS),
SUNDAY_ALERT_PAGERDUTY_KEY (an Events v2 routing key; SUNDAY_ALERT_PAGERDUTY_URL for another endpoint). The secrets
go to files of their own in DIR (0600) that the configuration names; none is in the configuration or printed.
Without any, every alert still shows in Alertmanager's UI, and reaches nobody.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from sunday_release.alerting import KUBERNETES, PAGERDUTY_EVENTS_V2, Receivers, alertmanager_config

__all__ = ["local_receivers", "main", "render"]


def render(receivers: Receivers, **timing: str) -> str:
    return yaml.safe_dump(alertmanager_config(receivers, **timing), sort_keys=False, width=200)


def _secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value.strip())
    path.chmod(0o600)
    return str(path)


def local_receivers(directory: Path, env: dict[str, str]) -> Receivers:
    """The receivers SUNDAY_ALERT_* name, their secrets written to files in `directory`."""
    slack, key = env.get("SUNDAY_ALERT_SLACK_URL", ""), env.get("SUNDAY_ALERT_PAGERDUTY_KEY", "")
    return Receivers(
        slack_url_file=_secret_file(directory, "slack-webhook-url", slack) if slack else None,
        email_to=env.get("SUNDAY_ALERT_EMAIL_TO") or None, smtp_smarthost=env.get("SUNDAY_ALERT_SMTP") or None,
        smtp_from=env.get("SUNDAY_ALERT_SMTP_FROM") or "alertmanager@localhost",
        smtp_require_tls=env.get("SUNDAY_ALERT_SMTP_TLS", "true").lower() != "false",
        pagerduty_key_file=_secret_file(directory, "pagerduty-routing-key", key) if key else None,
        pagerduty_url=env.get("SUNDAY_ALERT_PAGERDUTY_URL") or PAGERDUTY_EVENTS_V2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--kubernetes", action="store_true", help="print the monitoring overlay's configuration")
    where.add_argument("--local", type=Path, metavar="DIR", help="write DIR/alertmanager.yml from SUNDAY_ALERT_*")
    args = parser.parse_args(argv)
    if args.kubernetes:
        sys.stdout.write(render(KUBERNETES))
        return 0
    directory: Path = args.local
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    receivers = local_receivers(directory, dict(os.environ))
    (directory / "alertmanager.yml").write_text(render(receivers, group_wait="10s", group_interval="1m"))
    used = [name for name, on in (("slack", receivers.slack_url_file), ("email", receivers.email_to),
                                  ("pagerduty", receivers.pagerduty_key_file)) if on]
    print(", ".join(used) or "no receiver (SUNDAY_ALERT_*)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
