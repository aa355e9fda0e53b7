"""Release policy: what the server says a project must pass; a commit's config may tighten it, never loosen it.

A project is registered once on the server (`sunday-release project add`): its trusted repository,
registry, default branch, release-tag pattern, environments (approval, backup, error budget) and
gates (vulnerability and misconfiguration severities, unfixed findings, DB age, allow-list terms).
An unregistered project gets `default_policy`: production needs approval and a backup, and the
vulnerability gate is on. `enforce` checks a commit's `sunday-release.yaml` against the policy and
returns the config the pipeline runs with: a key the commit left out takes the policy's value; a key
that would loosen it is a ConfigError naming the key. Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sunday_release import validate
from sunday_release.config import _BLOCKING, PipelineConfig, Regex, Severity
from sunday_release.errors import ConfigError, InputError
from sunday_release.preview import PreviewPolicy

__all__ = ["DEFAULT_RELEASE_TAGS", "EnvPolicy", "GatePolicy", "ProjectPolicy", "default_policy", "enforce",
           "parse_policy"]

DEFAULT_RELEASE_TAGS = r"^v\d+\.\d+\.\d+$"
_NAME = validate.NAME_PATTERN


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvPolicy(_Model):
    """What one environment requires of every deploy."""

    approval: bool = False
    backup: bool = False
    max_error_rate: float = Field(1.0, ge=0, le=1)
    analysis: bool = False
    """The rollout analysis may not be turned off (`analysis.enabled: false`) by a commit."""
    max_error_ratio: float = Field(1.0, ge=0, le=1)
    """The most `analysis.max_error_ratio` a commit may allow."""
    max_failure_limit: int = Field(100, ge=1, le=100)
    max_min_requests: int | None = Field(None, ge=1)
    """The most `analysis.failure_limit` and `analysis.min_requests` a commit may set: past them its analysis
    would never conclude."""
    database_url_secret: str | None = None
    """The Secret block of the environment's database URL, when it is not one of the project's own (`PROJECT-…`)."""


class GatePolicy(_Model):
    """The Trivy gates: a commit may block on more severities, never on fewer."""

    fail_on: list[Severity] = Field(default_factory=lambda: list(_BLOCKING))
    misconfig_fail_on: list[Severity] = Field(default_factory=lambda: list(_BLOCKING[:1]))
    ignore_unfixed: bool = False
    db_max_age_days: int = Field(3, ge=1, le=365)
    allow_from_commit: bool = True  # may the commit's scan.allow accept findings at all
    max_allow_days: int = Field(90, ge=1, le=3650)  # how far ahead an accepted finding may expire


class ProjectPolicy(_Model):
    """A project's registration on the server (a Prefect Variable `sunday-project-NAME`)."""

    project: Annotated[str, Field(pattern=_NAME)]
    repo: str | None = None  # the trusted repository; None: not registered (the defaults)
    registry: str | None = None  # None: the commit's (unregistered only)
    default_branch: str | None = None  # None: the commit's (unregistered only)
    release_tags: Regex = Field(DEFAULT_RELEASE_TAGS, min_length=1)
    environments: dict[Annotated[str, Field(pattern=_NAME)], EnvPolicy] = Field(
        default_factory=lambda: {"production": EnvPolicy(approval=True, backup=True, max_error_rate=0.01,
                                                         analysis=True, max_error_ratio=0.02,
                                                         max_failure_limit=5, max_min_requests=100)})
    only_registered_environments: bool = False  # registered projects: a commit may not invent environments
    scan: GatePolicy = Field(default_factory=GatePolicy)
    previews: PreviewPolicy = Field(default_factory=PreviewPolicy)
    """Pull requests' preview environments (`pr-N`): on, 5 at most, 72 h without a push, ports 18500-18599."""

    @property
    def registered(self) -> bool:
        return self.repo is not None


def default_policy(project: str) -> ProjectPolicy:
    """The policy of a project nobody registered: production approval, backup and the gates are on."""
    return ProjectPolicy(project=project)


def parse_policy(data: Any, where: str) -> ProjectPolicy:
    """Validate a stored or given policy (InputError naming `where` and the key)."""
    try:
        return ProjectPolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"] if p != "[key]") or "(top level)"
        raise InputError(f"{where}: {key}: {first['msg']}") from None


class _Refusal:
    """Collects the keys a commit tried to loosen."""

    def __init__(self, policy: ProjectPolicy) -> None:
        self.policy = policy
        self.problems: list[tuple[str, str]] = []

    def __call__(self, key: str, why: str) -> None:
        self.problems.append((key, why))

    def raise_if_any(self, file: str) -> None:
        if not self.problems:
            return
        whose = (f"the policy registered for project {self.policy.project!r} on the server" if self.policy.registered
                 else "the default policy (the project is not registered)")
        lines = [f"{key}: {why}" for key, why in self.problems]
        message = (f"a commit may tighten {whose}, never loosen it: " + lines[0].split(": ", 1)[1]
                   if len(lines) == 1 else
                   f"a commit may tighten {whose}, never loosen it; {len(lines)} keys:\n  " + "\n  ".join(lines))
        raise ConfigError(file, self.problems[0][0], message)


