"""Runs and their environment: tag a run `env:PROJECT/ENV`, find the deploys paused for approval, reject them.

An emergency rollback answers the approval form of each `cd` of its environment that waits in
`pause_flow_run` (`resume_flow_run` with `approve: False`): the supported way to end the pause;
cancelling a paused run does not end it. The deploy then takes its normal rejection path.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.runtime import flow_run
from prefect.states import Running

from sunday_release.run_tags import env_tag, project_tag
from tasks._common import RETRY_DELAYS, progress

__all__ = ["PausedRun", "find_paused_deploys", "reject_deploy", "resume_timed_out_run", "tag_project", "tag_run"]


@dataclass(frozen=True)
class PausedRun:
    """A `cd` flow run waiting for approval."""

    id: str
    name: str

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


@task(name="tag-run", task_run_name="tag-run[{project}/{env}]", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=RETRY_DELAYS[:2])
def tag_run(project: str, env: str) -> str:
    """Add the tag `env:PROJECT/ENV` to the running flow run (its other tags are kept); return the tag."""
    return _add_tag(env_tag(project, env))


@task(name="tag-project", task_run_name="tag-project[{project}]", retries=2, retry_delay_seconds=RETRY_DELAYS[:2])
def tag_project(project: str) -> str:
    """Add the tag `project:NAME` to the running flow run (a CI run: the pipeline's metrics count its pushes).
    Prefect's default cache policy (inputs, run): a retried run finds its tag already there and reads the result."""
    return _add_tag(project_tag(project))


def _add_tag(tag: str) -> str:
    run_id = flow_run.get_id()
    if run_id is None:  # called outside a flow run: nothing to tag
        return tag
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(UUID(run_id))
        if tag not in current.tags:
            client.update_flow_run(current.id, tags=[*current.tags, tag])
    return tag


@task(name="find-paused-deploys", task_run_name="find-paused-deploys[{tag}]", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=RETRY_DELAYS[:2])
def find_paused_deploys(tag: str) -> list[PausedRun]:
    """The `cd` and `restore` flow runs tagged exactly `tag` that are paused (waiting for approval, holding their
    environment's slot), oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["cd", "restore"])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]), state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            limit=200)
    found = sorted((r for r in runs if tag in r.tags), key=lambda r: str(r.created))
    return [PausedRun(id=str(r.id), name=r.name) for r in found]


@task(name="reject-deploy", task_run_name="reject-deploy[{paused.name}]", cache_policy=NO_CACHE)
def reject_deploy(paused: PausedRun, reason: str) -> bool:
    """Answer the approval form of `paused` with `approve: False` and `reason`.

    Returns False when the run is no longer paused (approved, timed out or gone in the meantime).
    """
    try:
        resume_flow_run(UUID(paused.id), run_input={"approve": False, "reason": reason})
    except (NotPausedError, FlowPauseTimeout, ObjectNotFound):
        progress(f"{paused} is no longer waiting for approval: left as it is")
        return False
    progress(f"rejected the approval of {paused}: {reason}")
    return True


def resume_timed_out_run(reason: str) -> None:
    """After this run's approval pause timed out: put the run back to Running (forced), with `reason`.

    The server refuses a normal transition out of an expired pause (it substitutes its own "The flow
    was failed and never resumed", losing the deploy's reason) and refuses task runs of a paused run,
    so without this the undo tasks and the final Failed state of the deploy race the server's
    pause-expiration service. A plain client call, not a task: no task can start while the run is
    paused. Outside a flow run it does nothing.
    """
    run_id = flow_run.get_id()
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Running(message=reason), force=True)
