"""The local Prefect server the CLI talks to when PREFECT_API_URL is not set (started once, reused)."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sunday_release.errors import PipelineError
from sunday_release.tls import tls_context

__all__ = ["LocalServer"]

AUTH_USER = "sunday"


class LocalServer:
    """A `prefect server start` process on 127.0.0.1 with its own PREFECT_HOME under SUNDAY_HOME.

    Loopback is reachable by every local user, so the server takes Prefect's basic authentication
    (PREFECT_SERVER_API_AUTH_STRING): its string is generated once into HOME/server/api-auth (0600),
    and a client sets it as PREFECT_API_AUTH_STRING. HOME/server and its PREFECT_HOME (prefect.db,
    the log) are the owner's only (0700, files 0600).
    """

    def __init__(self, home: Path, port: int | None = None, database_url: str | None = None) -> None:
        """`database_url`: a PostgreSQL database (`postgresql+asyncpg://...`) instead of PREFECT_HOME's SQLite file.

        On SQLite, two writes at once (two runs, or two tasks of one run) can fail with SQLITE_BUSY: the server
        answers 503 and Prefect's client retries 2 s later, so a run stalls for 2 s at each collision.
        """
        self.database_url = database_url
        self.home = home / "server"
        self.port = port or int(os.environ.get("SUNDAY_SERVER_PORT", "4200"))
        self.pidfile = self.home / "server.pid"
        self.logfile = self.home / "server.log"
        self.auth_file = self.home / "api-auth"
        self.prefect_home = self.home / "prefect"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _secure_home(self) -> None:
        """Create HOME/server and its PREFECT_HOME 0700; make what is already in them the owner's only."""
        for directory in (self.home, self.prefect_home):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)
        for path in (self.logfile, self.pidfile, self.auth_file, *self.prefect_home.glob("prefect.db*")):
            if path.exists() and not path.is_symlink():
                path.chmod(0o600)

    def auth_string(self) -> str:
        """The server's basic-auth string `sunday:RANDOM`, generated once into HOME/server/api-auth (0600)."""
        self._secure_home()
        try:
            existing = self.auth_file.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        # written aside, then linked into place: a concurrent CLI either wins or reads the winner's string
        tmp = self.home / f".api-auth.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{AUTH_USER}:{secrets.token_urlsafe(24)}\n")
        try:
            os.link(tmp, self.auth_file)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return self.auth_file.read_text().strip()

    def _status(self, auth: str | None) -> int | None:
        """The HTTP status of an API read (with `auth` when given); None when nothing answers."""
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        try:
            return httpx.get(f"{self.api_url}/admin/version", headers=headers, timeout=2,
                             verify=tls_context()).status_code
        except httpx.HTTPError:
            return None

    def _answer(self, auth: str) -> str:
        """`ok` (takes `auth` and requires it), `open` (no authentication), `other` (refuses `auth`),
        `down` (nothing answers) or `starting`."""
        status = self._status(auth)
        if status is None:
            return "down"
        if status == 401:
            return "other"
        if status != 200:
            return "starting"
        return "ok" if self._status(None) == 401 else "open"

    def healthy(self) -> bool:
        """The server answers, takes this home's auth string and refuses requests without it."""
        try:
            auth = self.auth_file.read_text().strip()
        except OSError:
            return False  # no string yet: no server of this home runs with one
        return bool(auth) and self._answer(auth) == "ok"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 90) -> str:
        """Start the server unless it already answers; return its API URL.

        A server of this home that runs without authentication (started before it was configured) or
        with another string is restarted; another process's server on the port is an error.
        """
        auth = self.auth_string()
        answer = self._answer(auth)
        if answer == "ok":
            return self.api_url
        if answer in ("open", "other"):
            if self.pid() is None:
                raise PipelineError(
                    f"a Prefect server on 127.0.0.1:{self.port} is not this one ("
                    + ("it has no authentication" if answer == "open" else f"it refuses the string in {self.auth_file}")
                    + "): stop it or set SUNDAY_SERVER_PORT")
            self.stop()
        if self.pid() is None:
            # the UI's JavaScript calls the API at PREFECT_UI_API_URL, which defaults to port 4200, not --port
            env = {**os.environ, "PREFECT_HOME": str(self.prefect_home),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
                   "PREFECT_UI_API_URL": self.api_url,
                   "PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth}
            env.pop("PREFECT_API_URL", None)
            if self.database_url:
                env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
            log = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                     "--port", str(self.port)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True, umask=0o077,  # prefect.db and the rest: the owner's only
                )
            finally:
                os.close(log)
            self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return self.api_url
            if self.pid() is None:
                break
            time.sleep(0.5)
        self.stop()  # not left half-started: the next start begins afresh
        raise PipelineError(f"the local Prefect server did not start on port {self.port} within {timeout:.0f}s; "
                            f"see {self.logfile}")

    def stop(self) -> bool:
        """Stop the server started by `start`; False when none was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if _reaped(pid) or self.pid() is None:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
            _reaped(pid)
        self.pidfile.unlink(missing_ok=True)
        return True


def _reaped(pid: int) -> bool:
    """True when `pid` is this process's child and has exited (it is reaped here). A child that exited stays a
    zombie until its parent waits, and `kill(pid, 0)` still finds a zombie: without this, `stop` in the process
    that started the server waited out its whole grace period, then sent SIGKILL to a process already gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # not our child: its own parent (or init) reaps it
    return done == pid
