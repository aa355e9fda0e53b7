"""CD on the docker target, for real: containers, the nginx router, PostgreSQL, rollbacks."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import APP, DOCKER, free_port
from tests.test_ci_flow import sunday

pytestmark = pytest.mark.docker


class Env:
    """A throwaway environment of the sample app: its own project, name, ports and database root."""

    def __init__(self, backup: bool = False, approval: bool = False, project: str = "sunday",
                 name: str | None = None) -> None:
        self.project = project
        self.name = name or f"t-{secrets.token_hex(3)}"
        self.port, self.db_port = free_port(), free_port()
        self.backup, self.approval = backup, approval
        self.db_root = Path(tempfile.mkdtemp(prefix="sunday-db-", dir="/tmp"))
        self.db_root.chmod(0o755)  # the postgres OS user must reach it
        self.env = {"SUNDAY_DB_ROOT": str(self.db_root)}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def edit(self, repo: Path) -> None:
        """Add the environment to the config; build amd64 only (the tests need no second platform). Docker's own
        health check once a minute, not every 10 s: no test waits for it, and each check is a `docker exec` taking
        CPU from the other tests."""
        config = repo / "sunday-release.yaml"
        text = config.read_text().replace("    route: /", "    platforms: [linux/amd64]\n    route: /")
        text = text.replace("project: sunday\n", f"project: {self.project}\n", 1)
        text = "\n".join(line for line in text.split("\n") if not line.startswith(f"  {self.name}: "))
        text = text.replace("environments:\n", f"environments:\n  {self.name}: {{port: {self.port}, "
                            f"db_port: {self.db_port}, watch_seconds: 2, drain_seconds: 1, health_timeout: 90, "
                            f"health_interval: 60, "
                            f"backup: {str(self.backup).lower()}, approval: {str(self.approval).lower()}}}\n", 1)
        config.write_text(text)

    @property
    def home(self) -> Path:
        """The environment's directory under SUNDAY_ENV_ROOT (the tests' own, set by conftest)."""
        return Path(os.environ["SUNDAY_ENV_ROOT"]) / self.project / self.name

    def container_ids(self, *filters: str) -> list[str]:
        """Containers of this environment (running and stopped), with extra `--filter`s."""
        argv = [DOCKER, "ps", "-aq", "--filter", f"label=sunday.project={self.project}", "--filter",
                f"label=sunday.env={self.name}"]
        for extra in filters:
            argv += ["--filter", extra]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()

    def teardown(self) -> None:
        ids = self.container_ids()
        if ids:
            subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True, check=False)
        conf = self.home / "router" / "nginx.conf"
        if conf.exists():
            subprocess.run(["nginx", "-s", "quit", "-c", str(conf)], capture_output=True, check=False)
        data = self.db_root / self.project / self.name / "data"
        if data.exists():
            subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-m",
                            "immediate", "-D", str(data)], capture_output=True, check=False)
        shutil.rmtree(self.db_root, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.teardown()


def ci_passed(repo: Path, api: str, git: Callable[..., str]) -> str:
    done = sunday("ci", "--repo", str(repo), "--ref", "main", api=api)
    assert done.returncode == 0, done.stderr
    return git(repo, "rev-parse", "HEAD")


def deploy(env: Env, repo: Path, version: str, api: str) -> subprocess.CompletedProcess[str]:
    return sunday("cd", "--env", env.name, "--version", version, "--repo", str(repo), "--json", api=api, env=env.env)


def status(env: Env) -> dict[str, object]:
    done = sunday("status", "--env", env.name, "--project", env.project, "--json", env=env.env)
    return dict(json.loads(done.stdout))


def test_deploy_switch_rollback_and_scale(prefect_api: str, docker_engine: str, make_repo: Callable[..., Path],
                                          git: Callable[..., str], env: Env) -> None:
    repo = make_repo(APP, edit=env.edit)
    v1 = ci_passed(repo, prefect_api, git)
    first = deploy(env, repo, v1, prefect_api)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["color"] == "blue"
    page = httpx.get(f"{env.url}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    board = httpx.post(f"{env.url}/api/boards", json={"name": "launch"})
    assert board.status_code == 201, board.text
    st = status(env)
    assert st["serving"] is True and st["revision"] == 1 and st["version"] == v1 and st["live_color"] == "blue"
    intervals = subprocess.run([DOCKER, "inspect", "-f", "{{.Config.Healthcheck.Interval}}", *env.container_ids()],
                               capture_output=True, text=True, check=True).stdout.split()
    assert intervals and set(intervals) == {"1m0s"}, intervals  # the environment's health_interval
    # no Prometheus here (SUNDAY_PROMETHEUS_URL): no database exporter either (with one: test_rollout_analysis)
    assert not (env.home.parent.parent / ".prometheus" / f"postgres-{env.project}.{env.name}.json").exists()

    index = repo / "frontend" / "public" / "index.html"
    index.write_text(index.read_text().replace("</title>", " v2</title>", 1))
    git(repo, "commit", "-qam", "v2")
    v2 = ci_passed(repo, prefect_api, git)
    second = deploy(env, repo, v2, prefect_api)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["color"] == "green"
    assert "v2</title>" in httpx.get(f"{env.url}/").text
    assert httpx.get(f"{env.url}/api/boards").json()["boards"][0]["name"] == "launch"  # the data outlived it

    late = deploy(env, repo, v1, prefect_api)  # an older commit arriving late: a replay, an out-of-order CI
    assert late.returncode == 2 and "is older than the live revision 2" in late.stderr, late.stderr
    st = status(env)
    assert st["version"] == v2 and st["revision"] == 2 and "v2</title>" in httpx.get(f"{env.url}/").text

    back = sunday("rollback", "--env", env.name, "--json", api=prefect_api, env=env.env)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == {"project": "sunday", "env": env.name, "revision": 3, "version": v1,
                                       "color": "blue", "rejected": []}
    assert "v2</title>" not in httpx.get(f"{env.url}/").text
    st = status(env)
    assert st["serving"] is True and st["version"] == v1 and st["revision"] == 3

    scaled = sunday("scale", "--env", env.name, "--service", "backend", "--replicas", "3", api=prefect_api,
                    env=env.env)
    assert scaled.returncode == 0, scaled.stderr
    backends = [r for r in status(env)["replicas"] if r["service"] == "backend"]  # type: ignore[union-attr,index]
    assert len(backends) == 3 and all(r["health"] == "healthy" for r in backends)

    missing = sunday("rollback", "--env", env.name, "--to", "99", api=prefect_api, env=env.env)
    assert missing.returncode == 2 and "revision 99 is not kept" in missing.stderr


def _break_readyz(repo: Path) -> None:
    store = repo / "backend" / "sunday_api" / "store.py"
    store.write_text(store.read_text().replace('cur.execute("SELECT 1")', 'cur.execute("SELECT 1/0")', 1))


def test_a_release_failing_its_smoke_check_is_rolled_back(prefect_api: str, docker_engine: str,
                                                          make_repo: Callable[..., Path], git: Callable[..., str],
                                                          env: Env) -> None:
    repo = make_repo(APP, edit=env.edit)
    good = ci_passed(repo, prefect_api, git)
    assert deploy(env, repo, good, prefect_api).returncode == 0
    _break_readyz(repo)
    git(repo, "commit", "-qam", "readyz now fails")
    bad = ci_passed(repo, prefect_api, git)  # unit tests use the in-memory store: CI is green
    done = deploy(env, repo, bad, prefect_api)
    assert done.returncode == 1
    assert "smoke check failed on green: backend /readyz" in done.stderr and "status 503" in done.stderr
    st = status(env)
    assert st["serving"] is True and st["live_color"] == "blue" and st["version"] == good
    history = st["history"]
    assert [h["outcome"] for h in history] == ["live", "rolled-back"]  # type: ignore[union-attr,index]
    assert httpx.get(f"{env.url}/api/boards").status_code == 200
    assert env.container_ids("label=sunday.color=green", "status=running") == []  # the new color is stopped


def test_bad_input_is_refused_before_anything_runs(prefect_api: str, docker_engine: str,
                                                   make_repo: Callable[..., Path], git: Callable[..., str],
                                                   env: Env) -> None:
    repo = make_repo(APP, edit=env.edit)
    never_built = git(repo, "rev-parse", "HEAD")
    done = deploy(env, repo, never_built, prefect_api)
    assert done.returncode == 2 and "has no image of backend that passed CI" in done.stderr
    unknown = sunday("cd", "--env", "nowhere", "--version", never_built, "--repo", str(repo), api=prefect_api)
    assert unknown.returncode == 2 and "'nowhere' is not an environment" in unknown.stderr
    assert sunday("cd", "--env", env.name, "--version", "x..y", "--repo", str(repo)).returncode == 2
    assert sunday("status", "--env", "never-deployed").returncode == 2


def test_backup_failure_stops_the_deploy_before_any_container_starts(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str]) -> None:
    env = Env(backup=True)
    try:
        repo = make_repo(APP, edit=env.edit)
        version = ci_passed(repo, prefect_api, git)
        closed = free_port()
        env.env |= {"SUNDAY_BACKUP_BUCKET": "backups", "SUNDAY_S3_ENDPOINT": f"http://127.0.0.1:{closed}",
                    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        done = deploy(env, repo, version, prefect_api)
        assert done.returncode == 1
        assert f"S3 endpoint http://127.0.0.1:{closed} unreachable" in done.stderr
        assert env.container_ids() == []  # no container was started
    finally:
        env.teardown()


class Receiver:
    """A local Slack-compatible webhook receiver that records what it was sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        received: list[dict[str, object]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[object]:
        return [m["event"] for m in self.received]


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_approval_in_the_ui_gates_the_switch_and_notifications_are_sent(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch, approve: bool) -> None:
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.flow_runs import resume_flow_run

    from flows.cd import cd

    env = Env(approval=True)
    receiver = Receiver()
    try:
        repo = make_repo(APP, edit=env.edit)
        version = ci_passed(repo, prefect_api, git)
        monkeypatch.setenv("SUNDAY_DB_ROOT", str(env.db_root))
        monkeypatch.setenv("SUNDAY_NOTIFY_URL", receiver.url)
        run_ids: list[object] = []
        states: list[object] = []
        flow = cd.with_options(on_running=[lambda f, fr, s: run_ids.append(fr.id)])
        def deploy_in_thread() -> None:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings(updates={PREFECT_API_URL: prefect_api}):  # settings are per thread
                states.append(flow(env=env.name, version=version, repo=str(repo), return_state=True))

        worker = threading.Thread(target=deploy_in_thread)
        worker.start()
        deadline = time.monotonic() + 240
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                if run_ids:
                    fr = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_ids[0]])))
                    if fr and fr[0].state and fr[0].state.is_paused():
                        break
                time.sleep(0.5)
            else:
                pytest.fail("the deploy never paused for approval")
        resume_flow_run(run_ids[0], run_input={"approve": approve, "reason": "looks good" if approve else "no"})
        worker.join(300)
        state = states[0]
        assert state.is_completed() is approve  # type: ignore[attr-defined]
        events = receiver.events()
        assert events[0] == "start" and events[-1] == ("success" if approve else "rollback")
        if approve:
            assert httpx.get(f"{env.url}/api/boards").status_code == 200
        else:
            assert "rejected in the UI: no" in str(state.result(raise_on_failure=False))  # type: ignore[attr-defined]
    finally:
        receiver.server.shutdown()
        env.teardown()