def enforce(config: PipelineConfig, policy: ProjectPolicy, file: str = "sunday-release.yaml",
            today: date | None = None) -> PipelineConfig:
    """The config to run with: the commit's, checked against `policy` and completed from it.

    Raises:
        ConfigError: the commit loosens the policy; names the (first) key and lists every one.
    """
    today = today or date.today()
    refuse = _Refusal(policy)
    data = config.model_dump()
    if policy.registered and config.project != policy.project:
        refuse("project", f"{config.project!r} is not the registered project {policy.project!r} of this repository")
    for key in ("registry", "default_branch", "release_tags"):
        wanted = getattr(policy, key)
        if wanted is None:
            continue
        if key in config.model_fields_set and getattr(config, key) != wanted:
            refuse(key, f"{getattr(config, key)!r} differs from the policy's {wanted!r} (only the server sets it)")
        data[key] = wanted

    for name, env in config.environments.items():
        required = policy.environments.get(name)
        if required is None:
            if policy.only_registered_environments:
                refuse(f"environments.{name}", f"{name!r} is not an environment registered for the project "
                                               f"({', '.join(policy.environments) or 'none'})")
            _check_database_secret(refuse, config.project, name, env.database_url_secret, None)
            continue
        out = data["environments"][name]
        _check_database_secret(refuse, config.project, name, env.database_url_secret, required)
        if env.database_url_secret is None and required.database_url_secret is not None:
            out["database_url_secret"] = required.database_url_secret
        if required.approval:
            if "approval" in env.model_fields_set and not env.approval:
                refuse(f"environments.{name}.approval", f"{name} requires approval; it cannot be turned off")
            out["approval"] = True
        if required.backup:
            if env.backup is False:
                refuse(f"environments.{name}.backup", f"{name} requires a verified backup before each deploy")
            out["backup"] = True
        if env.max_error_rate > required.max_error_rate:
            if "max_error_rate" in env.model_fields_set:
                refuse(f"environments.{name}.max_error_rate",
                       f"{env.max_error_rate} is above the allowed {required.max_error_rate}")
            out["max_error_rate"] = required.max_error_rate
        analysis = env.analysis
        if required.analysis and not analysis.enabled:
            refuse(f"environments.{name}.analysis.enabled", f"{name} requires the rollout analysis; it cannot be "
                                                            "turned off")
        if analysis.max_error_ratio > required.max_error_ratio:
            if "max_error_ratio" in analysis.model_fields_set:
                refuse(f"environments.{name}.analysis.max_error_ratio",
                       f"{analysis.max_error_ratio} is above the allowed {required.max_error_ratio}")
            out["analysis"]["max_error_ratio"] = required.max_error_ratio
        if analysis.failure_limit > required.max_failure_limit:
            refuse(f"environments.{name}.analysis.failure_limit",
                   f"{analysis.failure_limit} is above the allowed {required.max_failure_limit}")
        if required.max_min_requests is not None and analysis.min_requests > required.max_min_requests:
            refuse(f"environments.{name}.analysis.min_requests",
                   f"{analysis.min_requests} is above the allowed {required.max_min_requests}")

    gate, scan = policy.scan, config.scan
    for key in ("fail_on", "misconfig_fail_on"):
        missing = [s for s in getattr(gate, key) if s not in getattr(scan, key)]
        if missing and key in scan.model_fields_set:
            refuse(f"scan.{key}", f"must include {', '.join(missing)} (the gate cannot be weakened)")
        data["scan"][key] = sorted(set(getattr(scan, key)) | set(getattr(gate, key)), key=_BLOCKING_ORDER.index)
    if scan.ignore_unfixed and not gate.ignore_unfixed:
        refuse("scan.ignore_unfixed", "true would hide findings without a fix; the policy counts them")
    if scan.db_max_age_days > gate.db_max_age_days:
        if "db_max_age_days" in scan.model_fields_set:
            refuse("scan.db_max_age_days", f"{scan.db_max_age_days} is above the allowed {gate.db_max_age_days}")
        data["scan"]["db_max_age_days"] = gate.db_max_age_days
    if scan.allow and not gate.allow_from_commit:
        refuse("scan.allow", "this project accepts no findings from a commit (ask for an entry in the policy)")
    latest = today + timedelta(days=gate.max_allow_days)
    for i, entry in enumerate(scan.allow):
        if entry.expires > latest:
            refuse(f"scan.allow[{i}].expires", f"{entry.expires} is more than {gate.max_allow_days} days ahead "
                                                f"(latest {latest})")
    refuse.raise_if_any(file)
    return PipelineConfig.model_validate(data)


def _check_database_secret(refuse: _Refusal, project: str, env: str, block: str | None,
                           required: EnvPolicy | None) -> None:
    """A commit may name only its own project's Secret blocks (`PROJECT-…`) or the one the policy pins.

    The backup dumps the database the block names: a block of another project would put that project's
    data into this project's backups.
    """
    if block is None or block.startswith(f"{project}-"):
        return
    if required is not None and required.database_url_secret == block:
        return
    pinned = required.database_url_secret if required is not None else None
    refuse(f"environments.{env}.database_url_secret",
           f"{block!r} is not a Secret block of project {project!r} (name it {project}-…"
           + (f", or use the policy's {pinned!r})" if pinned else ")"))


_BLOCKING_ORDER: list[str] = ["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
