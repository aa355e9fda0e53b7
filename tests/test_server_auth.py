"""The Prefect API takes basic authentication: the CLI's local server and `make server` (infra/local/server.sh)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.server import LocalServer
from adapters.webhook import repository_slug, sign
from tests.conftest import _SERVER_HOME, ROOT, free_port, migrated_prefect_database
from tests.platform_fixture import POOLS, Platform, basic, started_platform
from tests.waiting import wait_for_healthz

CLI = [sys.executable, "-m", "adapters.cli"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the CLI's local server -----------------------------------------------------------------------


def test_the_local_server_refuses_requests_without_its_auth_string(prefect_api: str) -> None:
    server = LocalServer(_SERVER_HOME)
    auth = server.auth_string()
    assert os.environ["PREFECT_API_AUTH_STRING"] == auth  # what every test's client sends
    for method, path in (("POST", "/flows/filter"), ("POST", "/block_documents/filter"), ("GET", "/admin/version"),
                         ("POST", "/deployments/filter")):
        assert httpx.request(method, prefect_api + path, json={} if method == "POST" else None,
                             timeout=10).status_code == 401, path
    assert httpx.post(f"{prefect_api}/flows/filter", json={}, auth=("sunday", "wrong"), timeout=10).status_code == 401
    assert httpx.post(f"{prefect_api}/flows/filter", json={}, auth=basic(auth), timeout=10).status_code == 200
    # Prefect lets GET /health through for probes; it tells nothing but "up"
    assert httpx.get(f"{prefect_api}/health", timeout=10).status_code == 200


def test_the_local_servers_home_is_the_owners_only(tmp_path: Path, starts_server: None) -> None:
    """The CLI's server as users run it: SQLite in its home (a copy of a migrated database, not migrated again)."""
    server = LocalServer(tmp_path, port=free_port())
    server.auth_string()  # makes the home, 0700
    shutil.copyfile(migrated_prefect_database(), server.prefect_home / "prefect.db")
    try:
        server.start(timeout=120)
        assert httpx.post(f"{server.api_url}/flows/", json={"name": "owners-only"}, auth=basic(server.auth_string()),
                          timeout=10).status_code in (200, 201)  # a write: SQLite's -wal and -shm files exist
        home = tmp_path / "server"
        assert _mode(home) == 0o700 and _mode(home / "prefect") == 0o700
        assert _mode(home / "api-auth") == 0o600
        assert _mode(home / "server.log") & 0o077 == 0
        databases = list((home / "prefect").glob("prefect.db*"))
        assert len(databases) == 3 and all(_mode(db) & 0o077 == 0 for db in databases), \
            [(db, oct(_mode(db))) for db in databases]
    finally:
        server.stop()


def test_the_events_socket_refuses_a_client_without_the_string(prefect_api: str) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    socket_url = prefect_api.replace("http://", "ws://") + "/events/in"
    for token in (None, "sunday:wrong"):
        with connect(socket_url, subprotocols=["prefect"], open_timeout=10) as ws:  # type: ignore[list-item]
            ws.send(json.dumps({"type": "auth", "token": token}))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, token


