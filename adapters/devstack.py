"""The local development stack on the Docker engine: images built from infra/dev once per content, one container
per declared dependency on a free port of 127.0.0.1, health probes from the host, removal by label.

What runs and how it is named is decided in sunday_release/devstack.py; this module only carries it out.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from sunday_release.content_key import content_key
from sunday_release.devstack import (
    KIND_LABEL,
    PROJECT_LABEL,
    SPEC_LABEL,
    DevService,
    Endpoint,
    decide,
    run_argv,
    server_url,
)
from sunday_release.errors import CommandFailed, PipelineError
from sunday_release.runner import CommandResult, run, tail
from sunday_release.settings import Settings

__all__ = ["IMAGES", "DevStackEngine", "Observed", "ServiceStatus", "probe", "write_private"]

IMAGES = Path(__file__).resolve().parent.parent / "infra" / "dev"  # one build context per kind
IMAGE_LABEL = "sunday.dev.image"  # = KIND, on the images built from infra/dev/KIND
LOCAL_CAS = Path("/usr/local/share/ca-certificates")  # Debian's place of the CAs a machine trusts besides its own
HEALTH_TIMEOUT = 120.0  # seconds for every dependency to answer after `up` started it


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


@dataclass(frozen=True)
class Observed:
    """A container of the project's dev stack as the engine shows it."""

    name: str
    kind: str
    state: str  # Docker's: running, exited, created, restarting, ...
    running: bool
    spec: str | None
    port: int | None  # the host port of 127.0.0.1 it answers on, when it runs


