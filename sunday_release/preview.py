"""Preview environments: every pull request's own running copy, `pr-N` of its project (docs/previews.md).

Pure: the server's preview policy (`PreviewPolicy`, part of a project's registration), the environment a preview
deploys to (built from the commit's base environment, with what bounds the cost taken from the policy), the record
of a preview, and the decisions — which host ports a new preview takes, which previews the TTL and the cap stop.
No Prefect, no I/O.

A commit cannot loosen any of it: its config has no `previews` key, and what it says of its base environment
(health timeouts, smoke, watch window) shapes only its own preview; the target, the ports, the replicas, the cap
and the TTL are the policy's.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sunday_release import validate
from sunday_release.config import Environment, PipelineConfig
from sunday_release.errors import InputError

__all__ = ["PREVIEW_ENV", "PreviewPolicy", "PreviewRecord", "choose_ports", "expired", "images_to_delete",
           "is_preview_env", "over_cap", "preview_config", "preview_env", "preview_host", "preview_number",
           "preview_url"]

PREVIEW_ENV = re.compile(r"^pr-([1-9][0-9]{0,8})$")
PreviewState = Literal["deploying", "live", "failed", "stopped"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreviewPolicy(_Model):
    """How a project's pull requests get previews (the server's word: `sunday-release project add --policy`)."""

    enabled: bool = True
    max_active: int = Field(5, ge=1, le=100)
    """Previews running at once; a new one beyond it stops the one whose pull request was pushed to longest ago."""
    ttl_hours: float = Field(72, gt=0, le=24 * 365)
    """A preview whose pull request got no push for this long is torn down (`previews-gc`)."""
    ports: tuple[int, int] = (18500, 18599)
    """The host ports previews take (docker target): two each, the router's and its database's."""
    base: str = Field("staging", pattern=validate.NAME_PATTERN)
    """The environment of the commit's config a preview is shaped after (health, watch, smoke); defaults when the
    config has none."""
    target: Literal["docker", "kubernetes"] = "docker"
    """Where previews run: the docker target of the deploying worker's machine, or a namespace `sunday-pr-N` per
    preview in the cluster of `kube_context` (infra/k8s/preview: the staging overlay, one pod per service)."""
    kube_context: str | None = Field(None, min_length=1, max_length=253)
    """kubernetes: the kubeconfig context of the previews' cluster; None: the worker's own (its pod's
    ServiceAccount)."""
    host: str = Field("pr-{number}.preview.sunday.com", pattern=r"^[a-z0-9{}.-]+$", max_length=200)
    """kubernetes: the Ingress host of a preview (`{number}`: the pull request's); its URL is https://HOST."""
    e2e: bool = True
    """Run the E2E flow against each preview (status `sunday-release/e2e`)."""
    e2e_vus: int = Field(2, ge=1, le=1000)
    e2e_duration: str = Field("10s", pattern=r"^[1-9][0-9]{0,4}[smh]$")

    @model_validator(mode="after")
    def _range(self) -> PreviewPolicy:
        if "{number}" not in self.host:
            raise ValueError(f"host: {self.host!r} must contain {{number}} (each preview has its own)")
        first, last = self.ports
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"ports: [{first}, {last}] is not a range of unprivileged ports (first <= last)")
        if last - first + 1 < 2 * self.max_active:
            raise ValueError(f"ports: [{first}, {last}] holds {(last - first + 1) // 2} previews, fewer than "
                             f"max_active {self.max_active} (each takes two ports)")
        return self


class PreviewRecord(_Model):
    """One preview as the platform keeps it (a Prefect Variable `sunday-preview-PROJECT-N`)."""

    project: str = Field(pattern=validate.NAME_PATTERN)
    number: int = Field(ge=1, le=999_999_999)
    sha: str = Field(pattern=r"^[0-9a-f]{40}$")
    ports: tuple[int, int] | None = None
    state: PreviewState = "deploying"
    url: str | None = None
    created: datetime
    pushed: datetime
    """When the pull request was last pushed to (the TTL counts from it)."""
    reason: str = ""
    flow_run_id: str | None = None
    target: Literal["docker", "kubernetes"] = "docker"
    registry: str | None = None
    """Where its images are (`pr-N-COMMIT` of PROJECT/SERVICE): what closing deletes."""
    services: tuple[str, ...] = ()
    repo: str | None = None
    """The repository whose pull request it is (the deployment's pinned one)."""
    host: str | None = None
    """docker: the machine that runs it; only a worker there can stop it."""

    @property
    def env(self) -> str:
        return preview_env(self.number)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def preview_env(number: int) -> str:
    """The environment of pull request `number`: `pr-N`."""
    if not 1 <= number <= 999_999_999:
        raise InputError(f"pull request number: {number} is not between 1 and 999999999")
    return f"pr-{number}"