def test_stop_in_the_process_that_started_the_server_ends_it_with_sigterm(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The starter's own child exits on SIGTERM but stays a zombie until it is waited for: `stop` reaps it, and
    never waits out its grace period to SIGKILL a process that is already gone (the tests' server did, 10 s)."""
    server = LocalServer(tmp_path, port=free_port())
    server.auth_string()  # the home, 0700
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    server.pidfile.write_text(str(child.pid))
    sent: list[int] = []
    real_killpg = os.killpg

    def killpg(pgid: int, sig: int) -> None:
        sent.append(sig)
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", killpg)
    try:
        assert server.stop() is True
        assert sent == [signal.SIGTERM]
        assert server.pid() is None and not server.pidfile.exists()
        with pytest.raises(ChildProcessError):
            os.waitpid(child.pid, os.WNOHANG)  # already reaped by stop
        child.returncode = -signal.SIGTERM  # (Popen would otherwise try to reap it again)
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()


def test_an_existing_home_is_made_the_owners_only(tmp_path: Path) -> None:
    home = tmp_path / "server"
    (home / "prefect").mkdir(parents=True)
    home.chmod(0o755)
    (home / "prefect").chmod(0o755)
    db = home / "prefect" / "prefect.db"
    db.write_text("")
    db.chmod(0o644)
    server = LocalServer(tmp_path, port=free_port())
    auth = server.auth_string()
    assert auth.startswith("sunday:") and len(auth) > 30 and server.auth_string() == auth  # generated once
    assert (_mode(home), _mode(home / "prefect"), _mode(db), _mode(home / "api-auth")) == (0o700, 0o700, 0o600, 0o600)
    assert not server.healthy()  # nothing answers on its port


@pytest.mark.parametrize(("status", "why"), [(200, "it has no authentication"), (401, "it refuses the string")])
def test_another_processs_server_on_the_port_is_never_used(tmp_path: Path, status: int, why: str) -> None:
    """An open server (or one with another string) that is not this home's: an error, not a silent fallback."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    from sunday_release.errors import PipelineError

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    other = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        server = LocalServer(tmp_path, port=other.server_address[1])
        assert not server.healthy()
        with pytest.raises(PipelineError, match=why):
            server.start(timeout=5)
    finally:
        other.shutdown()
        other.server_close()


def test_the_cli_keeps_a_callers_auth_string_for_another_server(tmp_path: Path) -> None:
    """Without PREFECT_API_URL the CLI would use its local server: a string meant for another one is a mistake."""
    env = {**os.environ, "SUNDAY_HOME": str(tmp_path / "home"), "PREFECT_API_AUTH_STRING": "admin:for-another-server"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([*CLI, "dora", "--json"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert "PREFECT_API_AUTH_STRING is set but PREFECT_API_URL is not" in done.stderr
    assert "for-another-server" not in done.stderr + done.stdout



@pytest.mark.parametrize("argv", [["dora", "--json"], ["ci", "--repo", "REPO", "--ref", "main"]])
def test_an_unreachable_server_is_named_before_a_command_starts(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    """PREFECT_API_URL where nothing answers: one line naming it, exit 1 — not a Prefect/httpx traceback."""
    from adapters.cli import main

    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path)], check=True)  # a repository the CLI takes
    argv = [str(tmp_path) if a == "REPO" else a for a in argv]

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the Prefect API at PREFECT_API_URL={url}" in err and "Traceback" not in err


# --- make server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(starts_server: None) -> Iterator[Platform]:
    """`make server` in a private directory on free ports; always stopped and removed afterwards."""
    with started_platform() as running:
        yield running


@pytest.mark.docker
def test_make_server_keeps_its_secrets_to_itself(platform: Platform) -> None:
    print(f"server.sh start took {platform.seconds:.1f} s")
    assert _mode(platform.dir) == 0o710 and platform.dir.group() == "postgres"
    assert _mode(platform.dir / "api-auth") == 0o600 and _mode(platform.dir / "db-password") == 0o600
    assert _mode(platform.dir / "logs") == 0o700
    assert all(_mode(log) == 0o600 for log in (platform.dir / "logs").iterdir())
    assert _mode(platform.dir / "prefect") == 0o700
    assert platform.auth.startswith("admin:") and len(platform.auth) > 20
    assert platform.auth.partition(":")[2] not in platform.started  # never printed
    assert f"{platform.dir / 'api-auth'}" in platform.started and "export" in platform.started


@pytest.mark.docker
def test_make_server_refuses_requests_without_the_auth_string(platform: Platform) -> None:
    assert platform.get("/admin/version", auth=False).status_code == 401
    for path in ("/deployments/filter", "/flow_runs/filter", "/block_documents/filter", "/variables/filter"):
        assert platform.post(path, auth=False).status_code == 401, path
    assert httpx.post(f"{platform.api}/deployments/filter", json={}, auth=("admin", "guess"), timeout=30
                      ).status_code == 401
    assert platform.get("/health", auth=False).status_code == 200  # Prefect's unauthenticated probe
    listed = platform.post("/deployments/filter")
    assert listed.status_code == 200, listed.text
    assert {"ci", "cd-staging", "cd-production", "rollback", "e2e-nightly"} <= {d["name"] for d in listed.json()}


@pytest.mark.docker
def test_make_servers_workers_are_online_with_the_string(platform: Platform) -> None:
    deadline = time.monotonic() + 60
    while True:
        online = {pool: [w["status"] for w in platform.post(f"/work_pools/{pool}/workers/filter").json()]
                  for pool in POOLS}
        if all("ONLINE" in statuses for statuses in online.values()):
            break
        assert time.monotonic() < deadline, online
        time.sleep(1)


def _webhook(platform: Platform, port: int, auth: bool, home: Path) -> subprocess.Popen[str]:
    env = {**platform.client_env(auth), "SUNDAY_WEBHOOK_SECRET": "webhook-test-secret", "SUNDAY_HOME": str(home)}
    return subprocess.Popen([*CLI, "webhook", "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.docker
def test_the_webhook_receiver_emits_to_make_server_with_the_string(platform: Platform, tmp_path: Path) -> None:
    # the ci deployment's trigger would start a CI run on this push: its pool holds it
    assert httpx.patch(f"{platform.api}/work_pools/sunday-ci", json={"is_paused": True}, auth=basic(platform.auth),
                       timeout=30).status_code == 204
    refused = _webhook(platform, free_port(), auth=False, home=tmp_path / "no-auth")
    _, stderr = refused.communicate(timeout=120)
    assert refused.returncode == 1 and "cannot read the Secret block" in stderr, stderr

    port = free_port()
    proc = _webhook(platform, port, auth=True, home=tmp_path / "auth")
    repo = f"https://git.example.com/acme/shop-{uuid.uuid4().hex[:8]}.git"
    try:
        wait_for_healthz(proc, port)
        body = json.dumps({"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567",
                           "repository": {"clone_url": repo}, "pusher": {"name": "octocat"}}).encode()
        response = httpx.post(f"http://127.0.0.1:{port}/webhook", content=body, timeout=30, headers={
            "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(b"webhook-test-secret", body)})
        assert response.status_code == 202 and response.json()["status"] == "accepted", response.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert platform.auth.partition(":")[2] not in stderr

    query = {"filter": {"event": {"name": ["git.push"]},
                        "resource": {"id": [f"git.repository.{repository_slug(repo)}"]}}, "limit": 10}
    deadline = time.monotonic() + 30
    while not (events := platform.post("/events/filter", query).json()["events"]):
        assert time.monotonic() < deadline, "the server did not store the git.push event"
        time.sleep(0.5)
    assert [e["payload"]["ref"] for e in events] == ["main"]


@pytest.mark.docker
def test_the_cli_works_against_make_server_with_the_string_only(platform: Platform) -> None:
    done = subprocess.run([*CLI, "dora", "--json"], env=platform.client_env(auth=True), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert isinstance(json.loads(done.stdout), dict)
    refused = subprocess.run([*CLI, "dora", "--json"], env=platform.client_env(auth=False), cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-2000:]
