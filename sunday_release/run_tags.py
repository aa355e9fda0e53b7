"""The environment tag of a run (`env:PROJECT/ENV`): the format, its parsing and the rejection reason (pure).

`cd`, `rollback` and `scale` tag their own flow run with the environment they act on, so an
emergency rollback finds the deploys of exactly its environment waiting for approval: a tag is
matched whole, and names cannot hold `/` or `:`, so `env:shop/prod` never matches `env:shop/prod2`
nor another project's `prod`.
"""

from __future__ import annotations

from sunday_release import validate
from sunday_release.errors import InputError

__all__ = ["PREFIX", "PROJECT_PREFIX", "ROLLBACK_REJECTION", "approval_timeout_message", "env_tag", "parse_env_tag",
           "parse_project_tag", "project_tag", "rejection_message", "rejection_reason"]

PREFIX = "env:"
PROJECT_PREFIX = "project:"  # CI runs: the project of the commit they build (the pipeline's own metrics)
ROLLBACK_REJECTION = "rejected by emergency rollback "


def env_tag(project: str, env: str) -> str:
    """The tag of runs acting on `(project, env)`.

    Raises:
        InputError: `project` or `env` is not a valid name.
    """
    return f"{PREFIX}{validate.name(project, '--project')}/{validate.name(env, '--env')}"


def project_tag(project: str) -> str:
    """The tag of a CI run of `project` (`project:NAME`)."""
    return f"{PROJECT_PREFIX}{validate.name(project, 'project')}"


def parse_project_tag(tag: str) -> str | None:
    """The project of a `project:NAME` tag; None for any other tag."""
    if not isinstance(tag, str) or not tag.startswith(PROJECT_PREFIX):
        return None
    name = tag[len(PROJECT_PREFIX):]
    try:
        return name if project_tag(name) == tag else None
    except InputError:
        return None


def parse_env_tag(tag: str) -> tuple[str, str] | None:
    """`(project, env)` of an environment tag; None for any other tag (a run's tags hold others too)."""
    if not isinstance(tag, str) or not tag.startswith(PREFIX):
        return None
    project, slash, env = tag[len(PREFIX):].partition("/")
    try:
        return (project, env) if slash and env_tag(project, env) == tag else None
    except InputError:
        return None


def rejection_reason(run_name: str, run_id: str) -> str:
    """What a deploy paused for approval is told when an emergency rollback rejects it."""
    return f"{ROLLBACK_REJECTION}{run_name} ({run_id})"


def rejection_message(reason: str) -> str:
    """Why a deploy was rejected at its approval: by a person in the UI, or by an emergency rollback."""
    if reason.startswith(ROLLBACK_REJECTION):
        return reason
    return f"rejected in the UI: {reason or 'no reason given'}"


def approval_timeout_message(timeout: int) -> str:
    """Why a deploy was rejected when nobody answered its approval within `approval_timeout` seconds."""
    return (f"approval timed out: nobody approved or rejected the deploy within {timeout}s (approval_timeout); "
            "traffic was not moved")
