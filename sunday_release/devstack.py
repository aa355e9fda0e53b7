"""The local development stack's pure part: what runs for a project (`plan`), what to do about what is there
(`decide`), and what the application is told (`variables`, `env_file_text`).

Every container and volume is named `sunday-dev-PROJECT-KIND` and labelled `sunday.dev=PROJECT`: two projects
never share one, and `dev down` removes only what carries its project's label. The docker side is
adapters/devstack.py; docs/dev-stack.md tells the whole story.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

from pydantic import SecretStr

from sunday_release.config import DevPostgres, DevPrometheus, DevS3, DevStack

__all__ = [
    "ENV_FILE",
    "ENV_FILE_HEADER",
    "KIND_LABEL",
    "PROJECT_LABEL",
    "SPEC_LABEL",
    "DevService",
    "Endpoint",
    "decide",
    "env_file_text",
    "is_our_env_file",
    "plan",
    "run_argv",
    "server_url",
    "urls",
    "variables",
]

PROJECT_LABEL = "sunday.dev"  # = PROJECT, on every container, volume and image of the dev stack
KIND_LABEL = "sunday.dev.kind"  # = postgres, redis, ...
SPEC_LABEL = "sunday.dev.spec"  # what the container was started with (DevService.spec): changed, it is replaced
ENV_FILE = ".env.dev"
ENV_FILE_HEADER = "# sunday-release dev:"
# S3 (moto) takes any key pair: these only satisfy clients that insist on having one
_S3_ACCESS_KEY = "sunday-dev"
_S3_REGION = "us-east-1"


@dataclass(frozen=True)
class DevService:
    """One dependency's container: its image (infra/dev/KIND), port inside, data volume and arguments."""

    project: str
    kind: str
    port: int  # the port it listens on inside its container; the host's is free and chosen by Docker
    volume: str | None  # the named volume on /data, or None when it keeps nothing on disk (s3: moto's memory)
    args: tuple[str, ...] = ()
    host_gateway: bool = False  # host.docker.internal resolves to the host (Prometheus scraping its services)
    password: bool = False  # it makes a password of its own on a new volume, in /data/password
    settings: tuple[tuple[str, str], ...] = ()  # what the application is told besides the URL (Endpoint.settings)

    @property
    def container(self) -> str:
        return f"sunday-dev-{self.project}-{self.kind}"

    def spec(self, image: str) -> str:
        """A digest of how the container is started from `image`: a container with another one is replaced."""
        started = [image, self.port, self.volume, list(self.args), self.host_gateway]
        return hashlib.sha256(json.dumps(started).encode()).hexdigest()[:16]


_PORTS = {"postgres": 5432, "redis": 6379, "s3": 5000, "prometheus": 9090, "mail": 1025}


def plan(project: str, stack: DevStack) -> tuple[DevService, ...]:
    """The containers of `stack` for `project`, in the order of the config's kinds."""
    services = []
    for kind, spec in stack.kinds().items():
        volume = None if kind == "s3" else f"sunday-dev-{project}-{kind}"
        args: tuple[str, ...] = ()
        settings: tuple[tuple[str, str], ...] = ()
        if isinstance(spec, DevPostgres):
            settings = (("database", spec.database),)
        if isinstance(spec, DevS3):
            settings = (("buckets", ",".join(spec.buckets)),)
        if isinstance(spec, DevPrometheus):
            args = tuple(spec.targets)
        services.append(DevService(project, kind, _PORTS[kind], volume, args,
                                   host_gateway=kind == "prometheus", password=kind in ("postgres", "redis"),
                                   settings=settings))
    return tuple(services)


def run_argv(service: DevService, image: str) -> list[str]:
    """The `docker` arguments that start `service` from `image`: detached, named and labelled, its port on a free
    port of 127.0.0.1 only, its volume on /data. `--pull never`: an image that is not on the engine is an error,
    never a download."""
    argv = ["run", "--detach", "--pull", "never", "--name", service.container,
            "--label", f"{PROJECT_LABEL}={service.project}", "--label", f"{KIND_LABEL}={service.kind}",
            "--label", f"{SPEC_LABEL}={service.spec(image)}", "--publish", f"127.0.0.1::{service.port}"]
    if service.volume is not None:
        argv += ["--volume", f"{service.volume}:/data"]
    if service.host_gateway:
        argv += ["--add-host", "host.docker.internal:host-gateway"]
    return [*argv, image, *service.args]


