"""Two build hosts at once: CI of two commits, one run on this machine's engine and one on a second host's
(tests/build_host.py: its own dockerd, host name and SUNDAY_HOME), sharing the server, S3 results and registry."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from deployments.result_storage import register_result_storage
from devtools.build_host import build_host
from tests.conftest import FIXTURES, Registry
from tests.deployed_ci import ProcessWorker, wait_for_flow_run, write_clean_trivy_db
from tests.pg import S3, s3  # noqa: F401 (a fixture)
from tests.test_ci_images import _use_registry
from tests.test_ui_retry import ci_deployment

pytestmark = pytest.mark.docker


def _online(pool: str, count: int) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sum(w.status == "ONLINE" for w in client.read_workers_for_work_pool(pool)) >= count


def test_two_ci_runs_of_different_commits_run_at_once_on_two_hosts_each_building_on_its_own_engine(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        registry: Registry, s3: S3, tmp_path: Path) -> None:  # noqa: F811
    from prefect.client.orchestration import get_client

    def edit(repo: Path) -> None:
        _use_registry(registry.address)(repo)
        (repo / "tool" / "build-id").write_text(secrets.token_hex(8))  # content no other test built

    repo = make_repo(FIXTURES / "other-app", edit=edit)
    git(repo, "switch", "-q", "-c", "feature")
    (repo / "tool" / "build-id").write_text(secrets.token_hex(8))  # the other commit: other content, another image
    git(repo, "commit", "-qam", "feature")
    pool = f"two-hosts-{uuid.uuid4().hex[:8]}"
    shared = {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": register_result_storage(s3.endpoint_url, s3.bucket, name=pool)}
    write_clean_trivy_db(tmp_path / "trivy-a")
    with ci_deployment(pool) as deployment_id, build_host() as host_b, \
            ProcessWorker(pool, tmp_path / "worker-a", env={**shared, "SUNDAY_TRIVY_CACHE": str(tmp_path / "trivy-a")},
                          limit=1) as worker_a, \
            ProcessWorker(pool, tmp_path / "worker-b", env={**shared, **host_b.env()}, wrap=host_b.command,
                          limit=1) as worker_b:
        write_clean_trivy_db(host_b.home / "trivy-cache")
        deadline = time.monotonic() + 120
        while not _online(pool, 2):  # both workers polling: one run each (`--limit 1`)
            assert worker_a.alive() and worker_b.alive() and time.monotonic() < deadline, worker_b.log_tail()
            time.sleep(0.5)
        with get_client(sync_client=True) as client:
            ids = [client.create_flow_run_from_deployment(deployment_id, parameters={"repo": str(repo), "ref": ref}).id
                   for ref in ("main", "feature")]
        runs = [wait_for_flow_run(run_id, worker_a, timeout=600) for run_id in ids]
        logs = {"a": worker_a.log.read_text(), "b": worker_b.log.read_text()}
        images_b = host_b.images()

    assert all(run.state.is_completed() for run in runs), [(run.name, run.state) for run in runs]
    # "submitting" is logged by every worker that tries; the one whose Pending state the server refused then logs
    # "Aborted submission" (the run's name in "submitted to infrastructure" is not its final one: the flow renames it)
    hosts = {run.id: [h for h, log in logs.items() if f"submitting flow run '{run.id}'" in log
                      and f"Aborted submission of flow run '{run.id}'" not in log] for run in runs}
    assert sorted(h for found in hosts.values() for h in found) == ["a", "b"], hosts  # one run on each host
    first, second = sorted(runs, key=lambda run: run.start_time)
    assert second.start_time < first.end_time, (first.start_time, first.end_time, second.start_time)  # at once
    # B built its run's image on its own engine (its check image and its runtime image), from nothing
    assert any(i.startswith(f"{registry.address}/wordcount/tool:ck-") for i in images_b), images_b
    assert any(i.startswith("sunday-ci/wordcount-tool:test-") for i in images_b), images_b
