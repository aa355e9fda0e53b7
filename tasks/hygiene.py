"""The tasks of `gc`: what the worker keeps, which flow runs are unfinished, and the removal."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType

from sunday_release.hygiene import Item, docker_time
from sunday_release.runner import run
from sunday_release.settings import Settings
from tasks._common import progress

__all__ = ["inventory", "remove_items", "unfinished_runs"]

FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
PAGE = 200


@task(name="unfinished-runs", cache_policy=NO_CACHE)
def unfinished_runs() -> set[str]:
    """The ids of every flow run on the server that is not in a final state (scheduled, running, paused…)."""
    flow_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=FINAL)))
    ids: set[str] = set()
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_flow_runs(flow_run_filter=flow_filter, limit=PAGE, offset=len(ids))
            ids |= {str(r.id) for r in page}
            if len(page) < PAGE:
                return ids


def _modified(path: Path) -> datetime:
    """The newest write to the directory or its top-level entries (a run writes its reports there)."""
    stamps = [path.stat().st_mtime] + [child.lstat().st_mtime for child in path.iterdir()]
    return datetime.fromtimestamp(max(stamps), UTC)


def _directories(root: Path, kind: str) -> list[Item]:
    if not root.is_dir():
        return []
    return [Item(kind, str(d), _modified(d), run_id=d.name)  # type: ignore[arg-type]
            for d in sorted(root.iterdir()) if d.is_dir() and not d.is_symlink()]


def _inspect_images(docker: str, references: list[str]) -> dict[str, dict[str, Any]]:
    """`docker image inspect` of each tag listed, by tag. A tag removed since it was listed (by another gc, a
    test's cleanup or a person) is gone, not an error: docker skips it ("No such image") and exits 1; any
    other error still fails."""
    if not references:
        return {}
    done = run([docker, "image", "inspect", *references], timeout=120, check=False)
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    if not done.ok and (not errors or not all("No such image" in line for line in errors)):
        done.check_returncode()
    wanted = set(references)
    found: dict[str, dict[str, Any]] = {}
    for image in json.loads(done.stdout or "[]"):
        for tag in image.get("RepoTags") or []:
            if tag in wanted:
                found[tag] = image
    return found


@task(name="inventory", cache_policy=NO_CACHE)
def inventory() -> list[Item]:
    """Workspaces, run directories (SUNDAY_HOME) and check images (`sunday-ci/*`) of this worker."""
    settings = Settings.from_env()
    items = _directories(settings.workspaces, "workspace") + _directories(settings.home / "runs", "run")
    listed = run([settings.docker, "image", "ls", "--filter", "reference=sunday-ci/*", "--format",
                  "{{.Repository}}:{{.Tag}}"], timeout=120)
    references = sorted({line for line in listed.stdout.split() if not line.endswith(":<none>")})
    for reference, image in _inspect_images(settings.docker, references).items():
        created = docker_time(image["Created"])
        labels = (image.get("Config") or {}).get("Labels") or {}
        items.append(Item("check-image", reference, created, project=labels.get("sunday.project")))
    progress(f"{len(items)} item(s) on this worker")
    return items


@task(name="remove", cache_policy=NO_CACHE)
def remove_items(items: list[Item]) -> list[str]:
    """Remove each item (a directory tree, or an image tag); return what could not be removed, with why."""
    settings = Settings.from_env()
    problems: list[str] = []
    for item in items:
        if item.kind == "check-image":
            done = run([settings.docker, "image", "rm", item.name], timeout=120, check=False)
            if not done.ok:
                problems.append(f"{item.name}: {done.stderr.strip()[:200]}")
            continue
        try:
            shutil.rmtree(item.name)
        except OSError as exc:
            problems.append(f"{item.name}: {exc}")
    progress(f"removed {len(items) - len(problems)} of {len(items)} item(s)")
    return problems
