"""An environment's PostgreSQL on the docker target: a private cluster (initdb + pg_ctl) on its own port.

It stands in for RDS and outlives deployments. The server runs as the `postgres` OS user (it
refuses root); containers reach it through the Docker bridge gateway with a password kept in a
0600 file of the environment's directory. The same cluster keeps the environment's release record
(database `sunday_release`, see `env_record`), which the application's role cannot connect to.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from sunday_release.errors import PipelineError
from sunday_release.runner import CommandResult, run

__all__ = ["LocalDatabase"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class LocalDatabase:
    """The cluster in `root` serving database `name` on `port`."""

    root: Path
    port: int
    name: str = "sunday"
    user: str = "sunday"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def password(self) -> str:
        secret = self.root / "password"
        if not secret.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            secret.write_text(secrets.token_urlsafe(24))
            secret.chmod(0o600)
        return secret.read_text().strip()

    def dsn(self, host: str = "127.0.0.1", database: str | None = None) -> str:
        """The application's connection string to `database` (default `name`); it holds the password: never log it."""
        return f"postgresql://{self.user}:{self.password()}@{host}:{self.port}/{database or self.name}"

    def _as_postgres(self, *argv: str, check: bool = True) -> str:
        return run(["runuser", "-u", "postgres", "--", *argv], timeout=120, check=check).stdout

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        return run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "status", "-D", str(self.data)],
                   check=False).returncode == 0

    def start(self) -> bool:
        """Start the existing cluster if it is not running; False when there is no cluster (never created)."""
        if not (self.data / "PG_VERSION").exists():
            return False
        if not self.running():
            self._as_postgres(str(PG_BIN / "pg_ctl"), "start", "-w", "-D", str(self.data), "-l",
                              str(self.data / "server.log"))
        return True

    def psql(self, script: str, database: str) -> CommandResult:
        """Run `script` (on stdin: values never reach argv) on `database` as the `postgres` OS user, unchecked.

        Through the cluster's Unix socket (in its data directory, which only `postgres` and root can
        enter); `-X`: no psqlrc; `-qAt`: bare rows. psql exits 2 when it could not connect.
        """
        return run(["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-X", "-qAt", "-h", str(self.data),
                    "-p", str(self.port), "-d", database], input=script, timeout=120, check=False)

    def ensure(self, bridge_ip: str) -> None:
        """Create the cluster, role and database once; start the server if it is not running."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        if run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.root)], check=False).returncode != 0:
            raise PipelineError(f"{self.root} is not reachable by the postgres OS user: set SUNDAY_DB_ROOT to a "
                                "directory whose parents it can enter")
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                              "--auth-host=scram-sha-256", "-E", "UTF8")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(f"\nlisten_addresses = '127.0.0.1,{bridge_ip}'\nport = {self.port}\n"
                           f"unix_socket_directories = '{self.data}'\n")
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 172.16.0.0/12 scram-sha-256\n")
        self.start()
        if fresh:
            password = self.password().replace("'", "''")
            # CREATEDB: the backup's restore check restores into a scratch database
            self._psql(f"CREATE ROLE {self.user} LOGIN CREATEDB PASSWORD '{password}'")
            self._psql(f"CREATE DATABASE {self.name} OWNER {self.user}")

    def _psql(self, sql: str) -> None:
        out = run(["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-h", str(self.data), "-p",
                   str(self.port), "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt"], input=sql, check=False)
        if not out.ok:
            raise PipelineError(f"database setup failed on port {self.port}: {out.stderr.strip()[:300]}")

    def stop(self) -> None:
        if self.running():
            self._as_postgres(str(PG_BIN / "pg_ctl"), "stop", "-m", "fast", "-D", str(self.data))
