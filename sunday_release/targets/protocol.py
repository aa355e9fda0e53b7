"""The deploy-target protocol: what flows and tasks may ask of a target, and what a target may lack.

Every target (`docker`, `kubernetes`) implements `DeployTarget`: the blue-green operations the CD
flows run (start the idle color, wait until healthy, switch, stop, restart, migrate) and its release
history. What only some targets can do is a capability that answers None where it is missing,
never an attribute that might not be there:

    database()     the environment's PostgreSQL for the backup step (`DatabaseAccess`), or None
    ports()        the ports of this machine it listens on, claimed before a deploy (`HostPorts`), or None
    traffic_log()  the entry point's access log for the watch window (`TrafficLog`), or None
    restorable()   the environment's databases a restore creates and switches between (`RestorableDatabase`), or None

Pure: no Prefect, no Docker or Kubernetes client; mypy checks it with `disallow_any_explicit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from sunday_release.bluegreen import Color, EnvState
from sunday_release.config import Environment, PipelineConfig

__all__ = ["DatabaseAccess", "DatabaseUrl", "DeployTarget", "HostPorts", "Replica", "RestorableDatabase", "TrafficLog"]


@dataclass(frozen=True)
class Replica:
    """What runs one service in one color: a container (docker) or the color's Deployment (kubernetes)."""

    service: str
    name: str  # the container, or the Deployment SERVICE-COLOR
    endpoint: str  # HOST:PORT smoke checks reach it at ("" when it publishes none)
    health: str  # healthy, starting, unhealthy, none (no health check), failed, exited (stopped, scaled to 0)
    ready: int = 0  # pods ready (kubernetes; 0 where the target does not count them)
    desired: int = 0  # pods wanted (kubernetes)
    version: str = ""  # the release it runs, where the target records it on the object


class DatabaseAccess(Protocol):
    """An environment's PostgreSQL as the backup step sees it: a connection string and a name for messages."""

    @property
    def name(self) -> str:
        """Which database, for messages and logs; never contains the password."""
        ...

    def dsn(self) -> SecretStr:
        """A libpq connection string (URL) for pg_dump/psql; read when asked (it holds the password)."""
        ...


@dataclass(frozen=True)
class DatabaseUrl:
    """A `DatabaseAccess` whose connection string is read only when needed (a file, a secret store)."""

    name: str
    read: Callable[[], SecretStr]

    def dsn(self) -> SecretStr:
        return self.read()


class HostPorts(Protocol):
    """Ports of this machine an environment listens on; claimed before anything runs, so no two share one."""

    def host_ports(self) -> dict[str, int]:
        """Config key path (`environments.ENV.port`) → port."""
        ...

    def claim_ports(self) -> None:
        """Record the ports as this environment's, or raise ConfigError naming the environment that holds one."""
        ...


class TrafficLog(Protocol):
    """The entry point's access log: the requests and their statuses the watch window counts."""

    def access_log_size(self) -> int:
        """Where the log ends now (an offset to read from later)."""
        ...

    def statuses_since(self, offset: int, color: Color) -> list[int]:
        """HTTP statuses logged for `color` after `offset`."""
        ...


class RestorableDatabase(Protocol):
    """An environment whose application database can be another one of the same server: a restore creates a new
    database from a backup and starts the idle color on it; the old one is kept."""

    def owner_dsn(self) -> SecretStr:
        """The application's role (allowed to CREATE DATABASE): it creates and owns a restored database."""
        ...

    def database_name(self) -> str:
        """The database the containers started from now on connect to (and the backup step dumps)."""
        ...

    def use_database(self, name: str) -> None:
        """Connect the containers started from now on to `name` (a database of the same server), and back it up."""
        ...


