"""Notifications to a Slack-compatible incoming webhook (start, success, failure, rollback)."""

from __future__ import annotations

import os

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks._common import progress

__all__ = ["WEBHOOK_BLOCK", "notify", "webhook_url"]

WEBHOOK_BLOCK = "sunday-notify-webhook"
_ICONS = {"start": ":rocket:", "success": ":white_check_mark:", "failure": ":x:", "rollback": ":rewind:"}


def webhook_url() -> str | None:
    """The webhook URL: the Prefect Secret block `sunday-notify-webhook`, else SUNDAY_NOTIFY_URL, else none."""
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(WEBHOOK_BLOCK).get()  # type: ignore[union-attr]
        if value:
            return str(value)
    except (ValueError, RuntimeError):  # no such block
        pass
    return os.environ.get("SUNDAY_NOTIFY_URL") or None


@task(name="notify", task_run_name="notify[{event}]", retries=3, retry_delay_seconds=[1, 3, 9],
      retry_jitter_factor=0.5, cache_policy=NO_CACHE)
def notify(env: str, event: str, text: str) -> bool:
    """POST `{"text": …}` to the webhook; False when none is configured. The URL is never logged."""
    url = webhook_url()
    if url is None:
        return False
    response = httpx.post(url, json={"text": f"{_ICONS.get(event, '')} [{env}] {text}".strip(),
                                     "event": event, "env": env}, timeout=10)
    if response.status_code >= 500:
        raise RuntimeError(f"notification webhook answered {response.status_code}")
    progress(f"notified {event}")
    return response.status_code < 300