Action = Literal["reuse", "start", "replace"]


def decide(service: DevService, image: str, running: bool | None, spec: str | None) -> Action:
    """What `dev up` does about a service's container: `running` None when there is none, else whether it runs;
    `spec` the SPEC_LABEL it carries. A running container started the same way is reused; another is replaced
    (its volume, and so its data, stays)."""
    if running is None:
        return "start"
    return "reuse" if running and spec == service.spec(image) else "replace"


@dataclass(frozen=True)
class Endpoint:
    """A running dependency as the host reaches it: 127.0.0.1:port, with the password it made."""

    kind: str
    port: int
    password: SecretStr | None = None
    settings: dict[str, str] = field(default_factory=dict)  # postgres: database; s3: buckets (comma-separated)


def _url(endpoint: Endpoint, reveal: bool, database: str | None = None) -> str:
    secret = "***" if endpoint.password is None or not reveal else endpoint.password.get_secret_value()
    where = f"127.0.0.1:{endpoint.port}"
    if endpoint.kind == "postgres":
        return f"postgresql://dev:{secret}@{where}/{database or endpoint.settings.get('database', 'dev')}"
    if endpoint.kind == "redis":
        return f"redis://:{secret}@{where}/0"
    if endpoint.kind == "mail":
        return f"smtp://{where}"
    return f"http://{where}"


def server_url(endpoint: Endpoint) -> str:
    """The URL of the server itself, password included: PostgreSQL's `postgres` database, where `dev up` probes
    it and makes the declared database."""
    return _url(endpoint, reveal=True, database="postgres")


def urls(endpoints: list[Endpoint]) -> dict[str, str]:
    """Each dependency's URL with its password masked (`***`): what is printed and logged."""
    return {e.kind: _url(e, reveal=False) for e in endpoints}


def variables(endpoints: list[Endpoint]) -> dict[str, str]:
    """The environment the application runs with against the stack, passwords included: only for the .env file."""
    out: dict[str, str] = {}
    for e in endpoints:
        if e.kind == "postgres":
            out["DATABASE_URL"] = _url(e, reveal=True)
            out.update(PGHOST="127.0.0.1", PGPORT=str(e.port), PGUSER="dev",
                       PGPASSWORD=e.password.get_secret_value() if e.password else "",
                       PGDATABASE=e.settings.get("database", "dev"))
        elif e.kind == "redis":
            out["REDIS_URL"] = _url(e, reveal=True)
        elif e.kind == "s3":
            out.update(AWS_ENDPOINT_URL_S3=_url(e, reveal=True), S3_ENDPOINT_URL=_url(e, reveal=True),
                       AWS_ACCESS_KEY_ID=_S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=_S3_ACCESS_KEY,
                       AWS_DEFAULT_REGION=_S3_REGION, S3_BUCKETS=e.settings.get("buckets", ""))
        elif e.kind == "prometheus":
            out["PROMETHEUS_URL"] = _url(e, reveal=True)
        elif e.kind == "mail":
            out.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(e.port), SMTP_URL=_url(e, reveal=True))
    return out


def env_file_text(project: str, values: dict[str, str]) -> str:
    """The .env file: a header naming its maker, then KEY=VALUE lines (values never need quoting: URLs, hex
    passwords, names)."""
    lines = [f"{ENV_FILE_HEADER} the local development stack of {project}; written by `sunday-release dev up`, "
             "removed by `dev down`. It holds passwords: keep it out of git."]
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def is_our_env_file(text: str) -> bool:
    """Whether a file's text is one that `env_file_text` wrote (`dev up` overwrites and `dev down` removes only
    those)."""
    return text.startswith(ENV_FILE_HEADER)
