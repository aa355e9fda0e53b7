"""The gc flow: bounded retention of this worker's workspaces, run directories and check images.

What is removed and why is decided by `sunday_release.hygiene.plan`; this flow only sequences the tasks:
ask the server which runs are unfinished, list what the worker keeps, remove what is past its retention.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow

from sunday_release import validate
from sunday_release.hygiene import Retention, plan
from tasks._common import progress
from tasks.hygiene import inventory, remove_items, unfinished_runs

__all__ = ["gc"]


@flow(name="gc", log_prints=False)
def gc(workspace_days: float = 7, run_days: float = 14, check_image_days: float = 3, project: str | None = None,
       dry_run: bool = False) -> dict[str, Any]:
    """Remove workspaces, run directories and check images past their retention (days), unless a run uses them.

    `project` limits the removal to that project's check images (directories are not per project).
    `dry_run` lists what would go and removes nothing.
    """
    retention = Retention(workspace_days, run_days, check_image_days)  # InputError (exit 2) below the minimum
    if project is not None:
        validate.name(project, "--project")
    active = unfinished_runs()
    remove, keep = plan(inventory(), retention, datetime.now(UTC), active, project)
    in_use = sorted(i.name for i in keep if i.run_id in active)
    problems = [] if dry_run else remove_items(remove)
    progress(f"gc: {len(remove)} to remove{' (dry run)' if dry_run else ''}, {len(keep)} kept "
             f"({len(in_use)} used by unfinished runs)")
    return {"dry_run": dry_run, "removed" if not dry_run else "would_remove": [i.name for i in remove],
            "kept": len(keep), "in_use": in_use, "problems": problems,
            "retention_days": {"workspace": retention.workspace_days, "run": retention.run_days,
                               "check_image": retention.check_image_days}}
