"""Shared fixtures: a private SUNDAY_HOME/SUNDAY_ENV_ROOT/PREFECT_HOME, a real Prefect server, git repositories.

Tiers: a test's markers follow from the fixtures it takes (`_FIXTURE_MARKERS`), so they cannot lie.
`docker` (the engine, a registry), `server` (a real Prefect server) and `services` (PostgreSQL, moto_server,
Trivy) are what `make test-fast` leaves out. When a run selects none of them (the fast tier), the
`_FastTierGuard` refuses to start any of those programs or reach the Docker socket, and fails the test that tried.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.server import LocalServer

# A process that a test spawned (multiprocessing's "spawn" imports the test's module, so this one too) is a helper
# of that test: it takes the test process's home, never a new one that nothing would remove.
_HOME = Path(os.environ["SUNDAY_TEST_HOME"] if multiprocessing.parent_process() is not None
             else tempfile.mkdtemp(prefix="sunday-tests-"))
os.environ["SUNDAY_TEST_HOME"] = str(_HOME)
# Before anything imports Prefect: results, settings and workspaces of the tests stay in _HOME.
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["SUNDAY_HOME"] = str(_HOME / "sunday")
os.environ["SUNDAY_ENV_ROOT"] = str(_HOME / "envs")  # never the machine's /var/lib/sunday-release/envs
os.environ["SUNDAY_TRIVY_CACHE"] = str(_HOME / "trivy")
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
os.environ.pop("PREFECT_API_URL", None)
# The tests' Prefect server (fixture prefect_api) takes basic auth: its string is in the environment
# before Prefect reads its settings, so every client (other threads, subprocess workers) sends it.
_SERVER_HOME = _HOME / "server-home"
os.environ["PREFECT_API_AUTH_STRING"] = LocalServer(_SERVER_HOME).auth_string()
# `--dist loadgroup`: the workers (started after this import, with this environment) write the groups here
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["SUNDAY_TEST_GROUPS"] = str(_HOME / "xdist-groups.json")
    os.environ["SUNDAY_TEST_SHARED"] = str(_HOME / "shared")  # what the workers make once for all (each has a _HOME)
_SHARED = Path(os.environ["SUNDAY_TEST_SHARED"])

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
_FAULTS = Path(__file__).resolve().parent / "faults"
DOCKER = "/usr/bin/docker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PREFECT_DATABASE: list[Any] = []  # the session server's PostgreSQL database (tests.pg.Postgres), while it runs


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real `prefect server start` on a free port, basic auth, on a PostgreSQL database of its own (as
    `make server`), stopped afterwards.

    Not SQLite: there, two writes at once (two tasks of a run, two runs) fail with SQLITE_BUSY, the server
    answers 503 and Prefect's client retries 2 s later. A CI of the sample app took 8.4 s on SQLite, 4.5 s here.
    The database is a copy of a migrated template in the run's one cluster (`_prefect_cluster`).
    """
    refuse_in_fast_tier("a Prefect server (prefect_api)")
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    database = _prefect_cluster().new_database()
    server = LocalServer(_SERVER_HOME, port=free_port(), database_url=_asyncpg(database.dsn))
    _PREFECT_DATABASE.append(database)
    try:
        url = server.start(timeout=120)
        auth = server.auth_string()
        os.environ["PREFECT_API_URL"], os.environ["PREFECT_API_AUTH_STRING"] = url, auth
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
            yield url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send the tests' run logs before the server goes away
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
        _PREFECT_DATABASE.clear()


def _asyncpg(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


class _PrefectCluster:
    """The run's one PostgreSQL for the session servers, shared by the xdist workers (SUNDAY_TEST_SHARED).

    The first worker that needs it starts it and migrates a template database; each server then gets a copy
    (`CREATE DATABASE ... TEMPLATE`), so no worker runs the migrations or initdb again. The controller stops it
    at the end (pytest_sessionfinish)."""

    STATE = _SHARED / "prefect-postgres"

    def __init__(self, info: dict[str, Any]) -> None:
        from tests.pg import Postgres

        self.server = Postgres(Path(info["root"]), int(info["port"]), info["dsn"], info["admin_dsn"])

    def new_database(self) -> Any:
        from tests.pg import Postgres

        name = f"prefect_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{secrets.token_hex(3)}".replace("-", "_")
        with _locked(self.STATE):  # a template being copied must have no other session
            self.server.sql(f"CREATE DATABASE {name} TEMPLATE prefect_template OWNER prefect", self.server.admin_dsn)
        return Postgres(self.server.root, self.server.port, self.server.dsn.rsplit("/", 1)[0] + f"/{name}",
                        self.server.admin_dsn)

    @classmethod
    def stop(cls) -> None:
        from tests.pg import stop_postgres

        info = cls.STATE / "cluster.json"
        if info.exists():
            stop_postgres(cls(json.loads(info.read_text())).server)
            info.unlink()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prefect_cluster() -> _PrefectCluster:
    from tests.pg import start_postgres, stop_postgres

    info = _PrefectCluster.STATE / "cluster.json"
    with _locked(_PrefectCluster.STATE):
        if not info.exists():
            pg = start_postgres(user="prefect", db="prefect_template", password=secrets.token_hex(16), schema=False)
            try:
                subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], check=True,
                               capture_output=True, timeout=600,
                               env={**os.environ, "PREFECT_HOME": str(_PrefectCluster.STATE / "migrate-home"),
                                    "PREFECT_SERVER_DATABASE_CONNECTION_URL": _asyncpg(pg.dsn)})
            except BaseException:
                stop_postgres(pg)
                raise
            info.write_text(json.dumps({"root": str(pg.root), "port": pg.port, "dsn": pg.dsn,
                                        "admin_dsn": pg.admin_dsn}))
        return _PrefectCluster(json.loads(info.read_text()))


