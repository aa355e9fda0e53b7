"""The `docker` target: blue and green containers on one Docker engine behind a host nginx router.

An environment is keyed by `(project, env)`: two projects may each have a `staging` on one machine.
Environments belong to the machine, not to a worker's SUNDAY_HOME: per environment, under
SUNDAY_ENV_ROOT/PROJECT/ENV, `ports.json` (the host ports it holds: the machine's registry of ports),
`router/` (nginx config, pid, access log), `secrets/` (0600 env files given to containers with
--env-file: secrets never appear in argv) and `state.json`/`config.json`, a cache of the release
record. The record itself (release history and last config) is a row of the database
`sunday_release` in the environment's own PostgreSQL cluster under SUNDAY_DB_ROOT/PROJECT/ENV
(`env_record`): every worker on the machine reads the same copy, and it wins over the cache.
Containers are named `sunday-PROJECT-ENV-SERVICE-COLOR-N`, carry the labels `sunday.project` and
`sunday.env`, and publish their port on 127.0.0.1 only.

Environments of older layouts (SUNDAY_HOME/envs/ENV from before projects, SUNDAY_HOME/projects/
PROJECT/envs/ENV from before the env root) are left alone: nothing here stops or reads their state,
and the ports they recorded count as taken only while something listens on them.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx
from pydantic import SecretStr

from sunday_release import validate
from sunday_release.bluegreen import Color, EnvState, render_router_config
from sunday_release.config import Environment, PipelineConfig
from sunday_release.errors import ConfigError, InputError, PipelineError, RolloutAborted
from sunday_release.prometheus import prometheus_url
from sunday_release.registry import INDEX_TYPES, RegistryClient, RegistryUnavailable
from sunday_release.runner import run, tail
from sunday_release.targets import env_record
from sunday_release.targets.db_exporter import DatabaseExporter
from sunday_release.targets.local_db import LocalDatabase
from sunday_release.targets.protocol import DatabaseAccess, DatabaseUrl, DeployTarget, Replica, TrafficLog
from sunday_release.tls import tls_context

__all__ = ["DockerTarget"]

NGINX = "/usr/sbin/nginx"

# Docker's own health check of a replica (the image's HEALTHCHECK, every `health_interval` seconds) is for `status`
# and a replica that dies later. Readiness does not wait for it: while Docker says `starting` (or the image has no
# HEALTHCHECK), `answers` probes the service's `health_path` from the host, so a new color is healthy as soon as it
# serves.


def answers(endpoint: str, path: str) -> bool:
    """The replica at `endpoint` (127.0.0.1:PORT) answers GET `path` with a 2xx within 2 s: it is ready."""
    try:
        return httpx.get(f"http://{endpoint}{path}", timeout=2, trust_env=False,  # never a proxy
                         verify=tls_context()).is_success
    except httpx.HTTPError:
        return False


class DockerTarget:
    """Blue-green on one Docker engine; the router's config file says which color is live."""

    def __init__(self, config: PipelineConfig, env_name: str, env: Environment, home: Path, docker: str,
                 db_root: Path, *, env_root: Path) -> None:
        validate.name(env_name, "--env")  # it becomes a directory, container names and labels
        self.project = validate.name(config.project, "project")
        if env.port is None:
            raise ConfigError("sunday-release.yaml", f"environments.{env_name}.port",
                              "the docker target needs the port of the environment's entry point")
        self.config, self.env_name, self.env, self.docker, self.home = config, env_name, env, docker, home
        self.env_root = env_root
        self.root = env_root / self.project / env_name  # as Settings.env_dir
        self.router_dir = self.root / "router"
        self.db = LocalDatabase(db_root / self.project / env_name, env.db_port or env.port + 1000)
        self.db_exporter = DatabaseExporter(self.db, self.project, env_name, env_root)
        self._secrets: dict[str, dict[str, SecretStr]] = {}
        self._database = self.db.name  # the application's database: another one after a restore

    @property
    def key(self) -> str:
        """`project/env`: what names, ports, locks and artifacts of this environment derive from."""
        return f"{self.project}/{self.env_name}"

    # ---------------------------------------------------------------- host ports
    def ports(self) -> DockerTarget:
        """The host-ports capability: the router and database listen on this machine's ports."""
        return self

    def host_ports(self) -> dict[str, int]:
        """The ports of this machine the environment listens on (config key path → port)."""
        return {f"environments.{self.env_name}.port": self.env.port or 0,
                f"environments.{self.env_name}.db_port": self.db.port}

    def _port_owners(self) -> dict[int, str]:
        """Port → owner of every other environment on this machine that holds it.

        Environments under the env root hold their ports (ports.json) whether or not they run. Those
        of older layouts under SUNDAY_HOME hold a port only while something listens on it: a stopped
        old staging does not keep 8081 from a new one, a running one does.
        """
        owners: dict[int, str] = {}
        mine: set[int] = set()
        for claim in self.env_root.glob("*/*/ports.json"):
            ports = _ports_in(claim)
            if f"{claim.parent.parent.name}/{claim.parent.name}" == self.key:
                mine = set(ports)
            else:
                owners |= {port: f"{claim.parent.parent.name}/{claim.parent.name}" for port in ports}
        for port, owner in self._older_layouts().items():
            if port in owners or port in mine or not _listening(port):
                continue
            if port == self.db.port and self.db.running():
                continue  # this environment's own cluster: SUNDAY_DB_ROOT/PROJECT/ENV serves every layout
            owners[port] = owner
        return owners

    def _older_layouts(self) -> dict[int, str]:
        """Port → owner recorded by environments of older layouts under SUNDAY_HOME (left alone otherwise)."""
        owners: dict[int, str] = {}
        for claim in (self.home / "projects").glob("*/envs/*/ports.json"):  # before the env root
            owners |= {port: f"{claim.parent.parent.parent.name}/{claim.parent.name} (older layout, {claim.parent})"
                       for port in _ports_in(claim)}
        for legacy in (self.home / "envs").glob("*/config.json"):  # before projects
            try:
                data = json.loads(legacy.read_text())
                spec = data["environments"][legacy.parent.name]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            owner = f"{data.get('project', '?')}/{legacy.parent.name} (deployed before projects, {legacy.parent})"
            if spec.get("port") and spec.get("target", "docker") == "docker":
                owners[int(spec["port"])] = owner
                owners[int(spec.get("db_port") or int(spec["port"]) + 1000)] = owner
        return owners

    def claim_ports(self) -> None:
        """Record this environment's host ports, or refuse one another environment holds (before anything runs).

        Raises:
            ConfigError: a port of the config is held by another `project/env` on this machine (named).
        """
        self.env_root.mkdir(parents=True, exist_ok=True)
        with open(self.env_root / ".ports.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two first deploys of different projects claim one after the other
            try:
                owners = self._port_owners()
                for where, port in self.host_ports().items():
                    if port in owners:
                        raise ConfigError("sunday-release.yaml", where,
                                          f"port {port} is already used by environment {owners[port]} on this "
                                          f"machine; nothing was stopped: choose another port for {self.key}")
                if len(set(self.host_ports().values())) < len(self.host_ports()):
                    raise InputError(f"environments.{self.env_name}: port and db_port are the same")
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / "ports.json").write_text(json.dumps(self.host_ports()))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ---------------------------------------------------------------- release record
    @property
    def state_path(self) -> Path:
        """The cache of the release history (the database copy wins)."""
        return self.root / "state.json"

    @property
    def config_path(self) -> Path:
        """The cache of the last deployed config (the database copy wins); what `Settings.projects_with` finds."""
        return self.root / "config.json"

    def prepare_record(self) -> None:
        """Create the database `sunday_release` and its table in the environment's (running) cluster, once."""
        done = self.db.psql(env_record.prepare_script(self.db.user), "postgres")
        if not done.ok:
            raise PipelineError(f"{self.key}: preparing the release record (database {env_record.DATABASE} on port "
                                f"{self.db.port}) failed: {tail(done.stderr, 3)}")

    def read_record(self) -> env_record.Record | None:
        """The environment's row in its database, starting the cluster if it is stopped.

        None when there is no cluster, no `sunday_release` database (a cluster of an older layout
        that no deploy prepared yet) or no row: the cache is all there is then.
        """
        if not self.db.start():
            return None
        done = self.db.psql(env_record.read_script(self.project, self.env_name), env_record.DATABASE)
        if done.returncode == 2 and f'database "{env_record.DATABASE}" does not exist' in done.stderr:
            return None
        if not done.ok:
            raise PipelineError(f"{self.key}: reading the release record (database {env_record.DATABASE} on port "
                                f"{self.db.port}) failed: {tail(done.stderr, 3)}")
        return env_record.parse_record(done.stdout)

    def _write_record(self, column: Literal["state", "config"], value: dict[str, object], cache: Path) -> None:
        """One upsert of `column`, then its cache file (atomically); a refused value changes neither."""
        what = "release history" if column == "state" else "config"
        done = self.db.psql(env_record.write_script(self.project, self.env_name, column, value), env_record.DATABASE)
        if not done.ok:
            refused = env_record.refused_write(self.key, what, done.stderr)
            if refused is not None:
                raise refused
            raise PipelineError(f"{self.key}: writing the {what} (database {env_record.DATABASE} on port "
                                f"{self.db.port}) failed: {tail(done.stderr, 3)}")
        _write_atomically(cache, json.dumps(value, indent=2))

    def load_state(self) -> EnvState:
        """The release history: the database's copy, else the cache file, else an empty one."""
        record = self.read_record()
        if record is not None and record.state is not None:
            return EnvState.model_validate(record.state)
        return EnvState.load(self.state_path, self.env_name)

    def save_state(self, state: EnvState) -> None:
        """Write the release history: one upsert in the environment's database, then the cache file."""
        self._write_record("state", state.model_dump(mode="json"), self.state_path)

    def load_config(self) -> PipelineConfig | None:
        """The config of the environment's last deploy from its database, None when it has none."""
        record = self.read_record()
        if record is None or record.config is None:
            return None
        return PipelineConfig.model_validate(record.config)

    def save_config(self) -> None:
        """Record this target's config as the environment's last (database, then cache file).

        Raises:
            InputError: PostgreSQL refused a value of the config (named by SQLSTATE, never quoted).
        """
        self._write_record("config", self.config.model_dump(mode="json"), self.config_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env.port}"

    # ---------------------------------------------------------------- database
    def bridge_ip(self) -> str:
        out = run([self.docker, "network", "inspect", "bridge", "-f", "{{(index .IPAM.Config 0).Gateway}}"])
        return out.stdout.strip() or "172.17.0.1"

    def ensure_database(self) -> None:
        """Start (creating once) the environment's PostgreSQL and its release record database; and, where the
        platform has a Prometheus (SUNDAY_PROMETHEUS_URL), the database's exporter."""
        self.db.ensure(self.bridge_ip())
        self.prepare_record()
        if prometheus_url() is not None:  # the platform's Prometheus reads it; without one nobody would
            self.db_exporter.ensure()

    def use_secrets(self, values: Mapping[str, Mapping[str, SecretStr]]) -> None:
        """The services' secrets for the containers started from now on: written only to their 0600 env files."""
        self._secrets = {service: dict(found) for service, found in values.items()}

    def _env_file(self, service: str, version: str, color: Color) -> Path:
        secrets = self.root / "secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        secrets.chmod(0o700)
        path = secrets / f"{service}-{color}.env"
        values = {**self.config.services[service].env, "APP_VERSION": version,
                  "SUNDAY_PROJECT": self.project, "SUNDAY_ENV": self.env_name, "SUNDAY_COLOR": color}
        if self.db.data.exists():
            values["DATABASE_URL"] = self.db.dsn(host="sunday-db", database=self._database)
        values |= {name: value.get_secret_value() for name, value in self._secrets.get(service, {}).items()}
        missing = sorted(set(self.config.services[service].secrets) - set(values))
        if missing:  # a flow that did not resolve them: never a container without its secrets
            raise PipelineError(f"{service}: the secrets {', '.join(missing)} were not resolved for this deploy")
        partial = path.with_suffix(".new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 before a byte is written
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in values.items()))
        partial.replace(path)
        return path

    # ---------------------------------------------------------------- containers
    def container_name(self, service: str, color: Color, index: int) -> str:
        return f"sunday-{self.project}-{self.env_name}-{service}-{color}-{index}"

    def replicas_of(self, service: str, state: EnvState | None = None) -> int:
        if state is not None and service in state.replicas:
            return state.replicas[service]
        return self.env.replicas.get(service, 1)

    def host_image(self, image: str) -> str:
        """The per-platform digest of a manifest list for this machine's platform.

        Docker 20.10 reuses a local image of the list's digest whatever its platform (one pulled
        for `--platform linux/arm64` would run under emulation), so containers get the exact
        platform manifest instead.
        """
        name, _, digest = image.partition("@")
        registry, _, repository = name.partition("/")
        if not digest or not repository:
            return image
        arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7"}.get(platform.machine(), platform.machine())
        for delay in (0.5, 2.0, None):  # reads: a registry's 5xx or a dropped connection is asked again, twice
            try:
                with RegistryClient(registry) as client:
                    found = client.head(repository, digest)
                    if found is None or found.media_type not in INDEX_TYPES:
                        return image
                    for entry in client.platforms(repository, digest):
                        if entry.platform == f"linux/{arch}":
                            return f"{name}@{entry.digest}"
                break
            except RegistryUnavailable:
                if delay is None:
                    raise
                time.sleep(delay)
        raise RolloutAborted(f"{image} has no linux/{arch} image: it cannot run on this machine")

    def start_color(self, color: Color, images: Mapping[str, str], version: str, state: EnvState) -> None:
        """Replace the containers of `color` by fresh ones of `images` (service → image ref)."""
        self.remove_color(color)
        for service, image in images.items():
            image = self.host_image(image)
            spec = self.config.services[service]
            env_file = self._env_file(service, version, color)
            for i in range(self.replicas_of(service, state)):
                self._run_replica(service, color, i, image, version, env_file, spec.port)

    def _run_replica(self, service: str, color: Color, index: int, image: str, version: str, env_file: Path,
                     port: int) -> None:
        run([self.docker, "run", "-d", "--name", self.container_name(service, color, index),
             "--label", f"sunday.project={self.project}", "--label", f"sunday.env={self.env_name}",
             "--label", f"sunday.color={color}",
             "--label", f"sunday.service={service}", "--label", f"sunday.version={version}",
             *self._metrics_labels(service),
             "--env-file", str(env_file), "--add-host", "sunday-db:host-gateway",
             "--restart", "unless-stopped", "--health-interval", f"{self.env.health_interval}s",
             "--health-timeout", "5s", "--health-retries", "3", "-p", f"127.0.0.1::{port}", image], timeout=300)

    def _metrics_labels(self, service: str) -> list[str]:
        """The label that has the platform's Prometheus scrape the replica (docker_sd_configs, infra/local/
        prometheus.yml): the service's metrics path; none for a service that serves no metrics."""
        path = self.config.services[service].metrics_path
        return ["--label", f"sunday.metrics_path={path}"] if path else []

    def replicas(self, color: Color, include_stopped: bool = False) -> list[Replica]:
        """The containers of `color`, with their health and published endpoint."""
        argv = [self.docker, "ps", "-q", "--filter", f"label=sunday.project={self.project}",
                "--filter", f"label=sunday.env={self.env_name}", "--filter", f"label=sunday.color={color}"]
        ids = run([*argv, *(["-a"] if include_stopped else [])]).stdout.split()
        if not ids:
            return []
        out = []
        for c in json.loads(run([self.docker, "inspect", *ids]).stdout):
            service = c["Config"]["Labels"]["sunday.service"]
            port = self.config.services[service].port if service in self.config.services else 0
            bindings = (c["NetworkSettings"]["Ports"] or {}).get(f"{port}/tcp") or []
            endpoint = f"127.0.0.1:{bindings[0]['HostPort']}" if bindings else ""
            state = c["State"]
            health = state.get("Health", {}).get("Status", "none") if state["Running"] else "exited"
            if health in ("starting", "none") and endpoint and service in self.config.services \
                    and answers(endpoint, self.config.services[service].health_path):
                health = "healthy"
            out.append(Replica(service, c["Name"].lstrip("/"), endpoint, health))
        return sorted(out, key=lambda r: r.name)

    def scale_service(self, color: Color, service: str, image: str, version: str, replicas: int) -> None:
        """Add or remove containers of `service` in `color` until `replicas` run."""
        running = [r for r in self.replicas(color, include_stopped=True) if r.service == service]
        spec = self.config.services[service]
        image = self.host_image(image)
        env_file = self._env_file(service, version, color)
        for index in range(len(running), replicas):
            self._run_replica(service, color, index, image, version, env_file, spec.port)
        surplus = [self.container_name(service, color, i) for i in range(replicas, len(running))]
        if surplus:
            run([self.docker, "rm", "-f", *surplus], timeout=120)

    def wait_healthy(self, color: Color, timeout: float) -> list[Replica]:
        """Wait until every container of `color` is healthy; RolloutAborted with their logs if not."""
        deadline = time.monotonic() + timeout
        while True:
            reps = self.replicas(color, include_stopped=True)
            if reps and all(r.health == "healthy" for r in reps):
                return reps
            bad = [r for r in reps if r.health == "exited"]  # unhealthy may still recover: wait for it
            if bad or time.monotonic() > deadline:
                culprit = bad[0] if bad else next((r for r in reps if r.health != "healthy"), None)
                logs = tail(run([self.docker, "logs", "--tail", "20", culprit.name], check=False).stderr, 8) \
                    if culprit else "no containers"
                why = f"{culprit.name} is {culprit.health}" if culprit else "no containers started"
                raise RolloutAborted(f"{color} did not become healthy within {timeout:.0f}s: {why}\n{logs}")
            time.sleep(0.5)

    def stop_color(self, color: Color) -> None:
        """Stop (keep) the containers of `color`: a later rollback can start them again."""
        names = [r.name for r in self.replicas(color)]
        if names:
            run([self.docker, "update", "--restart", "no", *names], check=False)
            run([self.docker, "stop", "-t", "10", *names], timeout=120)

    def restart_color(self, color: Color) -> None:
        """Start the kept (stopped) containers of `color` again."""
        names = [r.name for r in self.replicas(color, include_stopped=True)]
        if not names:
            raise RolloutAborted(f"no kept containers of {color} in {self.key}")
        run([self.docker, "start", *names], timeout=120)
        run([self.docker, "update", "--restart", "unless-stopped", *names], check=False)

    def version_of(self, color: Color) -> str:
        """The version the (running or kept) containers of `color` were started with, "" when none."""
        names = [r.name for r in self.replicas(color, include_stopped=True)]
        if not names:
            return ""
        out = run([self.docker, "inspect", "-f", '{{index .Config.Labels "sunday.version"}}', names[0]], check=False)
        return out.stdout.strip()

    def remove_color(self, color: Color) -> None:
        names = [r.name for r in self.replicas(color, include_stopped=True)]
        if names:
            run([self.docker, "rm", "-f", *names], timeout=120)

    def run_once(self, image: str, argv: list[str], service: str, version: str) -> str:
        """Run a one-off command (migrations) in a container of `image` with the service's environment."""
        image = self.host_image(image)
        env_file = self._env_file(service, version, "blue")
        out = run([self.docker, "run", "--rm", "--env-file", str(env_file), "--add-host", "sunday-db:host-gateway",
                   image, *argv], timeout=600, check=False)
        if not out.ok:
            raise RolloutAborted(f"migration failed (exit {out.returncode}): {tail(out.stderr or out.stdout, 5)}")
        return out.stdout

    # ---------------------------------------------------------------- router
    @property
    def router_conf(self) -> Path:
        return self.router_dir / "nginx.conf"

    def live_color(self) -> Color | None:
        """The color the router sends traffic to (its config file is the truth), None before the first."""
        if not self.router_conf.exists():
            return None
        first = self.router_conf.read_text().split("\n", 1)[0]
        return "green" if first.endswith("live color green. Written by the pipeline.") else "blue"

    def _router_pid(self) -> int | None:
        try:
            pid = int((self.router_dir / "nginx.pid").read_text())
            Path(f"/proc/{pid}").stat()
            return pid
        except (OSError, ValueError):
            return None

    def switch(self, color: Color) -> None:
        """Point the router at `color`: write the config, validate it, reload gracefully (atomic)."""
        routes = {spec.route: name for name, spec in self.config.services.items() if spec.route}
        if not routes:
            raise ConfigError("sunday-release.yaml", "services.*.route",
                              "no service has a route: the router would send traffic nowhere")
        upstreams = {name: [r.endpoint for r in self.replicas(color) if r.service == name and r.endpoint]
                     for name in set(routes.values())}
        if any(not eps for eps in upstreams.values()):
            empty = [n for n, eps in upstreams.items() if not eps]
            raise RolloutAborted(f"refusing to switch to {color}: no running replica of {', '.join(empty)}")
        (self.router_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.router_dir / "tmp").chmod(0o777)
        text = render_router_config(self.env_name, self.env.port or 0, routes, upstreams, color, self.router_dir,
                                    project=self.project)
        candidate = self.router_dir / "nginx.conf.new"
        candidate.write_text(text)
        checked = run([NGINX, "-t", "-q", "-c", str(candidate)], check=False)
        if not checked.ok:
            raise PipelineError(f"router config for {color} is invalid, traffic not moved: {tail(checked.stderr, 3)}")
        candidate.replace(self.router_conf)
        if self._router_pid() is None:
            run([NGINX, "-c", str(self.router_conf)])
        else:
            run([NGINX, "-s", "reload", "-c", str(self.router_conf)])

    # ---------------------------------------------------------------- database and traffic
    def database(self) -> DatabaseAccess:
        """The application's database in the environment's own PostgreSQL cluster (SUNDAY_DB_ROOT/PROJECT/ENV), for
        the backup step: the one its containers use (`use_database`)."""
        local, name = self.db, self._database
        return DatabaseUrl(f"the PostgreSQL of {self.key} (port {local.port}, database {name})",
                           lambda: SecretStr(local.dsn(database=name)))

    def restorable(self) -> DockerTarget:
        """The restore capability: the cluster holds several databases, the containers' env files name one."""
        return self

    def owner_dsn(self) -> SecretStr:
        return SecretStr(self.db.dsn())

    def database_name(self) -> str:
        return self._database

    def use_database(self, name: str) -> None:
        self._database = validate.database_name(name, "database")

    def traffic_log(self) -> TrafficLog:
        """The router's access log: the watch window counts the live color's 5xx in it."""
        return self

    def access_log_size(self) -> int:
        log = self.router_dir / "access.log"
        return log.stat().st_size if log.exists() else 0

    def statuses_since(self, offset: int, color: Color) -> list[int]:
        """HTTP statuses the router logged for `color` since byte `offset` of its access log."""
        log = self.router_dir / "access.log"
        if not log.exists():
            return []
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        return [int(parts[1]) for parts in (line.split() for line in lines)
                if len(parts) > 5 and parts[-1] == color and parts[1].isdigit() and "/router/" not in parts[4]]

    def stop_router(self) -> None:
        if self._router_pid() is not None:
            run([NGINX, "-s", "quit", "-c", str(self.router_conf)], check=False)

    def teardown(self) -> None:
        """Remove everything of the environment (containers, router, database): for tests and demos."""
        for color in ("blue", "green"):
            self.remove_color(color)  # type: ignore[arg-type]
        self.stop_router()
        self.db_exporter.stop()
        self.db.stop()

    def destroy(self) -> None:
        """Remove the environment for good (a closed pull request's preview): its containers, router and database,
        then the database's data and the environment's directory (ports it held, secrets, record cache). The
        containers go by label too, so a half-deployed environment leaves none."""
        self.teardown()
        labelled = run([self.docker, "ps", "-aq", "--filter", f"label=sunday.project={self.project}",
                        "--filter", f"label=sunday.env={self.env_name}"], check=False).stdout.split()
        if labelled:
            run([self.docker, "rm", "-f", *labelled], timeout=120)
        if self.db.running():
            raise PipelineError(f"the database of {self.key} is still running after it was stopped; "
                                f"its data ({self.db.root}) is kept")
        shutil.rmtree(self.db.root, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _ports_in(claim: Path) -> list[int]:
    """The ports a ports.json records ([] when it cannot be read)."""
    try:
        ports = json.loads(claim.read_text())
    except (OSError, ValueError):
        return []
    return [int(p) for p in ports.values() if isinstance(p, int)] if isinstance(ports, dict) else []


def _listening(port: int) -> bool:
    """Does something accept connections on 127.0.0.1:`port`?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a rename, so a reader sees the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if TYPE_CHECKING:
    def _implements_the_protocol(target: DockerTarget) -> DeployTarget:
        return target  # mypy: DockerTarget is a DeployTarget
