"""An environment's PostgreSQL, measured: Debian's `prometheus-postgres-exporter` beside its cluster.

One exporter per environment (Debian 12's 0.11 has no multi-target `/probe`). It connects as `postgres` through the
cluster's Unix socket in its data directory (local trust: no password anywhere, in argv, environment or file),
listens on 127.0.0.1 on a free port, and announces itself to the platform's Prometheus with a file of targets,
ENV_ROOT/.prometheus/postgres-PROJECT.ENV.json (`file_sd_configs` of job sunday-databases, labelled project, env
and instance PROJECT/ENV, so a restarted exporter on another port stays one series).

Its life is the cluster's: a small shell watchdog starts it and stops it, and removes its file of targets, when
the cluster's postmaster is gone (whoever stopped it: `teardown`, `pg_ctl`, a reboot) or when it is told to stop.
Without the package the environment runs unmeasured, as before.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sunday_release.targets.local_db import LocalDatabase

__all__ = ["EXPORTER", "DatabaseExporter", "targets_dir"]

EXPORTER = "prometheus-postgres-exporter"

# $1 the postmaster's pid file, $2 the file of targets; the exporter's argv follows. The watchdog is the process
# group's leader: `stop` signals the group.
_WATCHDOG = r"""
pidfile=$1 targets=$2; shift 2
"$@" & exporter=$!
trap 'kill $exporter 2>/dev/null; rm -f "$targets"; exit 0' TERM INT
while kill -0 "$(head -n1 "$pidfile" 2>/dev/null)" 2>/dev/null && kill -0 $exporter 2>/dev/null; do sleep 2; done
kill $exporter 2>/dev/null; rm -f "$targets"
"""


def targets_dir(env_root: Path) -> Path:
    """Where environments announce their exporters to the platform's Prometheus."""
    return env_root / ".prometheus"


@dataclass(frozen=True)
class DatabaseExporter:
    db: LocalDatabase
    project: str
    env: str
    env_root: Path

    @property
    def targets(self) -> Path:
        return targets_dir(self.env_root) / f"postgres-{self.project}.{self.env}.json"

    @property
    def pidfile(self) -> Path:
        return self.env_root / self.project / self.env / "postgres-exporter.pid"

    def pid(self) -> int | None:
        """The watchdog's pid while it runs."""
        try:
            pid = int(self.pidfile.read_text())
            if b"postgres-exporter" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None  # another process took the pid
            return pid
        except (OSError, ValueError):
            return None

    def address(self) -> str | None:
        """host:port the exporter serves on, from its file of targets."""
        try:
            return str(json.loads(self.targets.read_text())[0]["targets"][0])
        except (OSError, ValueError, LookupError, TypeError):
            return None

    def ensure(self) -> str | None:
        """Start the exporter of the (running) cluster unless it runs; its address, None without the package."""
        binary = shutil.which(EXPORTER)
        if binary is None:
            return None
        if self.pid() is not None and (address := self.address()) is not None:
            return address
        self.stop()
        port = _free_port()
        source = f"host={shlex.quote(str(self.db.data))} port={self.db.port} user=postgres dbname=postgres " \
                 "sslmode=disable"
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(self.pidfile.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            watchdog = subprocess.Popen(
                ["sh", "-c", _WATCHDOG, "postgres-exporter", str(self.db.data / "postmaster.pid"), str(self.targets),
                 binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATA_SOURCE_NAME": source},
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            os.close(log)
        self.pidfile.write_text(str(watchdog.pid))
        self.targets.parent.mkdir(parents=True, exist_ok=True)
        entry = [{"targets": [f"127.0.0.1:{port}"],
                  "labels": {"project": self.project, "env": self.env, "instance": f"{self.project}/{self.env}"}}]
        partial = self.targets.with_suffix(".json.new")
        partial.write_text(json.dumps(entry))
        partial.replace(self.targets)  # Prometheus never reads half a file
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop the exporter (and its watchdog), remove its file of targets."""
        pid = self.pid()
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        self.targets.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reaps it when it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
