"""The pipeline config, `sunday-release.yaml` at the root of an application repository.

Loaded and validated once at the entry point (`load_config`), then passed down as a frozen
pydantic model. Every key is documented in docs/config.md.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sunday_release import validate
from sunday_release.errors import ConfigError, InputError

__all__ = [
    "CONFIG_FILE",
    "DEV_KINDS",
    "Checks",
    "DevStack",
    "Environment",
    "PipelineConfig",
    "ScanPolicy",
    "Service",
    "SmokeCheck",
    "check_paths",
    "load_config",
    "parse_config",
]

CONFIG_FILE = "sunday-release.yaml"
STEPS = ("test", "lint", "typecheck")

Name = Annotated[str, Field(pattern=validate.NAME_PATTERN)]  # environments, project, services
Severity = Literal["UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"]
Platform = Literal["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le", "linux/s390x"]
_DEFAULT_PLATFORMS: tuple[Platform, ...] = ("linux/amd64", "linux/arm64")
_BLOCKING: tuple[Severity, ...] = ("CRITICAL", "HIGH")
Argv = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


# host[:port] and an optional lowercase namespace path: `ghcr.io/org`, `localhost:5000`, `123.dkr.ecr.x.amazonaws.com`
_REGISTRY = (r"^(?:localhost|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)+"
             r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


def _registry(value: str) -> str:
    if not re.fullmatch(_REGISTRY, value):
        raise ValueError("a registry is a host with an optional namespace (`ghcr.io/org`, `localhost:5000`): "
                         "no scheme, tag, digest, upper case or white space")
    return value


def _image_ref(value: str) -> str:
    """An image reference the docker CLI would take (parsed by the docker library's own parser)."""
    from sunday_release.registry import parse_image_ref

    try:
        parse_image_ref(value)
    except InputError as exc:
        raise ValueError(str(exc)) from None
    return value


def _relative_path(value: str) -> str:
    if not value or value.startswith("/") or ".." in value.split("/") or re.search(r"[\x00-\x1f\x7f]", value):
        raise ValueError(f"expected a path relative to the repository root, without '..' or control characters; "
                         f"got {value!r}")
    return value


def _route(value: str) -> str:
    if not validate.is_route(value):
        raise ValueError(validate.ROUTE_RULE)
    return value


def _variable_name(value: str) -> str:
    if not validate.is_env_key(value):
        raise ValueError("expected a variable name: letters, digits and '_', not starting with a digit")
    return value


def _one_line(value: str) -> str:
    if re.search(r"[\n\r\x00]", value):
        raise ValueError("expected one line (no newline, carriage return or NUL)")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


_SECRET_REF = re.compile(r"aws-sm://[A-Za-z0-9/_+=.@-]{1,512}(#[A-Za-z0-9_.-]{1,128})?|prefect-secret://[a-z0-9][a-z0-9-]{0,127}")
# what the targets set themselves in a container's environment: a secret may not stand in for them
RESERVED_VARIABLES = frozenset({"APP_VERSION", "DATABASE_URL", "SUNDAY_PROJECT", "SUNDAY_ENV", "SUNDAY_COLOR"})


def _secret_ref(value: str) -> str:
    if not _SECRET_REF.fullmatch(value):
        raise ValueError("expected a secret reference: aws-sm://NAME or aws-sm://NAME#key (AWS Secrets Manager; the "
                         "key of a JSON secret) or prefect-secret://BLOCK (a Prefect Secret block)")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_path)]
SecretRef = Annotated[str, AfterValidator(_secret_ref)]
Regex = Annotated[str, AfterValidator(_regex)]
Route = Annotated[str, AfterValidator(_route)]  # becomes an nginx `location` and an Ingress path
Variables = dict[Annotated[str, AfterValidator(_variable_name)], Annotated[str, AfterValidator(_one_line)]]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Checks(_Model):
    """What CI runs inside the image built from the Dockerfile's `stage`."""

    stage: str = Field("test", min_length=1)
    test: Argv | None = None
    lint: Argv | None = None
    typecheck: Argv | None = None
    timeout: int = Field(900, ge=10, le=7200)
    reuse: bool = True  # a step that passed in the same check image, with the same command, is not run again

    def steps(self) -> dict[str, list[str]]:
        """The configured steps, in pipeline order, with their argv."""
        return {step: argv for step in STEPS if (argv := getattr(self, step)) is not None}