def preview_number(env: str) -> int | None:
    """N of `pr-N`; None for any other environment."""
    match = PREVIEW_ENV.match(env)
    return int(match.group(1)) if match else None


def is_preview_env(env: str) -> bool:
    return preview_number(env) is not None


def choose_ports(policy: PreviewPolicy, taken: set[int]) -> tuple[int, int]:
    """The first pair of adjacent ports of the policy's range that nothing holds: (router, database).

    Raises:
        InputError: every pair of the range is taken (by previews or anything else on the machine).
    """
    first, last = policy.ports
    for port in range(first, last, 2):
        if port not in taken and port + 1 not in taken:
            return port, port + 1
    raise InputError(f"previews.ports: every port of [{first}, {last}] is taken; widen the range in the "
                     f"project's policy or close pull requests")


def preview_url(policy: PreviewPolicy, number: int) -> str:
    """kubernetes: the preview's URL, from the policy's Ingress host."""
    return f"https://{preview_host(policy, number)}"


def preview_host(policy: PreviewPolicy, number: int) -> str:
    return policy.host.replace("{number}", str(number))


def preview_config(config: PipelineConfig, policy: PreviewPolicy, number: int,
                   ports: tuple[int, int] | None) -> PipelineConfig:
    """The commit's config with one more environment, `pr-N`: shaped after `policy.base` of the commit (or the
    defaults), with one replica of each service, no approval, no backup, and the policy's target, cluster and
    (docker) ports. Every other environment is dropped: a preview run cannot touch them.

    Raises:
        InputError: a docker preview without ports.
    """
    base = config.environments.get(policy.base) or Environment()
    if policy.target == "docker" and ports is None:
        raise InputError("a docker preview needs its host ports")
    data = base.model_dump()
    data |= {"target": policy.target, "kube_context": policy.kube_context if policy.target == "kubernetes" else None,
             "approval": False, "backup": False, "replicas": {name: 1 for name in config.services},
             "database_url_secret": None, "port": ports[0] if ports else None, "db_port": ports[1] if ports else None}
    env = Environment.model_validate(data)
    return config.model_copy(update={"environments": {preview_env(number): env}})


def expired(records: list[PreviewRecord], ttl_hours: float, now: datetime | None = None) -> list[PreviewRecord]:
    """The previews not stopped whose pull request got no push for `ttl_hours`, oldest first."""
    now = now or datetime.now(UTC)
    limit = timedelta(hours=ttl_hours)
    return sorted((r for r in records if r.state != "stopped" and now - r.pushed >= limit), key=lambda r: r.pushed)


def over_cap(records: list[PreviewRecord], max_active: int, incoming: int) -> list[PreviewRecord]:
    """The previews to stop so that pull request `incoming` can run with at most `max_active` at once: the least
    recently pushed first. `incoming`'s own preview never counts against itself."""
    running = sorted((r for r in records if r.state != "stopped" and r.number != incoming), key=lambda r: r.pushed)
    excess = len(running) + 1 - max_active
    return running[:excess] if excess > 0 else []


def images_to_delete(tag_digests: dict[str, str], number: int) -> set[str]:
    """The manifests of one registry repository that only pull request `number` refers to: pointed at by one of
    its `pr-N-COMMIT` tags and by no other tag but content-key ones (`ck-…`, a build cache, not a reference).
    An image the PR shares with a release, another PR or a branch build stays."""
    ours = f"pr-{number}-"
    tagged: dict[str, list[str]] = {}
    for tag, digest in tag_digests.items():
        tagged.setdefault(digest, []).append(tag)
    return {digest for digest, tags in tagged.items()
            if any(t.startswith(ours) for t in tags) and all(t.startswith((ours, "ck-")) for t in tags)}