def prefect_database_dump() -> str:
    """Everything the session's Prefect server (prefect_api) has stored: a `pg_dump` of its database."""
    assert _PREFECT_DATABASE, "the prefect_api fixture is not running"
    return str(_PREFECT_DATABASE[0].dump())


def migrated_prefect_database() -> Path:
    """An empty Prefect database (SQLite) with every migration applied, made once per run for all xdist workers.

    Migrating a new database is most of a server's start (10 of its 15 CPU-seconds here)."""
    template = _SHARED / "prefect-database" / "prefect.db"
    with _locked(template.parent):  # the first worker migrates; the others wait for it, then copy
        if not template.exists():
            work = template.parent / "work"
            subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], check=True,
                           capture_output=True, timeout=600, env={**os.environ, "PREFECT_HOME": str(work)})
            (work / "prefect.db").replace(template)
    return template


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
    refuse_in_fast_tier("the Docker engine (docker_engine)")
    info = subprocess.run([DOCKER, "image", "inspect", "localhost:5000/base/debian:bookworm"],
                          capture_output=True, text=True, check=False)
    if info.returncode != 0:
        pytest.fail("no Docker engine or base image: run `make setup` (bash infra/local/setup.sh all) first")
    return DOCKER


@pytest.fixture(scope="session")
def trivy() -> Path:
    """The venv's Trivy binary, for a test that runs it: such a test is marked `services` (a scan takes seconds)."""
    refuse_in_fast_tier("Trivy (trivy)")
    return Path(sys.executable).parent / "trivy"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool (Debian's prometheus package, which `make setup` installs): its tests are `services`."""
    refuse_in_fast_tier("promtool (promtool)")
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("no promtool: run `make setup` (bash infra/local/setup.sh packages installs prometheus)")
    return found


@pytest.fixture(scope="session")
def starts_server() -> None:
    """Taken by a fixture that starts a Prefect server of its own (`make server`): its tests are marked `server`."""
    refuse_in_fast_tier("a fixture that starts a server (starts_server)")


@pytest.fixture(scope="session")
def starts_services() -> None:
    """Taken by a fixture that starts PostgreSQL, moto_server, nginx or Trivy itself: its tests are `services`."""
    refuse_in_fast_tier("a fixture that starts a service (starts_services)")


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
    refuse_in_fast_tier("a registry (registry)")
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
        # a commit of its own even when another worker or run commits the same tree in the same second: CI
        # tags images by commit, in the shared registry on localhost:5000
        _git(repo, "commit", "-q", "-m", "initial", "-m", f"test repository {secrets.token_hex(6)}")
        return repo

    return make


@pytest.fixture
def git() -> Callable[..., str]:
    return _git


_IMAGES_BEFORE = _SHARED / "images" / "before.json"


def _image_tags() -> set[str] | None:
    """Every `repository:tag` on the Docker engine; None when no engine answers (the fast tier, dockerd stopped)."""
    try:
        done = subprocess.run([DOCKER, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {t for t in done.stdout.split() if not t.endswith(":<none>")} if done.returncode == 0 else None


def _note_images_before() -> None:
    """The engine's tags before any test runs: the first worker to finish collecting writes them (xdist starts
    tests only once every worker has collected)."""
    with _locked(_IMAGES_BEFORE.parent):
        if not _IMAGES_BEFORE.exists() and (tags := _image_tags()) is not None:
            _IMAGES_BEFORE.write_text(json.dumps(sorted(tags)))


def _remove_images_made(session: pytest.Session) -> None:
    """Remove every tag that appeared on the engine while the tests ran (CI's `sunday-ci/*` check images, images
    tagged for the tests' registries), so runs do not pile them up: 2 300 tags after a few days. Their layers stay
    in the build cache. A tag still used by a container is left, and named. The dev stack's `sunday-dev/*` images
    stay: their tag is their content key, and building them again costs a minute of apt-get."""
    if not _IMAGES_BEFORE.exists() or (now := _image_tags()) is None:
        return
    # but the dev stack's images (`sunday-release dev`): tagged by their content, built once and kept for the next run
    made = sorted(t for t in now - set(json.loads(_IMAGES_BEFORE.read_text())) if not t.startswith("sunday-dev/"))
    problems = []
    for start in range(0, len(made), 200):
        done = subprocess.run([DOCKER, "image", "rm", *made[start:start + 200]], capture_output=True, text=True,
                              timeout=300, check=False)
        problems += [line for line in done.stderr.splitlines() if line.strip() and "No such image" not in line]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"removed {len(made)} image tag(s) the tests made" + "".join(f"\n  left: {p}"
                                                                                         for p in problems))


# Every test session of this machine (any clone) holds this lock shared while it runs: the tags that appeared on the
# engine during a session are only its own when no other session ran beside it, so it removes them only then
_SESSIONS_LOCK = Path(tempfile.gettempdir()) / "sunday-release-test-sessions.lock"
_session_lock: list[Any] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        lock = open(_SESSIONS_LOCK, "a")  # held until the session ends
        fcntl.flock(lock, fcntl.LOCK_SH)
        _session_lock.append(lock)


def _alone() -> bool:
    """Whether no other test session runs on this machine (this one's shared lock becomes exclusive)."""
    if not _session_lock:
        return True
    try:
        fcntl.flock(_session_lock[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller (or a run without workers): every worker is done
        _PrefectCluster.stop()
        if _alone():
            _remove_images_made(session)
        elif (reporter := session.config.pluginmanager.get_plugin("terminalreporter")) is not None:
            reporter.write_line("left the image tags made meanwhile: another test session runs on this machine")
    from tests.cli_runner import stop_server

    stop_server()
    shutil.rmtree(_HOME, ignore_errors=True)


# Markers follow from the fixtures a test uses, so they cannot lie: `make test-fast` runs what needs none of them.
_FIXTURE_MARKERS = {
    "docker_engine": "docker", "registry": "docker",  # the Docker engine; a docker-registry process
    "prefect_api": "server", "starts_server": "server",  # a real Prefect server
    "postgres": "services", "s3": "services", "trivy": "services",  # tests/pg.py: PostgreSQL, moto_server; Trivy
    "promtool": "services",  # Debian's prometheus package
    "starts_services": "services",
}
TIER_MARKERS = frozenset({*_FIXTURE_MARKERS.values(), "docker", "server", "services"})


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark each test as it is collected: before any `pytest_collection_modifyitems` (`-m` deselects by these
    markers; pytest-xdist's worker turns `xdist_group` into the node id suffix that `--dist loadgroup` schedules by)."""
    names = set(getattr(item, "fixturenames", ()))
    if _FAULTS in item.path.parents:
        item.add_marker(pytest.mark.faults)
    for fixture, marker in _FIXTURE_MARKERS.items():
        if fixture in names:
            item.add_marker(getattr(pytest.mark, marker))
    if item.config.pluginmanager.hasplugin("xdist") and _shares_a_module_fixture(item):
        # `--dist loadgroup`: the tests of a module-scoped fixture (one deployed app, one `make server`) run
        # on one worker, which sets it up once; every other test goes to whichever worker is free
        item.add_marker(pytest.mark.xdist_group(name=item.nodeid.split("::", 1)[0]))


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs[-1].scope in ("module", "package", "class") for defs in info.name2fixturedefs.values() if defs)


_DURATIONS = Path(__file__).resolve().parent / "durations.json"


def _longest_first(items: list[pytest.Item]) -> None:
    """Order the tests longest first (tests/durations.json), the tests of a module-scoped fixture ahead in their
    own order: the scheduler hands work out in this order, so the run does not end on one worker's long test
    while the others are idle. Unknown tests keep their place after the known ones."""
    try:
        seconds: dict[str, float] = json.loads(_DURATIONS.read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        return
    grouped = float("inf")
    items.sort(key=lambda item: -(grouped if item.get_closest_marker("xdist_group") else seconds.get(item.nodeid, 0)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker (its own collection is what the scheduler hands out: xdist sets its `dist` to "no"),
    longest first; and the group of each grouped test, written for the controller's scheduler (below)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        _longest_first(items)
    if "PYTEST_XDIST_WORKER" not in os.environ or "SUNDAY_TEST_GROUPS" not in os.environ:
        return
    groups = {item.nodeid: str(mark.kwargs["name"]) for item in items
              for mark in item.iter_markers("xdist_group")}
    path = Path(os.environ["SUNDAY_TEST_GROUPS"])
    partial = path.with_name(f"{path.name}.{os.environ['PYTEST_XDIST_WORKER']}")
    partial.write_text(json.dumps(groups))
    partial.replace(path)  # every worker collects the same tests: whichever lands last, the content is the same


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` by the groups the workers found.

    pytest-xdist 3.8 marks a group by renaming the test's node id, which pytest 9 no longer reads (the id lives
    elsewhere): its own loadgroup sends the tests of one module-scoped fixture to several workers, and each sets
    the fixture up again. This scheduler groups by what the workers wrote instead, through xdist's hook.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModuleFixture(LoadScopeScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once, after every worker collected
                path = Path(os.environ["SUNDAY_TEST_GROUPS"])
                self.groups = json.loads(path.read_text()) if path.exists() else {}
            return self.groups.get(nodeid, nodeid)

    return ByModuleFixture(config, log)


# --- the fast tier's guard ------------------------------------------------------------------------------------

# Programs the fast tier never starts (by base name): the Docker client and engine, the servers, Trivy, root.
_FORBIDDEN_PROGRAMS = frozenset({
    "docker", "dockerd", "containerd", "docker-registry", "nginx", "trivy", "moto_server",
    "postgres", "pg_ctl", "initdb", "pg_ctlcluster", "runuser", "sudo",
})
# TCP ports of this machine's shared services: the local registry, the CLI's and `make server`'s Prefect, S3.
_FORBIDDEN_PORTS = frozenset({5000, 4200, 9000})


class _FastTierGuard:
    """An audit hook (sys.addaudithook: it cannot be removed, so it is installed only in a fast-tier run) that
    refuses to start a forbidden program or connect to Docker's socket or a shared service's port, and records
    the attempt: the autouse fixture `_fast_tier_guard` fails the test even if it caught the refusal."""

    def __init__(self) -> None:
        self.active = False
        self.attempts: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:  # called for every audited event: cheap first
        if not self.active:
            return
        if event == "subprocess.Popen":
            what = self._program(args[0], args[1])
        elif event == "socket.connect":
            what = self._address(args[1])
        else:
            return
        if what:
            self.attempts.append(what)
            raise PermissionError(f"the fast tier (no Docker, no servers) may not {what}: take the fixture that "
                                  "provides it (tests/conftest.py _FIXTURE_MARKERS) so the test is marked")

    @staticmethod
    def _program(executable: Any, argv: Any) -> str:
        words = [os.fsdecode(a) for a in ([argv] if isinstance(argv, str | bytes | os.PathLike) else argv or [])]
        program = os.fsdecode(executable) if executable is not None else (words[0] if words else "")
        if os.path.basename(program) in _FORBIDDEN_PROGRAMS:
            return f"run {program}"
        if "prefect" in " ".join(words) and "server" in words and "start" in words:
            return "start a Prefect server"
        return ""

    @staticmethod
    def _address(address: Any) -> str:
        if isinstance(address, str | bytes) and os.fsdecode(address).endswith("docker.sock"):
            return f"connect to {os.fsdecode(address)}"
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in _FORBIDDEN_PORTS:
            return f"connect to {address[0]}:{address[1]}"
        return ""


_GUARD = _FastTierGuard()


def refuse_in_fast_tier(what: str) -> None:
    """Fail loudly when a fixture of the slow tiers is reached in a fast-tier run (e.g. by getfixturevalue)."""
    if _GUARD.active:
        pytest.fail(f"{what} was requested in the fast tier: take the fixture by name, so the test is marked")


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.items and not any(item.get_closest_marker(m) for item in session.items for m in TIER_MARKERS):
        if not _GUARD.active:
            sys.addaudithook(_GUARD)
        _GUARD.active = True
        os.environ["DOCKER_HOST"] = "unix:///nonexistent/fast-tier-docker.sock"  # docker clients, subprocesses too
    elif session.items:
        _note_images_before()


@pytest.fixture(autouse=True)
def _fast_tier_guard() -> Iterator[None]:
    """In the fast tier: fail a test that tried to start a forbidden program or reach a shared service."""
    _GUARD.attempts.clear()
    yield
    if _GUARD.attempts:
        attempts, _GUARD.attempts[:] = list(_GUARD.attempts), []
        pytest.fail(f"the fast tier (no Docker, no servers) was left: {'; '.join(attempts)}")
