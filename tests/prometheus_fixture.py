"""A real Prometheus (Debian's package) for a test: started on a free port with the given configuration, stopped
afterwards. A test that uses it takes the `promtool` fixture too (same package; marks it `services`)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from adapters.prometheus import write_config
from tests.conftest import free_port


@contextmanager
def running_prometheus(home: Path, config: dict[str, Any]) -> Iterator[str]:
    """Prometheus with `config` (written to HOME/prometheus.yml), its data in HOME/data; yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, "no prometheus: run `make setup` (bash infra/local/setup.sh packages)"
    home.mkdir(parents=True, exist_ok=True)
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = home / "prometheus.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([binary, f"--config.file={home / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def platform_config() -> dict[str, Any]:
    """The platform's Prometheus configuration (infra/local/prometheus.yml) as `make server` writes it
    (adapters/prometheus.py `write_config`: rule paths absolute, the databases announced under this session's
    SUNDAY_ENV_ROOT)."""
    with tempfile.TemporaryDirectory() as scratch:
        return dict(yaml.safe_load(write_config(Path(scratch) / "prometheus.yml").read_text()))


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Until `url`/-/ready answers 200 (Prometheus, Alertmanager); the log in the failure when it dies or is late."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