class Service(_Model):
    """One deployable service: where it is built from and how it is checked and probed."""

    context: RelativePath
    dockerfile: RelativePath = "Dockerfile"
    port: int = Field(ge=1, le=65535)
    health_path: str = Field("/healthz", pattern=r"^/")
    metrics_path: str | None = Field(None, pattern=r"^/[A-Za-z0-9._~/-]{0,200}$")
    """Where the service serves Prometheus metrics on its port (`/metrics`): the platform's Prometheus scrapes
    every replica there, labelled project, env, service and color (docs/monitoring.md). None: not scraped."""
    platforms: list[Platform] = Field(default_factory=lambda: list(_DEFAULT_PLATFORMS), min_length=1)
    build_args: Variables = Field(default_factory=dict)
    target: str | None = Field(None, min_length=1)
    route: Route | None = None
    migrate: Argv | None = None
    env: Variables = Field(default_factory=dict)
    secrets: dict[Annotated[str, AfterValidator(_variable_name)], SecretRef] = Field(default_factory=dict)
    """Environment variables whose values come from a secrets manager at deploy time (docs/secrets.md): only the
    references are in the config, the values reach the containers and nothing else."""
    checks: Checks = Field(default_factory=Checks)

    @model_validator(mode="after")
    def _secrets_stand_alone(self) -> Service:
        both = sorted(set(self.secrets) & set(self.env))
        if both:
            raise ValueError(f"{', '.join(both)}: in both `env` and `secrets` (a variable has one source)")
        reserved = sorted(set(self.secrets) & RESERVED_VARIABLES)
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: set by the pipeline itself, not a secret of the config")
        return self

    @field_validator("platforms")
    @classmethod
    def _unique_platforms(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("platforms must not repeat")
        return value


def _promql_template(value: str) -> str:
    """A PromQL query of one number per evaluation, with `$selector` where the label matchers of the color being
    judged go (and `$window` for the analysis window)."""
    if "$selector" not in value:
        raise ValueError('the query must use $selector (the label matchers of the color being judged), e.g. '
                         'sum(rate(http_requests_total{$selector, status=~"5.."}[$window]))')
    if "\n" in value.strip() or len(value) > 2000:
        raise ValueError("one line of at most 2000 characters")
    return value.strip()


PromQLTemplate = Annotated[str, AfterValidator(_promql_template)]
Duration = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,3}[sm]$")]  # a PromQL range: 30s, 2m


class AnalysisQuery(_Model):
    """One more measurement of the analysis: a query's value above `max` is a failed measurement."""

    name: Name
    query: PromQLTemplate
    max: float


class Analysis(_Model):
    """How a release is judged from Prometheus (the platform's; SUNDAY_PROMETHEUS_URL): Argo Rollouts' analysis.

    Every `interval` seconds each query is evaluated over the last `window` on the color being judged, the new
    one: once during smoke (before traffic moves: only the smoke requests), then through the watch window on
    live traffic. A measurement fails when a value is above its maximum; `failure_limit` failed measurements in a
    row roll the release back. A measurement with fewer than `min_requests` requests in the window is
    inconclusive and breaks no run. Without a reachable Prometheus the sampled requests of the router decide
    (`max_error_rate`), and the rollout artifact says so."""

    enabled: bool = True
    interval: float = Field(2, ge=0.5, le=60)
    window: Duration = "30s"
    failure_limit: int = Field(2, ge=1, le=100)
    min_requests: int = Field(20, ge=1)
    max_error_ratio: float = Field(0.02, ge=0, le=1)
    """The 5xx share of the color's requests in the window."""
    max_p95_seconds: float = Field(1.0, gt=0)
    """The color's p95 latency, absolute."""
    max_p95_increase_seconds: float | None = Field(0.2, gt=0)
    """The color's p95 above the previous live color's, measured over the window before the switch (a baseline;
    none when the previous color had too little traffic). None: no comparison."""
    max_restarts: int = Field(0, ge=0)
    """Process restarts of the color's replicas in the window (process_start_time_seconds changing)."""
    queries: list[AnalysisQuery] = Field(default_factory=list, max_length=20)


