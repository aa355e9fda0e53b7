"""`make server` (infra/local/server.sh) started for a test module: in a private directory, on free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, free_port

POOLS = ("sunday-ci", "sunday-deploy", "sunday-e2e")


def basic(auth: str) -> tuple[str, str]:
    """`user:password` as httpx's basic auth pair."""
    user, _, password = auth.partition(":")
    return user, password


@dataclass
class Platform:
    dir: Path
    api: str
    auth: str
    started: str  # what `server.sh start` printed
    seconds: float
    env: dict[str, str]  # what server.sh ran with (its workers and flow runs inherit it)

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    def get(self, path: str, auth: bool = True) -> httpx.Response:
        return httpx.get(self.api + path, auth=basic(self.auth) if auth else None, timeout=30)

    def post(self, path: str, body: Any = None, auth: bool = True) -> httpx.Response:
        return httpx.post(self.api + path, json={} if body is None else body,
                          auth=basic(self.auth) if auth else None, timeout=30)

    def client_env(self, auth: bool = True) -> dict[str, str]:
        env = {**os.environ, "PREFECT_API_URL": self.api}
        env.pop("PREFECT_API_AUTH_STRING", None)
        if auth:
            env["PREFECT_API_AUTH_STRING"] = self.auth
        return env


def server_sh(action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "infra" / "local" / "server.sh"), action], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def started_platform(extra_env: dict[str, str] | None = None) -> Iterator[Platform]:
    """`make server` in a private directory on free ports (with `extra_env`, e.g. SUNDAY_APP_REPO); always
    stopped and removed afterwards. Take the `starts_server` fixture in the fixture that calls it."""
    top = Path(tempfile.mkdtemp(prefix="sunday-platform-"))
    top.chmod(0o711)  # PostgreSQL (user postgres) traverses it to its data directory
    port = free_port()
    env = {**os.environ, "SUNDAY_PLATFORM_DIR": str(top / "platform"), "PREFECT_PORT": str(port),
           "PREFECT_DB_PORT": str(free_port()), "SUNDAY_S3_PORT": str(free_port()),
           "SUNDAY_PROMETHEUS_PORT": str(free_port()), "SUNDAY_ALERTMANAGER_PORT": str(free_port()),
           "SUNDAY_EXPORTER_PORT": str(free_port())}
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_HOME", "SUNDAY_APP_REPO"):
        env.pop(name, None)
    env |= extra_env or {}
    started = time.monotonic()
    try:
        done = server_sh("start", env, timeout=240)
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-3000:]
        auth = (top / "platform" / "api-auth").read_text().strip()
        yield Platform(top / "platform", f"http://127.0.0.1:{port}/api", auth, done.stdout + done.stderr, seconds,
                       env)
    finally:
        stopped = server_sh("stop", env, timeout=180)
        shutil.rmtree(top, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