@dataclass(frozen=True)
class ServiceStatus:
    """What `dev status` says of one dependency."""

    kind: str
    container: str
    state: str  # running, exited, ..., absent; `not declared` for a container of a kind the config dropped
    healthy: bool
    url: str | None
    problem: str | None = None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from its first byte (a new file renamed over the old one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def probe(endpoint: Endpoint) -> str | None:
    """None when the dependency answers a real request from the host, else what went wrong: PostgreSQL a
    `SELECT 1` as `dev` in its `postgres` database, Redis AUTH and PING, S3 a ListBuckets, Prometheus /-/ready,
    mail an SMTP NOOP."""
    where = ("127.0.0.1", endpoint.port)
    try:
        if endpoint.kind == "postgres":
            import psycopg

            with psycopg.connect(server_url(endpoint), connect_timeout=3) as conn:
                row = conn.execute("SELECT 1").fetchone()
            return None if row == (1,) else f"SELECT 1 answered {row}"
        if endpoint.kind == "redis":
            secret = endpoint.password.get_secret_value() if endpoint.password else ""
            with socket.create_connection(where, timeout=3) as sock:
                sock.sendall(f"AUTH {secret}\r\nPING\r\n".encode())
                answer = b""
                while answer.count(b"\r\n") < 2 and (chunk := sock.recv(256)):
                    answer += chunk
            return None if answer == b"+OK\r\n+PONG\r\n" else f"AUTH, PING answered {answer[:80]!r}"
        if endpoint.kind == "s3":
            response = httpx.get(f"http://127.0.0.1:{endpoint.port}/", timeout=3)
            listed = response.status_code == 200 and b"ListAllMyBucketsResult" in response.content
            return None if listed else f"ListBuckets answered HTTP {response.status_code}"
        if endpoint.kind == "prometheus":
            response = httpx.get(f"http://127.0.0.1:{endpoint.port}/-/ready", timeout=3)
            return None if response.status_code == 200 else f"/-/ready answered HTTP {response.status_code}"
        if endpoint.kind == "mail":
            with smtplib.SMTP(*where, timeout=3) as smtp:
                code, _ = smtp.noop()
            return None if code == 250 else f"NOOP answered {code}"
    except Exception as exc:  # whatever the client raises (refused, reset, auth, protocol): not healthy yet
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no answer'}"
    return f"no probe for the kind {endpoint.kind!r}"


class DevStackEngine:
    """One project's dev stack on the Docker engine of this machine (SUNDAY_DOCKER)."""

    def __init__(self, project: str, base_image: str, *, settings: Settings | None = None,
                 say: Callable[[str], None] = _stderr) -> None:
        self.project = project
        self.base_image = base_image
        self.settings = settings or Settings.from_env()
        self.say = say

    def _docker(self, *args: str, timeout: float = 120, check: bool = True) -> CommandResult:
        return run([self.settings.docker, *args], timeout=timeout, check=check)

    # --- images ---------------------------------------------------------------------------------------------

    def _extra_cas(self) -> str:
        """The CAs the host trusts besides Debian's, for an image that downloads over https (moto from PyPI):
        SUNDAY_EXTRA_CA_CERTS, else the machine's local CAs (behind a TLS-inspecting proxy, its CA is there)."""
        if configured := self.settings.ca_bundle():
            return configured
        found = sorted(LOCAL_CAS.glob("*.crt")) if LOCAL_CAS.is_dir() else []
        return "".join(path.read_text(encoding="utf-8", errors="replace").rstrip("\n") + "\n" for path in found)

    def image(self, kind: str) -> str:
        """The image of `kind`, `sunday-dev/KIND:KEY`, built from infra/dev/KIND on the base image unless the
        engine has it. The key (`content_key`) is stale when a file of the context, the base image (reference or
        id) or, for an image that downloads, the extra CAs change; the images it supersedes are removed."""
        found = self._docker("image", "inspect", "--format", "{{.Id}}", self.base_image, check=False)
        if not found.ok and "no such image" not in found.stderr.lower():
            found.check_returncode()  # the engine did not answer: CommandFailed names the command and its stderr
        if not found.ok:
            raise PipelineError(f"the base image {self.base_image} is not on the Docker engine: `make setup` builds "
                                "it (infra/local/setup.sh base), or pull the one `base_image` names; the dev stack "
                                "pulls nothing")
        with tempfile.TemporaryDirectory(prefix=f"sunday-dev-{kind}-") as tmp:
            context = Path(tmp) / kind
            shutil.copytree(IMAGES / kind, context)
            if "extra-ca.crt" in (context / "Dockerfile").read_text(encoding="utf-8"):
                (context / "extra-ca.crt").write_text(self._extra_cas(), encoding="utf-8")
            key = content_key(context, context / "Dockerfile", build_args={"BASE_IMAGE": self.base_image},
                              platforms=(), target=None, extra=(found.stdout.strip(),))
            tag = f"sunday-dev/{kind}:{key}"
            if self._docker("image", "inspect", "--format", "{{.Id}}", tag, check=False).ok:
                return tag
            self.say(f"building {tag} from infra/dev/{kind} on {self.base_image} (once: Debian packages)")
            self._docker("build", "--quiet", "--build-arg", f"BASE_IMAGE={self.base_image}", "--label",
                         f"{IMAGE_LABEL}={kind}", "--tag", tag, str(context), timeout=1800)
        listed = self._docker("image", "ls", "--filter", f"label={IMAGE_LABEL}={kind}", "--format",
                              "{{.Repository}}:{{.Tag}}").stdout.split()
        older = [t for t in listed if t != tag and t.startswith(f"sunday-dev/{kind}:")]
        if older:  # superseded: what a container of some project still runs stays (the engine refuses)
            self._docker("image", "rm", *older, check=False)
        return tag

    # --- containers -----------------------------------------------------------------------------------------

    def observe(self) -> list[Observed]:
        """The project's dev containers, running or not."""
        ids = self._docker("container", "ls", "--all", "--quiet", "--filter",
                           f"label={PROJECT_LABEL}={self.project}").stdout.split()
        if not ids:
            return []
        found = []
        for info in json.loads(self._docker("container", "inspect", *ids).stdout):
            labels = info["Config"]["Labels"] or {}
            ports = [binding for bindings in (info["NetworkSettings"]["Ports"] or {}).values() for binding in
                     bindings or []]
            found.append(Observed(info["Name"].lstrip("/"), labels.get(KIND_LABEL, "?"), str(info["State"]["Status"]),
                                  bool(info["State"]["Running"]), labels.get(SPEC_LABEL),
                                  int(ports[0]["HostPort"]) if ports else None))
        return found

    def _password(self, service: DevService) -> SecretStr | None:
        """The password the container made on its volume (read with `docker exec`: it reaches no argument, label
        or log); None before it exists."""
        if not service.password:
            return None
        read = self._docker("exec", service.container, "cat", "/data/password", check=False, timeout=30)
        return SecretStr(read.stdout.strip()) if read.ok and read.stdout.strip() else None

    def _endpoint(self, service: DevService, port: int, password: SecretStr | None) -> Endpoint:
        return Endpoint(service.kind, port, password, dict(service.settings))

    def _remove(self, names: Sequence[str]) -> None:
        if names:
            self._docker("container", "stop", "--time", "20", *names, timeout=120, check=False)
            self._docker("container", "rm", "--force", *names, timeout=120)

    def up(self, services: Sequence[DevService]) -> list[tuple[Endpoint, str]]:
        """Start what is not running as declared, reuse what is, wait until every dependency answers, make the
        declared database and buckets; return each one's endpoint and what was done (`start`, `replace`,
        `reuse`)."""
        images = {s.kind: self.image(s.kind) for s in services}
        observed = {o.name: o for o in self.observe()}
        done: list[tuple[DevService, int, str]] = []
        for service in services:
            seen = observed.get(service.container)
            action = decide(service, images[service.kind], seen.running if seen else None, seen.spec if seen else None)
            if action == "reuse" and seen is not None and seen.port is not None:
                done.append((service, seen.port, action))
                continue
            if seen is not None:
                action = "replace"
                self._remove([service.container])
            if service.volume is not None:
                self._docker("volume", "create", "--label", f"{PROJECT_LABEL}={self.project}", "--label",
                             f"{KIND_LABEL}={service.kind}", service.volume)
            self.say(f"starting {service.container} ({images[service.kind]})")
            self._docker(*run_argv(service, images[service.kind]))
            bound = self._docker("container", "port", service.container, f"{service.port}/tcp", check=False)
            if not bound.ok:  # it has no port once it stopped
                raise self._failed([service], "stopped as it started", {})
            done.append((service, int(bound.stdout.split()[0].rsplit(":", 1)[1]), action))
        endpoints = self._wait_healthy([(service, port) for service, port, _ in done])
        for endpoint in endpoints:
            if endpoint.kind == "postgres":
                self._make_database(endpoint)
            if endpoint.kind == "s3":
                self._make_buckets(endpoint)
        return [(endpoint, action) for endpoint, (_, _, action) in zip(endpoints, done, strict=True)]

    def _wait_healthy(self, started: Sequence[tuple[DevService, int]]) -> list[Endpoint]:
        """Each service's endpoint once its probe passes; PipelineError naming the ones that did not within
        HEALTH_TIMEOUT, or whose container stopped, with the tail of their logs."""
        deadline = time.monotonic() + HEALTH_TIMEOUT
        ready: dict[str, Endpoint] = {}
        problems: dict[str, str] = {}
        rounds = 0
        while True:
            for service, port in started:
                if service.kind in ready:
                    continue
                password = self._password(service)
                if service.password and password is None:
                    problems[service.kind] = "no password on its volume yet"
                    continue
                endpoint = self._endpoint(service, port, password)
                if (problem := probe(endpoint)) is None:
                    ready[service.kind] = endpoint
                    problems.pop(service.kind, None)
                else:
                    problems[service.kind] = problem
            if len(ready) == len(started):
                return [ready[service.kind] for service, _ in started]
            rounds += 1
            stopped = []
            if rounds % 8 == 0:  # every 2 s: a container that exited will not get healthy
                running = {o.name for o in self.observe() if o.running}
                stopped = [s for s, _ in started if s.kind not in ready and s.container not in running]
            if stopped:
                raise self._failed(stopped, "stopped", problems)
            if time.monotonic() > deadline:
                raise self._failed([s for s, _ in started if s.kind not in ready],
                                   f"did not answer within {HEALTH_TIMEOUT:.0f} s", problems)
            time.sleep(0.25)

    def _failed(self, failed: Sequence[DevService], why: str, problems: dict[str, str]) -> PipelineError:
        """The error of dependencies that did not get healthy: what their probes last said, their logs' tails."""
        logs = "\n".join(f"--- {s.container} ({problems.get(s.kind, why)}):\n"
                         + tail(self._docker("container", "logs", "--tail", "15", s.container, check=False).stderr
                                or "(no output)") for s in failed)
        return PipelineError(f"{', '.join(s.kind for s in failed)} {why} (`sunday-release dev status`; "
                             f"`docker logs CONTAINER`):\n{logs}")

    def _make_database(self, endpoint: Endpoint) -> None:
        import psycopg
        from psycopg import sql

        database = endpoint.settings["database"]
        with psycopg.connect(server_url(endpoint), connect_timeout=10, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER dev").format(sql.Identifier(database)))

    def _make_buckets(self, endpoint: Endpoint) -> None:
        for bucket in filter(None, endpoint.settings.get("buckets", "").split(",")):
            response = httpx.put(f"http://127.0.0.1:{endpoint.port}/{bucket}", timeout=10)
            if response.status_code != 200 and b"BucketAlreadyOwnedByYou" not in response.content:
                raise PipelineError(f"s3: creating the bucket {bucket} answered HTTP {response.status_code}: "
                                    f"{response.text[:200]}")

    def status(self, services: Sequence[DevService]) -> list[ServiceStatus]:
        """Each declared dependency's container, state and health (its probe, now), then any container of the
        project whose kind the config no longer declares."""
        from sunday_release.devstack import urls

        observed = {o.name: o for o in self.observe()}
        out = []
        for service in services:
            seen = observed.pop(service.container, None)
            if seen is None or not seen.running or seen.port is None:
                out.append(ServiceStatus(service.kind, service.container, "absent" if seen is None else seen.state,
                                         False, None))
                continue
            endpoint = self._endpoint(service, seen.port, self._password(service))
            problem = probe(endpoint)
            out.append(ServiceStatus(service.kind, service.container, "running", problem is None,
                                     urls([endpoint])[service.kind], problem))
        out += [ServiceStatus(o.kind, o.name, "not declared", False, None) for o in observed.values()]
        return out

    def down(self, *, volumes: bool) -> tuple[list[str], list[str]]:
        """Stop and remove the project's dev containers and, with `volumes`, their volumes (the data); return the
        names removed."""
        containers = [o.name for o in self.observe()]
        self._remove(containers)
        removed: list[str] = []
        if volumes:
            removed = self._docker("volume", "ls", "--quiet", "--filter",
                                   f"label={PROJECT_LABEL}={self.project}").stdout.split()
            if removed:
                try:
                    self._docker("volume", "rm", *removed)
                except CommandFailed as exc:
                    raise PipelineError(f"removing the volumes {', '.join(removed)}: {exc}") from None
        return containers, removed