class Environment(_Model):
    """A place the pipeline deploys to."""

    target: Literal["docker", "kubernetes"] = "docker"
    approval: bool = False
    replicas: dict[Name, Annotated[int, Field(ge=0, le=100)]] = Field(default_factory=dict)
    port: int | None = Field(None, ge=1, le=65535)
    db_port: int | None = Field(None, ge=1, le=65535)
    backup: bool | None = None
    backup_keep: int = Field(7, ge=1, le=1000)
    health_timeout: int = Field(120, ge=1, le=3600)
    health_interval: int = Field(10, ge=1, le=3600)
    """Seconds between Docker's own health checks of a live replica (docker target; its image's HEALTHCHECK). Each
    check is a process started in the container, about 0.1 s of CPU with the engine's share, paid by every replica
    all the time. Readiness never waits for it: a new replica is probed from the host."""
    watch_seconds: float = Field(10, ge=0, le=3600)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    analysis: Analysis = Field(default_factory=Analysis)
    drain_seconds: float = Field(2, ge=0, le=600)
    keep_previous_hours: float = Field(24, ge=0)
    approval_timeout: int = Field(3600, ge=10)
    kube_context: str | None = None
    database_url_secret: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,99}$")
    """The Prefect Secret block holding the URL of the environment's database (kubernetes target: what the
    backup dumps). The docker target backs up its own PostgreSQL and ignores it."""

    def needs_backup(self, name: str) -> bool:
        """Production backs up unless told not to; other environments only when told to."""
        return self.backup if self.backup is not None else name == "production"


class AllowedFinding(_Model):
    """A finding the team accepted, with why and until when."""

    id: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    expires: date


class ScanPolicy(_Model):
    """What makes the Trivy gates fail."""

    fail_on: list[Severity] = Field(default_factory=lambda: list(_BLOCKING))
    misconfig_fail_on: list[Severity] = Field(default_factory=lambda: list(_BLOCKING[:1]))
    ignore_unfixed: bool = False
    allow: list[AllowedFinding] = Field(default_factory=list)
    skip_dirs: list[str] = Field(default_factory=list)
    db_max_age_days: int = Field(3, ge=1, le=365)
    """The image scan fails when the Trivy vulnerability DB was updated longer ago than this."""


class SmokeCheck(_Model):
    """One HTTP probe run against a fresh color before and after traffic moves to it."""

    service: Name
    path: str = Field(pattern=r"^/")
    status: int = Field(200, ge=100, le=599)
    json_field: str | None = None
    equals: str | int | bool | None = None
    budget_ms: int = Field(1000, ge=1)




