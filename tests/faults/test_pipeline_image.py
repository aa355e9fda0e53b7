"""The pipeline's own image, built by its own CI, and CI of an application run in it on a Docker work pool.

1. `sunday-release ci` on a clone of this repository: the Dockerfile at the top is built, its test stage runs
   the fast tier, ruff and mypy inside, the image is scanned and published; the summary names its digest.
2. `make server` with SUNDAY_CI_POOL_KIND=docker and that digest, in Prefect's high-availability shape
   (SERVER_REPLICAS=2: two API replicas behind nginx, the services apart, Redis): a signed push runs CI of the
   sample app in a container of that very image (a prefect-docker worker); one API replica is killed (-9) while
   it runs, and the user sees nothing of it: the run, its logs and its events complete, the UI answers, staging
   serves the commit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, _git, free_port
from tests.faults.test_platform_e2e import Stack, running_stack
from tests.platform_fixture import server_sh
from tests.test_ci_flow import sunday

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker"


def machine_cas() -> dict[str, str]:
    """This machine's locally added CAs (Debian's /usr/local/share/ca-certificates), for a TLS-inspecting proxy
    between the image build and PyPI; nothing where there are none."""
    local = Path("/usr/local/share/ca-certificates")
    return {"SUNDAY_EXTRA_CA_CERTS": str(local)} if any(local.glob("*.crt")) else {}


def own_trivy_db(path: Path) -> Path:
    """A clean offline DB with its own layer cache: a Docker pool's containers see only the paths it mounts."""
    from devtools.trivydb import Advisory, write_trivy_db

    write_trivy_db(path, [Advisory("CVE-2099-0999", "debian 12", "no-such-package", "CRITICAL", "FAKE", "1.0")])
    return path


