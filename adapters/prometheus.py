"""The Prometheus the CLI starts beside its local Prefect server (as `make server` does beside its own).

Debian's `prometheus` with infra/local/prometheus.yml: every replica the docker target runs with a `metrics_path`,
the rules of infra/k8s/monitoring. Its data lives in HOME/prometheus; it listens on 127.0.0.1:SUNDAY_PROMETHEUS_PORT
(9090). A Prometheus that already answers there (`make server`'s) is used as it is.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from adapters.server import _reaped
from sunday_release.prometheus import Prometheus
from sunday_release.settings import Settings
from sunday_release.targets.db_exporter import targets_dir

__all__ = ["CONFIG", "LocalPrometheus", "write_config"]

CONFIG = Path(__file__).resolve().parent.parent / "infra" / "local" / "prometheus.yml"


def write_config(dest: Path, alertmanager: str | None = None, exporter: str | None = None,
                 env_root: Path | None = None) -> Path:
    """infra/local/prometheus.yml at `dest`, its rule paths made absolute, sending alerts to `alertmanager` and
    scraping the pipeline's `exporter` (its /metrics and its /router/metrics; host:port each) when given, and the
    databases' exporters announced under `env_root` (default SUNDAY_ENV_ROOT's)."""
    config = yaml.safe_load(CONFIG.read_text())
    announced = targets_dir(env_root or Settings.from_env().env_root)
    config["rule_files"] = [str((CONFIG.parent / rule).resolve()) for rule in config.get("rule_files", [])]
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    for job in config["scrape_configs"]:
        if job["job_name"] in ("sunday-pipeline", "sunday-routers"):
            job["static_configs"] = [{"targets": [exporter] if exporter else []}]
        for discovery in job.get("file_sd_configs", []):
            discovery["files"] = [str(announced / Path(pattern).name) for pattern in discovery["files"]]
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


class LocalPrometheus:
    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home / "prometheus"
        self.port = port or int(os.environ.get("SUNDAY_PROMETHEUS_PORT", "9090"))
        self.pidfile = self.home / "prometheus.pid"
        self.logfile = self.home / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return Prometheus(self.url, timeout=2).ready()

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 30) -> str | None:
        """The URL of the Prometheus on the port, started if none answers; None (and why, on stderr by the caller)
        when the binary is missing or it does not come up: the pipeline runs without metrics then."""
        if self.ready():
            return self.url
        binary = shutil.which("prometheus")
        if binary is None:
            return None
        if self.pid() is None:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            log = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                config = write_config(self.home / "prometheus.yml")
                proc = subprocess.Popen(
                    [binary, f"--config.file={config}", f"--storage.tsdb.path={self.home / 'data'}",
                     "--storage.tsdb.retention.time=15d", f"--web.listen-address=127.0.0.1:{self.port}"],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            finally:
                os.close(log)
            self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return self.url
            if self.pid() is None:
                break
            time.sleep(0.2)
        self.stop()
        return None

    def stop(self) -> bool:
        """Stop the Prometheus `start` started; False when none was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if _reaped(pid) or self.pid() is None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            _reaped(pid)
        self.pidfile.unlink(missing_ok=True)
        return True


if __name__ == "__main__":  # server.sh: python -m adapters.prometheus DEST [ALERTMANAGER [EXPORTER]]
    arguments = [*sys.argv[1:], "", ""]
    write_config(Path(arguments[0]), arguments[1] or None, arguments[2] or None)
