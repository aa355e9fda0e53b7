"""Project registrations on the Prefect server: the release policy of each project, owned by the server.

A registration is the Prefect Variable `sunday-project-NAME` holding a `ProjectPolicy` as JSON
(`sunday-release project add NAME --repo URL [--policy FILE]`). Runs look the policy up by the
repository they build — the one the deployment pins, never one an event names — so a commit that
calls itself another project gets that project's repository check, not its policy.
"""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client

from sunday_release.errors import InputError
from sunday_release.policy import ProjectPolicy, default_policy, parse_policy

__all__ = ["PREFIX", "find_policy", "list_policies", "read_policy", "remove_policy", "save_policy",
           "same_repository"]

PREFIX = "sunday-project-"


def _variable(project: str) -> str:
    return PREFIX + project


def save_policy(policy: ProjectPolicy) -> None:
    """Register (or replace) the policy of `policy.project`."""
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    value: Any = policy.model_dump(mode="json", exclude_none=True)
    with get_client(sync_client=True) as client:
        name = _variable(policy.project)
        if client.read_variable_by_name(name) is None:
            client.create_variable(VariableCreate(name=name, value=value, tags=["sunday-release", "policy"]))
        else:
            client.update_variable(VariableUpdate(name=name, value=value, tags=["sunday-release", "policy"]))


def read_policy(project: str) -> ProjectPolicy | None:
    """The registered policy of `project`, or None."""
    with get_client(sync_client=True) as client:
        found = client.read_variable_by_name(_variable(project))
    if found is None:
        return None
    return parse_policy(found.value, f"Prefect Variable {_variable(project)}")


def list_policies() -> list[ProjectPolicy]:
    """Every registered project, by name."""
    with get_client(sync_client=True) as client:
        found = [v for v in client.read_variables(limit=200) if v.name.startswith(PREFIX)]
    return sorted((parse_policy(v.value, f"Prefect Variable {v.name}") for v in found), key=lambda p: p.project)


def remove_policy(project: str) -> bool:
    """Unregister `project`; False when it was not registered."""
    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(_variable(project)) is None:
            return False
        client.delete_variable_by_name(_variable(project))
    return True


def same_repository(a: str, b: str) -> bool:
    """Two spellings of one repository: trailing `/`, `.git` and case of the host do not matter."""
    def norm(url: str) -> str:
        url = url.rstrip("/").removesuffix(".git")
        scheme, sep, rest = url.partition("://")
        if sep:
            host, slash, path = rest.partition("/")
            return f"{scheme.lower()}://{host.lower()}{slash}{path}"
        return url
    return norm(a) == norm(b)


def find_policy(repo: str, project: str) -> ProjectPolicy:
    """The policy for a build of `repo` whose config says `project`.

    Raises:
        InputError: `project` is registered for another repository, or `repo` for another project.
    """
    registered = list_policies()
    for policy in registered:
        if policy.repo is not None and same_repository(policy.repo, repo) and policy.project != project:
            raise InputError(f"sunday-release.yaml: project: {project!r}, but {repo} is registered as project "
                             f"{policy.project!r} (a commit cannot choose another project's policy)")
    for policy in registered:
        if policy.project == project:
            if policy.repo is not None and not same_repository(policy.repo, repo):
                raise InputError(f"project {project!r} is registered for the repository {policy.repo}, not {repo} "
                                 "(only the registered repository may build it)")
            return policy
    return default_policy(project)
