"""Notifications to a Slack-compatible incoming webhook (start, success, failure, rollback).

A notification never changes a release's outcome: `send_notification` runs the task and turns a
failure (webhook down, 5xx, refused connection) into a line of evidence for the rollout artifact.
"""

from __future__ import annotations

import os

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from sunday_release.tls import tls_context
from tasks._common import progress

__all__ = ["WEBHOOK_BLOCK", "notify", "send_notification", "webhook_url"]

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


@task(name="notify", task_run_name="notify[{event}]", retries=2, retry_delay_seconds=[1, 4],
      retry_jitter_factor=0.5, cache_policy=NO_CACHE)
def notify(env: str, event: str, text: str) -> bool:
    """POST `{"text": …}` to the webhook; False when none is configured. The URL is never logged.

    Raises:
        RuntimeError: the webhook answered 5xx (retried, then the task fails).
    """
    url = webhook_url()
    if url is None:
        return False
    response = httpx.post(url, json={"text": f"{_ICONS.get(event, '')} [{env}] {text}".strip(),
                                     "event": event, "env": env}, timeout=10, verify=tls_context())
    if response.status_code >= 500:
        raise RuntimeError(f"notification webhook answered {response.status_code}")
    progress(f"notified {event}")
    return response.status_code < 300


def send_notification(env: str, event: str, text: str) -> str | None:
    """Run `notify` without letting it fail the caller: None when sent (or none configured), else the evidence line.

    The failed task run stays visible in the UI; the release it reports on keeps its outcome.
    """
    state = notify(env, event, text, return_state=True)
    if state.is_completed():
        return None
    error = state.result(raise_on_failure=False)
    why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    line = f"notification {event} failed: {why}"
    progress(line)
    return line
