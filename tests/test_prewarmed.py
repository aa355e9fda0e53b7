"""Flow runs started by a real process worker through `deployments.launch` and the prewarmed server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.prewarmed import launch_command
from tests.conftest import ROOT
from tests.deployed_ci import ProcessWorker, wait_for_flow_run

LAUNCH = launch_command()


@pytest.fixture
def prewarmed(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """`python -m deployments.prewarmed` on a socket of the test's own; stopped afterwards."""
    sock = tmp_path / "prewarm.sock"
    log = open(tmp_path / "prewarmed.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "deployments.prewarmed", "--socket", str(sock),
                             "--preload", "flows.ci,tests.prewarm_flow"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prewarmed.log").read_text()
        time.sleep(0.1)
    try:
        yield sock, proc
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def pool(prefect_api: str, tmp_path: Path) -> Iterator[str]:
    """A process work pool of the test's own, with the probe flow deployed on it; both deleted afterwards."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    name = f"prewarm-{uuid.uuid4().hex[:8]}"
    subprocess.run([str(Path(sys.executable).parent / "prefect"), "work-pool", "create", name, "--type", "process"],
                   check=True, capture_output=True, env={**os.environ, "PREFECT_API_URL": prefect_api})
    flow.from_source(str(ROOT), "tests/prewarm_flow.py:probe").deploy(  # type: ignore[attr-defined]
        name="probe", work_pool_name=name, job_variables={"command": LAUNCH}, print_next_steps=False)
    try:
        yield name
    finally:
        with get_client(sync_client=True) as client:
            client.delete_work_pool(name)


def _run(pool: str, worker: ProcessWorker, **parameters: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("prewarm-probe/probe")
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    return wait_for_flow_run(run.id, worker, timeout=180)


def test_a_run_goes_through_the_prewarmed_server(pool: str, prewarmed: tuple[Path, Any], tmp_path: Path) -> None:
    sock, server = prewarmed
    with ProcessWorker(pool, tmp_path / "w", env={"SUNDAY_PREWARM_SOCKET": str(sock)}) as worker:
        worker.wait_online()
        done = _run(pool, worker)
        assert done.state.is_completed(), worker.log_tail()
        result = done.state.result()
        assert result["prewarmed"] == str(server.pid) and result["two"] == 2  # forked from the server
        failed = _run(pool, worker, fail=True)
        assert failed.state.is_failed(), worker.log_tail()
        assert "the probe was asked to fail" in str(failed.state.result(raise_on_failure=False))
    assert server.poll() is None  # the server outlives its runs


def test_without_a_prewarmed_server_the_run_starts_the_ordinary_way(pool: str, tmp_path: Path) -> None:
    with ProcessWorker(pool, tmp_path / "w", env={"SUNDAY_PREWARM_SOCKET": str(tmp_path / "absent.sock")}) as worker:
        worker.wait_online()
        done = _run(pool, worker)
        assert done.state.is_completed(), worker.log_tail()
        assert done.state.result()["prewarmed"] is None


def test_changed_code_is_never_run_from_the_old_imports(pool: str, prewarmed: tuple[Path, Any],
                                                         tmp_path: Path) -> None:
    sock, server = prewarmed
    probe = ROOT / "tests" / "prewarm_flow.py"
    st = probe.stat()
    os.utime(probe, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the code "changed" after the preload
    with ProcessWorker(pool, tmp_path / "w", env={"SUNDAY_PREWARM_SOCKET": str(sock)}) as worker:
        worker.wait_online()
        first = _run(pool, worker)
        assert first.state.is_completed() and first.state.result()["prewarmed"] is None  # ran the ordinary way
        deadline = time.monotonic() + 60  # meanwhile the server re-imported: the next run is prewarmed again
        while True:
            again = _run(pool, worker)
            if again.state.result()["prewarmed"] == str(server.pid) or time.monotonic() > deadline:
                break
        assert again.state.result()["prewarmed"] == str(server.pid)  # re-exec keeps the PID