def _bucket(value: str) -> str:
    """An S3 bucket name by AWS's rules: 3-63 of a-z 0-9 . -, a letter or digit at each end, no `..`."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value) or ".." in value or value.startswith("xn--"):
        raise ValueError("expected an S3 bucket name: 3 to 63 of a-z, 0-9, '.' and '-', starting and ending with a "
                         "letter or digit, without '..'")
    return value


_HOST_PORT = r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})?:[0-9]{1,5}$"


class DevPostgres(_Model):
    """PostgreSQL 15: a superuser `dev` with a password of its own and this database (`DATABASE_URL`)."""

    database: str = Field("dev", pattern=r"^[a-z_][a-z0-9_]{0,62}$")


class DevRedis(_Model):
    """Redis 7 with a password of its own (`REDIS_URL`); its data is an append-only file."""


class DevS3(_Model):
    """An S3 endpoint (moto's server) with these buckets, made on every `dev up` (`AWS_ENDPOINT_URL_S3`)."""

    buckets: list[Annotated[str, AfterValidator(_bucket)]] = Field(default_factory=list, max_length=100)


class DevPrometheus(_Model):
    """Prometheus 2 scraping itself and `targets` (host:port, `/metrics`; the host's own services are
    `host.docker.internal:PORT`) every 15 s (`PROMETHEUS_URL`)."""

    targets: list[Annotated[str, Field(pattern=_HOST_PORT)]] = Field(default_factory=list, max_length=50)


class DevMail(_Model):
    """An SMTP server that keeps every message in a Maildir instead of sending it (`SMTP_HOST`, `SMTP_PORT`)."""


class DevStack(_Model):
    """What the application needs on a developer's machine (`sunday-release dev up`, docs/dev-stack.md): one
    container of each declared kind. A kind written without settings (`redis:`) is declared with its defaults."""

    postgres: DevPostgres | None = None
    redis: DevRedis | None = None
    s3: DevS3 | None = None
    prometheus: DevPrometheus | None = None
    mail: DevMail | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_kind_is_declared(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {kind: {} if value is None and kind in DEV_KINDS else value for kind, value in data.items()}
        return data

    @model_serializer(mode="wrap")
    def _declared_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the declared kinds: a kind dumped as None would be declared when the dump is read back (as the
        release record's config is)."""
        return {kind: spec for kind, spec in handler(self).items() if spec is not None}

    @model_validator(mode="after")
    def _something(self) -> DevStack:
        if not self.kinds():
            raise ValueError(f"declares no dependency: expected one or more of {', '.join(DEV_KINDS)}")
        return self

    def kinds(self) -> dict[str, BaseModel]:
        """The declared kinds and their settings, in the order of DEV_KINDS."""
        return {kind: spec for kind in DEV_KINDS if (spec := getattr(self, kind)) is not None}


DEV_KINDS = ("postgres", "redis", "s3", "prometheus", "mail")


def _branch(name: str) -> str:
    """A branch name git and the pipeline take (`main`, `release/2.x`), not a full ref or an option."""
    try:
        validate.ref(f"refs/heads/{name}")
    except InputError:
        raise ValueError(f"not a valid branch name: {name!r}") from None
    if name.startswith("refs/"):
        raise ValueError(f"a branch name, not a full ref: {name!r}")
    return name


Branch = Annotated[str, AfterValidator(_branch)]


class PipelineConfig(_Model):
    """The whole of sunday-release.yaml."""

    project: Name
    registry: Annotated[str, AfterValidator(_registry)] = "localhost:5000"
    """Where images are pushed: a host (`ghcr.io`, `localhost:5000`) and an optional namespace (`ghcr.io/org`);
    no scheme, tag or digest."""
    base_image: Annotated[str, AfterValidator(_image_ref)] = Field("localhost:5000/base/debian:bookworm",
                                                                  min_length=1)
    """The image every Dockerfile builds FROM: any reference the docker CLI takes (`debian:bookworm-slim` is Docker
    Hub's `library/debian`)."""
    default_branch: str = Field("main", min_length=1)
    ci_branches: list[Branch] | None = Field(None, max_length=64)
    """Branches whose pushes run CI (the webhook receiver's rule); unset: the default branch and `develop`. The
    default branch always does, and only it deploys to staging; pull requests run CI whatever their branches."""
    release_tags: Regex = Field(r"^v\d+\.\d+\.\d+$", min_length=1)
    services: dict[Name, Service] = Field(min_length=1)
    environments: dict[Name, Environment] = Field(
        default_factory=lambda: {"staging": Environment(), "production": Environment(approval=True)}
    )
    scan: ScanPolicy = Field(default_factory=ScanPolicy)
    smoke: list[SmokeCheck] = Field(default_factory=list)
    dev: DevStack | None = None
    """The local development stack (`sunday-release dev up`): None, the application declares none."""

    def branches_with_ci(self) -> tuple[str, ...]:
        """The branches whose pushes run CI: `ci_branches` (default `develop`) and the default branch."""
        return tuple(dict.fromkeys([self.default_branch, *(self.ci_branches if self.ci_branches is not None
                                                           else ["develop"])]))

    @model_validator(mode="after")
    def _known_services(self) -> PipelineConfig:
        for i, check in enumerate(self.smoke):
            if check.service not in self.services:
                raise ValueError(f"smoke[{i}].service: {check.service!r} is not one of the services "
                                 f"({', '.join(self.services)})")
        for env_name, env in self.environments.items():
            for svc in env.replicas:
                if svc not in self.services:
                    raise ValueError(f"environments.{env_name}.replicas: {svc!r} is not one of the "
                                     f"services ({', '.join(self.services)})")
        return self


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _expected(err: Any) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        parent = _parent_model(loc[:-1])
        if parent is not None and not parent.model_fields:
            return f"unknown key {loc[-1]!r}; it takes none"
        if parent is not None:
            return f"unknown key {loc[-1]!r}; expected one of: {', '.join(parent.model_fields)}"
        return f"unknown key {loc[-1]!r}"
    if err["type"] == "missing":
        return "required key is missing"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {shown})"


def _parent_model(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: Any = PipelineConfig
    i = 0
    while i < len(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(loc[i]))
        if field is None:
            return None
        ann = field.annotation
        origin = getattr(ann, "__origin__", None)
        if origin in (dict, list):
            model = ann.__args__[-1]  # type: ignore[union-attr]
            i += 2  # skip the key or the index
            continue
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = args[0] if args else ann
        i += 1
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def parse_config(data: Any, file: str = CONFIG_FILE) -> PipelineConfig:
    """Validate already-parsed YAML; raise ConfigError naming every problem found."""
    if not isinstance(data, dict):
        raise ConfigError(file, "", f"expected a mapping at the top level, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [f"{_format_loc(tuple(e['loc'])) or '(top level)'}: {_expected(e)}" for e in errors]
        first = errors[0]
        path = _format_loc(tuple(first["loc"]))
        if len(lines) == 1:
            raise ConfigError(file, path, _expected(first)) from None
        raise ConfigError(file, path, f"{len(lines)} problems:\n  " + "\n  ".join(lines)) from None


def load_config(repo_root: str | Path, *, check_files: bool = True) -> PipelineConfig:
    """Read and validate `sunday-release.yaml` of the repository at `repo_root`.

    Args:
        repo_root: the checked-out application repository.
        check_files: also check that each service's build context and Dockerfile exist.
    """
    path = Path(repo_root) / CONFIG_FILE
    file = str(path)
    if not path.is_file():
        raise ConfigError(file, "", f"no {CONFIG_FILE} at the root of the repository")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(file, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "not UTF-8 text") from None
    config = parse_config(data, file)
    if check_files:
        check_paths(config, repo_root, file)
    return config


def check_paths(config: PipelineConfig, repo_root: str | Path, file: str = CONFIG_FILE) -> None:
    """Raise ConfigError for a service whose build context or Dockerfile is not in the repository.

    Paths are resolved with their symlinks (`validate.inside`): a Dockerfile that is, or whose directory
    passes through, a symlink leading out of the repository is refused (`docker build -f` would read it).
    """
    root = Path(repo_root).resolve()
    for name, svc in config.services.items():
        try:
            context = validate.inside(root, svc.context, "")
        except InputError as exc:
            raise ConfigError(file, f"services.{name}.context", str(exc)) from None
        if not context.is_dir():
            raise ConfigError(file, f"services.{name}.context",
                              f"expected a directory in the repository; {svc.context!r} does not exist")
        try:
            dockerfile = validate.inside(root, f"{svc.context}/{svc.dockerfile}", "")
        except InputError as exc:
            raise ConfigError(file, f"services.{name}.dockerfile", str(exc)) from None
        if not dockerfile.is_file():
            raise ConfigError(file, f"services.{name}.dockerfile",
                              f"expected a Dockerfile at {svc.context}/{svc.dockerfile}; it does not exist")
        stages = re.findall(r"(?im)^\s*FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(errors="replace"))
        if svc.checks.steps() and svc.checks.stage not in stages:
            raise ConfigError(file, f"services.{name}.checks.stage",
                              f"expected a stage of {svc.context}/{svc.dockerfile} "
                              f"({', '.join(stages) or 'it names none'}); got {svc.checks.stage!r}")
