"""Register the automations declared under `automations:` in prefect.yaml (by name: create or update).

    python infra/prefect/automations.py PREFECT_YAML [--notify-url URL] [--zombie-seconds N]

`prefect deploy` registers only deployments (and their own `triggers:`); the platform's automations are
not about one deployment, so `make server` runs this after it. Each entry is Prefect's automation
schema (`prefect automation create --from-file` takes the same), except that an action may name its
block as `block: TYPE/NAME` where Prefect wants `block_document_id`. `--notify-url` (default:
SUNDAY_NOTIFY_URL, else the Secret block `sunday-notify-webhook`) creates or updates the
`custom-webhook/sunday-notify-crashed` block that posts `{"text": …}` (Slack-compatible) to it; the URL is
kept in the block's secrets. An automation whose block does not exist is skipped, with a line on stderr.
`--zombie-seconds` (default: SUNDAY_ZOMBIE_SECONDS, else prefect.yaml's `within`) is the window without a
heartbeat after which `sunday-crash-zombie-flow-runs` marks a run Crashed; keep it a few heartbeats
(SUNDAY_HEARTBEAT_SECONDS of `make server`) long.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

NOTIFY_BLOCK = "sunday-notify-crashed"
ZOMBIE = "sunday-crash-zombie-flow-runs"
SECRET_BLOCK = "sunday-notify-webhook"  # tasks/notify.py: the pipeline's own notifications


def load(prefect_yaml: Path) -> list[dict[str, Any]]:
    """The `automations:` entries of a prefect.yaml."""
    data = yaml.safe_load(prefect_yaml.read_text()) or {}
    entries = data.get("automations") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("name") for e in entries):
        raise SystemExit(f"{prefect_yaml}: `automations` must be a list of mappings, each with a `name`")
    return entries


def with_zombie_window(entries: list[dict[str, Any]], seconds: int) -> list[dict[str, Any]]:
    """The entries with the zombie automation's window (`trigger.within`) set to `seconds`, its message saying so."""
    if seconds <= 0:
        raise ValueError(f"the zombie window must be > 0 seconds, got {seconds}")
    changed = []
    for entry in entries:
        if entry.get("name") == ZOMBIE:
            entry = {**entry, "trigger": {**entry.get("trigger", {}), "within": seconds},
                     "actions": [{**action, "message": f"No heartbeat for {seconds} s; the flow run's process or "
                                                      "machine is gone."} if "message" in action else action
                                 for action in entry.get("actions", [])]}
        changed.append(entry)
    return changed


def _seconds(value: str) -> int:
    """A whole number of seconds > 0 (argparse type)."""
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"(or SUNDAY_ZOMBIE_SECONDS) expected a whole number of seconds > 0, "
                                         f"got {value!r}")
    return int(value)


def save_notify_block(url: str) -> None:
    """The webhook notification block the crash automation sends through (created or overwritten)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    CustomWebhookNotificationBlock(
        name="sunday-release", url="{{url}}", secrets={"url": url},
        json_data={"text": "{{body}}", "event": "crashed"},
        allow_private_urls=True,  # the operator's own URL (a local Slack-compatible endpoint is fine)
    ).save(NOTIFY_BLOCK, overwrite=True)


def _notify_url() -> str | None:
    url = os.environ.get("SUNDAY_NOTIFY_URL")
    if url:
        return url
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(SECRET_BLOCK).get()  # type: ignore[union-attr]
    except (ValueError, RuntimeError):  # no such block
        return None
    return str(value) if value else None


def register(entries: list[dict[str, Any]]) -> list[str]:
    """Create or update each automation by name; the names registered (those whose blocks exist)."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from prefect.exceptions import ObjectNotFound

    done = []
    with get_client(sync_client=True) as client:
        for entry in entries:
            entry = {**entry, "actions": [dict(a) for a in entry.get("actions", [])]}
            missing = None
            for action in entry["actions"]:
                if "block" in action:
                    slug, _, name = str(action.pop("block")).partition("/")
                    try:
                        action["block_document_id"] = client.read_block_document_by_name(
                            name, block_type_slug=slug, include_secrets=False).id
                    except ObjectNotFound:
                        missing = f"{slug}/{name}"
            if missing:
                print(f"automation {entry['name']}: no block {missing}, not registered", file=sys.stderr)
                continue
            automation = AutomationCore.model_validate(entry)
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:
                    client.delete_automation(extra.id)
            else:
                client.create_automation(automation)
            done.append(automation.name)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefect_yaml", type=Path)
    parser.add_argument("--notify-url", help="webhook of the crash notifications (default: SUNDAY_NOTIFY_URL, "
                                             f"else the Secret block {SECRET_BLOCK})")
    parser.add_argument("--zombie-seconds", type=_seconds, default=os.environ.get("SUNDAY_ZOMBIE_SECONDS") or None,
                        help=f"{ZOMBIE}: seconds without a heartbeat before a run is marked Crashed (default: "
                             "SUNDAY_ZOMBIE_SECONDS, else prefect.yaml's `within`)")
    args = parser.parse_args(argv)
    entries = load(args.prefect_yaml)
    if args.zombie_seconds is not None:
        entries = with_zombie_window(entries, args.zombie_seconds)
    url = args.notify_url or _notify_url()
    if url:
        save_notify_block(url)
    names = register(entries)
    print(f"automations registered: {', '.join(names) or 'none'}")


if __name__ == "__main__":
    main()
