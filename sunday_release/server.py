"""The local Prefect server the CLI talks to when PREFECT_API_URL is not set (started once, reused)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sunday_release.errors import PipelineError

__all__ = ["LocalServer"]


class LocalServer:
    """A `prefect server start` process on 127.0.0.1 with its own PREFECT_HOME under SUNDAY_HOME."""

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home / "server"
        self.port = port or int(os.environ.get("SUNDAY_SERVER_PORT", "4200"))
        self.pidfile = self.home / "server.pid"
        self.logfile = self.home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 90) -> str:
        """Start the server unless it already answers; return its API URL."""
        if self.healthy():
            return self.api_url
        if self.pid() is None:
            self.home.mkdir(parents=True, exist_ok=True)
            # the UI's JavaScript calls the API at PREFECT_UI_API_URL, which defaults to port 4200, not --port
            env = {**os.environ, "PREFECT_HOME": str(self.home / "prefect"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
                   "PREFECT_UI_API_URL": self.api_url}
            env.pop("PREFECT_API_URL", None)
            with open(self.logfile, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                     "--port", str(self.port)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True,
                )
            self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return self.api_url
            if self.pid() is None:
                break
            time.sleep(0.5)
        raise PipelineError(f"the local Prefect server did not start on port {self.port}; see {self.logfile}")

    def stop(self) -> bool:
        """Stop the server started by `start`; False when none was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if self.pid() is None:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        return True
