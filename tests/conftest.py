"""Shared fixtures: a private SUNDAY_HOME/PREFECT_HOME, a real Prefect server, git repositories."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sunday_release.server import LocalServer

_HOME = Path(tempfile.mkdtemp(prefix="sunday-tests-"))
# Before anything imports Prefect: results, settings and workspaces of the tests stay in _HOME.
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["SUNDAY_HOME"] = str(_HOME / "sunday")
os.environ["SUNDAY_TRIVY_CACHE"] = str(_HOME / "trivy")
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
os.environ.pop("PREFECT_API_URL", None)
# The tests' Prefect server (fixture prefect_api) takes basic auth: its string is in the environment
# before Prefect reads its settings, so every client (other threads, subprocess workers) sends it.
_SERVER_HOME = _HOME / "server-home"
os.environ["PREFECT_API_AUTH_STRING"] = LocalServer(_SERVER_HOME).auth_string()

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DOCKER = "/usr/bin/docker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real `prefect server start` on a free port (SQLite in a temp dir, basic auth), stopped afterwards."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    server = LocalServer(_SERVER_HOME, port=free_port())
    url = server.start(timeout=120)
    auth = server.auth_string()
    os.environ["PREFECT_API_URL"], os.environ["PREFECT_API_AUTH_STRING"] = url, auth
    try:
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
            yield url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send the tests' run logs before the server goes away
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def read_events(name: str, resource_id: str, timeout: float = 15) -> list[Any]:
    """The server's events called `name` about `resource_id`, polled until some arrive or `timeout` passes."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(filter=EventFilter(event=EventNameFilter(name=[name]),
                                                         resource=EventResourceFilter(id=[resource_id])),
                                      limit=50)  # the client's default (100) is over the server's maximum
            if page.events or time.monotonic() > deadline:
                return list(page.events)
            time.sleep(0.5)


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The Docker engine, the local registry and the base image (`make test` sets them up)."""
    info = subprocess.run([DOCKER, "image", "inspect", "localhost:5000/base/debian:bookworm"],
                          capture_output=True, text=True, check=False)
    if info.returncode != 0:
        pytest.fail("no Docker engine or base image: run `make setup` (bash infra/local/setup.sh all) first")
    return DOCKER


@pytest.fixture(scope="session", autouse=True)
def clean_trivy_db() -> Path:
    """The session's offline Trivy DB: one FAKE advisory, for a package no image has (scans pass)."""
    from tests.deployed_ci import write_clean_trivy_db

    return write_clean_trivy_db(Path(os.environ["SUNDAY_TRIVY_CACHE"]))


class Registry:
    """A real `docker-registry serve` on a free port of 127.0.0.1, with its own storage."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = root / "config.yml"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
            f"http: {{addr: {self.address}}}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        import httpx

        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if httpx.get(f"http://{self.address}/v2/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An empty registry of the test's own, torn down afterwards."""
    reg = Registry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """make_repo(source_dir, edit=fn) → a git repository (branch main, one commit) of a copy of source_dir."""

    def make(source: Path, edit: Callable[[Path], None] | None = None, name: str = "repo") -> Path:
        repo = tmp_path / name
        shutil.copytree(source, repo, ignore=shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache"))
        if edit:
            edit(repo)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "initial")
        return repo

    return make


@pytest.fixture
def git() -> Callable[..., str]:
    return _git


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


# Markers follow from the fixtures a test uses, so they cannot lie: `make test-fast` runs what needs neither.
_FIXTURE_MARKERS = {"docker_engine": "docker", "registry": "docker", "prefect_api": "server"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for fixture, marker in _FIXTURE_MARKERS.items():
            if fixture in names:
                item.add_marker(getattr(pytest.mark, marker))
