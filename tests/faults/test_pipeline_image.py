"""The pipeline's own image, built by its own CI, and CI of an application run in it on a Docker work pool.

1. `sunday-release ci` on a clone of this repository: the Dockerfile at the top is built, its test stage runs
   the fast tier, ruff and mypy inside, the image is scanned and published; the summary names its digest.
2. `make server` with SUNDAY_CI_POOL_KIND=docker and that digest: a signed push runs CI of the sample app in a
   container of that very image (a prefect-docker worker), and staging serves the commit.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, _git
from tests.faults.test_platform_e2e import Stack, running_stack
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
                             "SUNDAY_TRIVY_CACHE": str(own_trivy_db(top / "pool-trivy"))}) as running:
        yield running


def test_a_push_runs_ci_in_the_pipeline_image_on_the_docker_pool(docker_stack: Stack, pipeline_image: str) -> None:
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
    run = docker_stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
    docker_stack.wait_run("cd-staging", {"version": sha}, {"COMPLETED"}, timeout=300)
    docker_stack.serves(docker_stack.staging, sha, "in-a-container")
    # a prefect-docker worker, streaming the container's output: the run's own last words
    worker_log = (docker_stack.platform.dir / "logs" / "worker-sunday-ci.log").read_text(errors="replace")
    assert "DockerWorker" in worker_log and f"Flow run '{run['name']}' - Finished in state Completed()" in worker_log
