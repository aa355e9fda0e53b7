"""What `gc` removes: bounded retention of workspaces, run directories and check images (pure).

The pipeline leaves three kinds of things on a worker:

- workspaces, `SUNDAY_HOME/workspaces/FLOW_RUN_ID`: the checkout of a CI or CD run;
- run directories, `SUNDAY_HOME/runs/FLOW_RUN_ID`: reports, E2E screenshots and traces;
- check images, `sunday-ci/PROJECT-SERVICE:STAGE-COMMIT`: the test/lint stage images CI builds.

Each is kept for its retention (days since it was last written). What an unfinished flow run uses is
never removed, whatever its age: a paused deploy or a run that a Retry will resume needs its checkout.
The registry is never touched here (published images and content-key tags are the registry's own
retention: ECR lifecycle rules in Terraform, `docker-registry garbage-collect` locally).

Why a day at least: the tasks that cache a local path or image (clone, build-check-image, build-image)
keep their cached result for a day (`cache_expiration`), so a Retry never reuses what gc removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sunday_release.errors import InputError

__all__ = ["MIN_DAYS", "Item", "Retention", "docker_time", "plan"]

MIN_DAYS = 1.0  # the local caches' expiry (tasks/_common.py LOCAL_CACHE): gc never removes what a cache names

Kind = Literal["workspace", "run", "check-image"]


@dataclass(frozen=True)
class Retention:
    """Days each kind is kept after it was last written (each at least MIN_DAYS)."""

    workspace_days: float = 7
    run_days: float = 14
    check_image_days: float = 3

    def __post_init__(self) -> None:
        for flag, days in (("--workspace-days", self.workspace_days), ("--run-days", self.run_days),
                           ("--check-image-days", self.check_image_days)):
            if not days >= MIN_DAYS or days != days or days == float("inf"):
                raise InputError(f"{flag}: {days!r} is below the minimum of {MIN_DAYS:g} day (the local caches of "
                                 "clone and image builds last a day: a Retry must find what they name)")

    def days(self, kind: Kind) -> float:
        return {"workspace": self.workspace_days, "run": self.run_days, "check-image": self.check_image_days}[kind]


@dataclass(frozen=True)
class Item:
    """One thing a worker keeps: a directory (by path) or a check image (by reference)."""

    kind: Kind
    name: str  # the path, or the image reference
    modified: datetime  # aware; last write (directories) or creation (images)
    run_id: str | None = None  # the flow run it belongs to (workspaces, run directories)
    project: str | None = None  # the project (check images: their `sunday.project` label)


def docker_time(text: str) -> datetime:
    """An image's `Created` as Docker writes it (RFC 3339, up to nanoseconds), as an aware datetime."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if match is None:
        raise ValueError(f"not a Docker timestamp: {text!r}")
    base, fraction, zone = match.groups()
    return datetime.fromisoformat(f"{base}.{(fraction or '0')[:6].ljust(6, '0')}{'+00:00' if zone == 'Z' else zone}")


def plan(items: list[Item], retention: Retention, now: datetime, active_runs: set[str],
         project: str | None = None) -> tuple[list[Item], list[Item]]:
    """(remove, keep): items past their retention and not used by an unfinished run; `project` limits images."""
    remove: list[Item] = []
    keep: list[Item] = []
    for item in items:
        expired = now - item.modified > timedelta(days=retention.days(item.kind))
        in_use = item.run_id is not None and item.run_id in active_runs
        other_project = project is not None and item.kind == "check-image" and item.project != project
        scoped_out = project is not None and item.kind != "check-image"  # directories are not per project
        (remove if expired and not in_use and not other_project and not scoped_out else keep).append(item)
    return remove, keep