class FailingReceiver(Receiver):
    """A webhook that answers 500 to every notification (and records that it was called)."""

    def __init__(self) -> None:
        import http.server
        import threading

        calls: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                calls.append(self.path)
                self.send_response(500)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = []
        self.calls = calls
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _rollout_markdown(env: Env) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=[f"rollout-{env.project}-{env.name}"])), sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no rollout artifact for {env.project}/{env.name}"
    return str(found[0].data)


def test_a_failed_notification_never_fails_a_live_release(prefect_api: str, docker_engine: str,
                                                         make_repo: Callable[..., Path], git: Callable[..., str],
                                                         env: Env) -> None:
    repo = make_repo(APP, edit=env.edit)
    version = ci_passed(repo, prefect_api, git)
    refused = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    first = sunday("cd", "--env", env.name, "--version", version, "--repo", str(repo), "--json", api=prefect_api,
                   env=env.env | {"SUNDAY_NOTIFY_URL": refused})
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert [w.split(":")[0] for w in result["warnings"]] == ["notification start failed",
                                                              "notification success failed"]
    assert "notification success failed" in _rollout_markdown(env)
    st = status(env)
    assert st["serving"] is True and st["revision"] == 1
    assert [h["outcome"] for h in st["history"]] == ["live"]  # type: ignore[union-attr,index]

    failing = FailingReceiver()
    try:  # a redeploy of the same commit: the webhook answers 500 after the switch
        second = sunday("cd", "--env", env.name, "--version", version, "--repo", str(repo), "--json",
                        api=prefect_api, env=env.env | {"SUNDAY_NOTIFY_URL": failing.url})
    finally:
        failing.server.shutdown()
    assert second.returncode == 0, second.stderr
    assert failing.calls, "the webhook was never called"
    assert "notification success failed: notification webhook answered 500" in _rollout_markdown(env)
    st = status(env)
    assert st["serving"] is True and st["revision"] == 2 and st["live_color"] == "green"
    assert [h["outcome"] for h in st["history"]] == ["superseded", "live"]  # type: ignore[union-attr,index]

    dora = sunday("dora", "--env", env.name, "--project", env.project, "--days", "1", "--json", api=prefect_api)
    assert dora.returncode == 0, dora.stderr
    reports = json.loads(dora.stdout)["reports"]
    assert [r["project"] for r in reports] == [env.project]
    failure_rate = reports[0]["change_failure_rate"]
    assert failure_rate["failed"] == 0 and failure_rate["deployments"] == 2, failure_rate
