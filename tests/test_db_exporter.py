"""An environment's PostgreSQL exporter (sunday_release/targets/db_exporter.py), for real: Debian's
prometheus-postgres-exporter on a real cluster (LocalDatabase, as the docker target makes it), found by a real
Prometheus through the platform's job sunday-databases, and gone with the cluster however the cluster stops."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from adapters.prometheus import write_config
from sunday_release.prometheus import Prometheus
from sunday_release.targets.db_exporter import DatabaseExporter
from sunday_release.targets.local_db import PG_BIN, LocalDatabase
from tests.conftest import free_port
from tests.prometheus_fixture import running_prometheus


def _until(condition: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def _metrics(address: str) -> str:
    try:
        return httpx.get(f"http://{address}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


@pytest.fixture
def cluster() -> Iterator[LocalDatabase]:
    root = Path(tempfile.mkdtemp(prefix="sunday-db-", dir="/tmp"))
    root.chmod(0o755)  # the postgres OS user must reach it
    db = LocalDatabase(root / "shop" / "staging", free_port())
    db.ensure("127.0.0.1")
    try:
        yield db
    finally:
        db.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_the_exporter_is_found_by_prometheus_and_goes_with_its_cluster(
        promtool: str, cluster: LocalDatabase, tmp_path: Path) -> None:
    assert shutil.which("prometheus-postgres-exporter"), "run `make setup` (infra/local/setup.sh packages)"
    env_root = tmp_path / "envs"
    exporter = DatabaseExporter(cluster, "shop", "staging", env_root)
    address = exporter.ensure()
    assert address is not None
    _until(lambda: "\npg_up 1" in _metrics(address), "the exporter reads the cluster (pg_up 1)")
    watchdog = exporter.pid()
    assert watchdog is not None and exporter.ensure() == address and exporter.pid() == watchdog  # started once
    environ = Path(f"/proc/{watchdog}/environ").read_bytes()
    assert cluster.password().encode() not in environ and b"password" not in environ  # the socket, no secret

    config = write_config(tmp_path / "prom" / "prometheus.yml", env_root=env_root)
    settings = yaml.safe_load(config.read_text())
    settings["scrape_configs"] = [job for job in settings["scrape_configs"] if job["job_name"] == "sunday-databases"]
    settings["scrape_configs"][0]["scrape_interval"] = "1s"
    with running_prometheus(tmp_path / "prom", settings) as url:
        prometheus, seen = Prometheus(url), []

        def up() -> bool:
            seen[:] = prometheus.query('pg_up{job="sunday-databases"}')
            return bool(seen)
        _until(up, "Prometheus scrapes the announced exporter", timeout=30)
        ((labels, value),) = seen
        assert value == 1.0 and (labels["project"], labels["env"], labels["instance"]) == ("shop", "staging",
                                                                                            "shop/staging")

    # the cluster stopped behind the pipeline's back (as a test's teardown does): the exporter goes with it
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "stop", "-m", "immediate", "-D",
                    str(cluster.data)], check=True, capture_output=True)
    _until(lambda: exporter.pid() is None and not exporter.targets.exists(), "the watchdog stops the exporter")
    assert _metrics(address) == ""

    # started again, then stopped by the pipeline
    assert cluster.start()
    address = exporter.ensure()
    assert address is not None and exporter.targets.exists()
    _until(lambda: "\npg_up 1" in _metrics(address), "the exporter runs again")
    exporter.stop()
    assert exporter.pid() is None and not exporter.targets.exists() and _metrics(address) == ""
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).startswith("sh\0-c\0") and
                str(exporter.targets).encode() in Path(f"/proc/{p}/cmdline").read_bytes()]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