class DeployTarget(Protocol):
    """One environment's blue-green deployment: two colors, one live, switched atomically.

    The color the entry point routes to is the truth (`live_color`); the release history is in
    `load_state`/`save_state`. `root` is the machine-local directory of the environment
    (`SUNDAY_HOME/projects/PROJECT/envs/ENV`: state, the last deployed config, backup dumps on their
    way to S3).
    """

    @property
    def key(self) -> str:
        """`project/env`: what the environment's names, lock, local state and artifacts derive from."""
        ...

    @property
    def config(self) -> PipelineConfig: ...

    @property
    def env_name(self) -> str: ...

    @property
    def env(self) -> Environment: ...

    @property
    def root(self) -> Path: ...

    @property
    def url(self) -> str:
        """The environment's entry point (what the watch window and `status` probe)."""
        ...

    # ---------------------------------------------------------------- release history
    def load_state(self) -> EnvState: ...

    def save_state(self, state: EnvState) -> None: ...

    def load_config(self) -> PipelineConfig | None:
        """The config of the environment's last deploy as the target keeps it (docker: its database;
        kubernetes: the state ConfigMap), None when it keeps none yet."""
        ...

    def save_config(self) -> None:
        """Record this target's config as the environment's last: in the target's own record, and in the
        cache file ROOT/config.json that says which target (and cluster or database) to ask."""
        ...

    # ---------------------------------------------------------------- colors
    def live_color(self) -> Color | None:
        """The color receiving traffic, None before the first release."""
        ...

    def version_of(self, color: Color) -> str:
        """The release `color` runs or was stopped with; "" when none."""
        ...

    def start_color(self, color: Color, images: Mapping[str, str], version: str, state: EnvState) -> None:
        """Run `images` (service → image reference) at release `version` on `color` (not yet live)."""
        ...

    def scale_service(self, color: Color, service: str, image: str, version: str, replicas: int) -> None:
        """Run `replicas` of `service` in `color`."""
        ...

    def replicas(self, color: Color, include_stopped: bool = False) -> list[Replica]:
        """What runs `color` (stopped ones too with `include_stopped`)."""
        ...

    def wait_healthy(self, color: Color, timeout: float) -> list[Replica]:
        """Every replica of `color` healthy, or RolloutAborted saying why not."""
        ...

    def switch(self, color: Color) -> None:
        """Send the traffic to `color`, all or nothing."""
        ...

    def stop_color(self, color: Color) -> None:
        """Stop `color`, keeping it for a rollback (`restart_color`)."""
        ...

    def restart_color(self, color: Color) -> None:
        """Start the kept `color` again as it was stopped."""
        ...

    def remove_color(self, color: Color) -> None:
        """Remove what `color` runs (the kubernetes target only scales it to 0: the overlay owns the objects)."""
        ...

    def run_once(self, image: str, argv: list[str], service: str, version: str) -> str:
        """Run `argv` (migrations) once in `image` with the service's settings; its output, or RolloutAborted."""
        ...

    def use_secrets(self, values: Mapping[str, Mapping[str, SecretStr]]) -> None:
        """The values of the services' `secrets:` (service → variable → value), resolved by the flow before anything
        starts, for every container the target starts from now on; kept in memory only (never a label, a state or
        an argv). Refuses (PipelineError) a target that cannot hand them to its containers."""
        ...

    def ensure_database(self) -> None:
        """Make the environment's database reachable where the target runs it (docker); nothing elsewhere."""
        ...

    # ---------------------------------------------------------------- capabilities
    def database(self) -> DatabaseAccess | None:
        """The database to back up before a deploy; None when the environment names none."""
        ...

    def ports(self) -> HostPorts | None:
        """The host ports to claim before a deploy; None when the target listens on none of this machine's."""
        ...

    def traffic_log(self) -> TrafficLog | None:
        """The entry point's access log; None when the target has none (the watch relies on its smoke checks)."""
        ...

    def restorable(self) -> RestorableDatabase | None:
        """The databases a restore switches between; None when the target cannot point its services at another."""
        ...