@pytest.fixture(scope="module")
def pipeline_image(prefect_api: str, docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digest `sunday-release ci` publishes for this repository (what is committed at HEAD)."""
    top = tmp_path_factory.mktemp("self-ci")
    clone = top / "sunday-release"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    _git(clone, "checkout", "-q", "-B", "self-ci")
    done = sunday("ci", "--repo", str(clone), "--ref", "self-ci", "--json", api=prefect_api,
                  env={"SUNDAY_TRIVY_CACHE": str(own_trivy_db(top / "trivy")), **machine_cas()})
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    pipeline = summary["services"]["pipeline"]
    assert summary["state"] == "COMPLETED" and summary["commit"] == _git(clone, "rev-parse", "HEAD")
    assert pipeline["tests"]["failed"] == 0 and pipeline["tests"]["passed"] > 500  # the fast tier, inside
    assert (pipeline["lint"], pipeline["typecheck"]) == ("passed", "passed")
    assert pipeline["vulnerabilities"]["passed"] is True
    return str(pipeline["image"])


def test_the_pipeline_image_runs_its_tools_as_a_non_root_user(pipeline_image: str) -> None:
    assert "@sha256:" in pipeline_image
    script = ("id -u; sunday-release --help >/dev/null; trivy --version; k6 version; kubectl version --client;"
              " git --version; pg_dump --version; docker --version;"
              " python -c 'import flows.ci, flows.cd, flows.e2e, prefect_docker, prefect_kubernetes'")
    done = subprocess.run([DOCKER, "run", "--rm", "--network", "none", pipeline_image, "sh", "-ec", script],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "10001"
    for tool in ("Version: 0.76.0", "k6 v", "Client Version: v1.", "git version", "pg_dump (PostgreSQL) 15",
                 "Docker version"):
        assert any(line.startswith(tool) for line in lines), (tool, lines)


@pytest.fixture(scope="module")
def docker_stack(starts_server: None, docker_engine: str, pipeline_image: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    top = tmp_path_factory.mktemp("docker-pool")
    with running_stack(top, {"SUNDAY_CI_POOL_KIND": "docker", "SUNDAY_PIPELINE_IMAGE": pipeline_image,
                             "SUNDAY_TRIVY_CACHE": str(own_trivy_db(top / "pool-trivy")),
                             "SERVER_REPLICAS": "2", "SUNDAY_REDIS_PORT": str(free_port())}) as running:
        yield running


def _pid(stack: Stack, name: str) -> int | None:
    """The PID in the platform's pids/NAME while that process lives."""
    try:
        pid = int((stack.platform.dir / "pids" / name).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def test_the_api_runs_as_two_replicas_behind_nginx_with_the_services_apart(docker_stack: Stack) -> None:
    for name in ("server-1", "server-2", "services", "nginx.pid", "redis"):
        assert _pid(docker_stack, name), f"{name} is not running"
    assert not (docker_stack.platform.dir / "pids" / "server").exists()  # no single all-in-one server
    port = int(docker_stack.platform.api.split(":")[2].split("/")[0])
    for replica in (port + 1, port + 2):
        direct = httpx.get(f"http://127.0.0.1:{replica}/api/admin/version", timeout=10,
                           auth=tuple(docker_stack.platform.auth.split(":", 1)))  # type: ignore[arg-type]
        assert direct.status_code == 200, (replica, direct.text)
    assert docker_stack.platform.get("/admin/version", auth=False).status_code == 401  # nginx passes auth through
    services = (docker_stack.platform.dir / "logs" / "services.log").read_text(errors="replace")
    assert "Traceback" not in services, services[-3000:]
    config = (docker_stack.platform.dir / "redis" / "redis.conf").read_text()
    assert "requirepass " in config and "bind 127.0.0.1" in config


def test_a_push_runs_ci_in_the_pipeline_image_on_the_docker_pool_while_an_api_replica_is_killed(
        docker_stack: Stack, pipeline_image: str) -> None:
    pool = docker_stack.platform.get("/work_pools/sunday-ci").json()
    assert pool["type"] == "docker" and pool["base_job_template"]["variables"]["properties"]["image"][
        "default"] == pipeline_image
    sha = docker_stack.commit("in-a-container")
    docker_stack.push("refs/heads/main", sha)
    run = docker_stack.wait_run("ci", {"sha": sha}, {"RUNNING", "COMPLETED"}, timeout=300)
    # the flow run's container (prefect-docker labels it io.prefect.flow-run-id; removed when it ends)
    images: set[str] = set()
    deadline = time.monotonic() + 120
    while not images and time.monotonic() < deadline:
        label = f"label=io.prefect.flow-run-id={run['id']}"
        listed = subprocess.run([DOCKER, "ps", "-a", "--no-trunc", "--filter", label, "--format", "{{.Image}}"],
                                capture_output=True, text=True, check=True)
        images = set(listed.stdout.split())
        time.sleep(0.5)
    assert images == {pipeline_image}, f"no container of the pipeline's image ran CI {run['id']}: {images}"
    killed = _pid(docker_stack, "server-1")
    assert killed
    os.kill(killed, signal.SIGKILL)  # mid-run: the worker, the flow run and the UI go on through the other replica
    run = docker_stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
    assert _pid(docker_stack, "server-1") is None
    docker_stack.wait_run("cd-staging", {"version": sha}, {"COMPLETED"}, timeout=300)
    docker_stack.serves(docker_stack.staging, sha, "in-a-container")
    # a prefect-docker worker, streaming the container's output: the run's own last words
    worker_log = (docker_stack.platform.dir / "logs" / "worker-sunday-ci.log").read_text(errors="replace")
    assert "DockerWorker" in worker_log and f"Flow run '{run['name']}' - Finished in state Completed()" in worker_log
    # what the user sees of that run through the API that lost a replica: all of its logs, to the last line, and
    # the events of its end
    messages = docker_stack.run_logs(run["id"])
    assert messages and any("Finished in state Completed()" in m for m in messages), messages[-5:]
    events = docker_stack.platform.post("/events/filter", {
        "filter": {"event": {"name": ["prefect.flow-run.Completed"]},
                   "resource": {"id": [f"prefect.flow-run.{run['id']}"]}}, "limit": 5})
    assert events.status_code == 200 and len(events.json()["events"]) == 1, events.text[:500]
    ui = httpx.get(docker_stack.platform.ui + "/", timeout=30)
    assert ui.status_code == 200 and "<title>" in ui.text
    # `make server` again brings the lost replica back, touching nothing else
    before = {name: _pid(docker_stack, name) for name in ("server-2", "services", "nginx.pid", "redis")}
    again = server_sh("start", docker_stack.platform.env, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _pid(docker_stack, "server-1") and {name: _pid(docker_stack, name) for name in before} == before


def test_restart_server_restarts_the_replicas_one_at_a_time_and_the_api_never_goes_away(docker_stack: Stack) -> None:
    """`server.sh restart-server` (a Prefect upgrade, a changed setting) on the HA shape: each replica is stopped
    and started again while nginx sends the API's requests to the other; a client asking all along never sees
    an error."""
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(auth=tuple(docker_stack.platform.auth.split(":", 1)), timeout=10) as client:  # type: ignore[arg-type]
            while not stop.is_set():
                try:
                    status = client.get(docker_stack.platform.api + "/admin/version").status_code
                    if status == 200:
                        answered.append(status)
                    else:
                        failures.append(f"HTTP {status}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                time.sleep(0.1)

    before = {name: _pid(docker_stack, name) for name in ("server-1", "server-2", "services")}
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    try:
        done = server_sh("restart-server", docker_stack.platform.env, timeout=300)
    finally:
        stop.set()
        asker.join(timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    after = {name: _pid(docker_stack, name) for name in before}
    assert all(after.values()) and all(after[name] != before[name] for name in before), (before, after)
    assert len(answered) > 20 and failures == [], (len(answered), failures[:5])
