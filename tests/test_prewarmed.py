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
from tests.deployed_ci import ProcessWorker, create_process_pool, wait_for_flow_run

# One worker runs this module's tests one after another: test_changed_code_is_never_run_from_the_old_imports
# touches tests/prewarm_flow.py, and every prewarmed server started here watches that file (a server of a
# test running beside it on another xdist worker would find its code "changed" and run the flow the ordinary way)
pytestmark = pytest.mark.xdist_group(name="tests/test_prewarmed.py")

LAUNCH = launch_command()


def _start_prewarmed(tmp_path: Path, env: dict[str, str] | None = None,
                     preload: str = "flows.ci,tests.prewarm_flow") -> tuple[Path, subprocess.Popen[bytes]]:
    sock = tmp_path / "prewarm.sock"
    with open(tmp_path / "prewarmed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deployments.prewarmed", "--socket", str(sock),
                                 "--preload", preload], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prewarmed.log").read_text()
        time.sleep(0.1)
    return sock, proc


@pytest.fixture
def prewarmed(tmp_path: Path, starts_server: None) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """`python -m deployments.prewarmed` on a socket of the test's own; stopped afterwards."""
    sock, proc = _start_prewarmed(tmp_path)
    try:
        yield sock, proc
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def pool(prefect_api: str, tmp_path: Path) -> Iterator[str]:
    """A process work pool of the test's own, with the probe flow deployed on it; both deleted afterwards."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    name = f"prewarm-{uuid.uuid4().hex[:8]}"
    create_process_pool(name)
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


def _launch(run_id: Any, sock: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """The pools' command for one flow run, as the process worker starts it (flow run id in the environment)."""
    return subprocess.Popen(LAUNCH.split(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PREFECT__FLOW_RUN_ID": str(run_id), "SUNDAY_PREWARM_SOCKET": str(sock)})


def test_the_last_logs_and_events_of_every_run_reach_the_server(pool: str, prewarmed: tuple[Path, Any],
                                                                 tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    sock, server = prewarmed
    batch = uuid.uuid4().hex[:8]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("prewarm-probe/probe")
        runs = [client.create_flow_run_from_deployment(deployment.id, parameters={"marker": f"{batch}.{i}"})
                for i in range(50)]
    for first in range(0, len(runs), 10):  # ten at a time, as a busy worker would
        launched = [_launch(run.id, sock, tmp_path) for run in runs[first:first + 10]]
        assert [p.wait(120) for p in launched] == [0] * len(launched)
    with get_client(sync_client=True) as client:
        for run in runs:
            done = client.read_flow_run(run.id)
            assert done.state is not None and done.state.is_completed(), done.state
        deadline = time.monotonic() + 60
        while True:  # the server persists events in batches
            events = client.read_events(filter=EventFilter(
                event=EventNameFilter(name=["sunday.test.last-line"]),
                resource=EventResourceFilter(id_prefix=[f"sunday.test.{batch}."])), limit=50).events
            if len(events) == len(runs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sorted(e.resource.id for e in events) == sorted(f"sunday.test.{batch}.{i}" for i in range(len(runs)))
        for i, run in enumerate(runs):
            last = f"last line {batch}.{i} prewarmed={server.pid}"  # forked from the server
            while True:  # sent before the run's process exited; the server may still be writing its batch
                messages = [log.message for log in client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)]
                if last in messages or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert last in messages, messages
            assert any(m.startswith("Finished in state Completed") for m in messages), messages  # the engine's last
            assert any(m.startswith("Beginning flow run") for m in messages)
    assert server.poll() is None


def _processes_with(argument: str) -> list[int]:
    """PIDs of the live processes whose command line has `argument`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argument.encode() in argv and state != "Z":
            found.append(int(entry.name))
    return found


def test_a_cancelled_run_takes_its_child_processes_with_it(pool: str, prewarmed: tuple[Path, Any],
                                                           tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    sock, server = prewarmed
    duration = f"300.{uuid.uuid4().int % 10**9}"  # `sleep 300.NNN`: this test's child, found by its argument
    with ProcessWorker(pool, tmp_path / "w", env={"SUNDAY_PREWARM_SOCKET": str(sock)}) as worker:
        worker.wait_online()
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("prewarm-probe/probe")
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"sleep_child": duration})
            deadline = time.monotonic() + 60
            while not _processes_with(duration):
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.2)
            children = _processes_with(duration)
            assert all(Path(f"/proc/{pid}/environ").read_bytes().count(b"SUNDAY_PREWARMED=" + str(server.pid).encode())
                       for pid in children), (tmp_path / "prewarmed.log").read_text()  # forked from the server
            client.set_flow_run_state(run.id, Cancelling(message="test"), force=True)
        done = wait_for_flow_run(run.id, worker, timeout=90)
        assert done.state.is_cancelled(), (done.state, worker.log_tail())
        deadline = time.monotonic() + 15
        while _processes_with(duration) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_with(duration) == []  # no child outlives the cancelled run
    assert server.poll() is None


def test_a_server_with_a_second_thread_refuses_to_fork(pool: str, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    sock, server = _start_prewarmed(tmp_path, env={"SUNDAY_TEST_PREWARM_THREAD": "1"})
    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("prewarm-probe/probe")
            run = client.create_flow_run_from_deployment(deployment.id, parameters={"marker": "threaded"})
        assert _launch(run.id, sock, tmp_path).wait(120) == 0  # ran the ordinary way
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
            assert state is not None and state.is_completed()
        assert "REFUSED threads" in (tmp_path / "prewarmed.log").read_text()
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(10)


def test_a_prefect_or_project_directory_change_or_another_project_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, starts_server: None) -> None:
    import prefect.engine

    from deployments.launch import _handoff

    sock, server = _start_prewarmed(tmp_path)
    log = tmp_path / "prewarmed.log"

    def handed_over() -> bool:
        """Whether the server forked a run (an engine given no valid flow run id: it exits 1)."""
        code = _handoff(str(sock), ["not-a-flow-run-id"])
        assert code in (None, 1), code
        return code == 1

    def restarted(times: int) -> None:
        deadline = time.monotonic() + 90
        while log.read_text().count("prewarmed flow-run server on") < times + 1 or not sock.exists():
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.2)

    new_module = ROOT / "tests" / f"_prewarm_new_{uuid.uuid4().hex[:8]}.py"
    engine = Path(prefect.engine.__file__)
    st = engine.stat()
    try:
        assert handed_over()  # nothing changed: forked
        new_module.write_text('"""A Python file that appeared beside the imported ones."""\n')
        assert not handed_over()
        restarted(1)
        assert handed_over()  # the re-executed server took the new directory as it is
        os.utime(engine, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # Prefect "changed" on disk
        assert not handed_over()
        restarted(2)
        monkeypatch.setenv("SUNDAY_RELEASE_DIR", str(tmp_path))  # a run of another checkout
        assert not handed_over()
        assert "REFUSED other-project" in log.read_text()
        monkeypatch.setenv("SUNDAY_RELEASE_DIR", str(ROOT))
        assert handed_over()
        assert log.read_text().count("changed: re-importing") == 2
        assert server.poll() is None  # re-exec keeps the process
    finally:
        os.utime(engine, ns=(st.st_atime_ns, st.st_mtime_ns))
        new_module.unlink(missing_ok=True)
        server.terminate()
        server.wait(10)


def _ask(sock: Path, request: dict[str, object]) -> str:
    """The server's first answer to a raw request (stdio: /dev/null)."""
    import json
    import socket

    from deployments.launch import HEADER

    body = json.dumps(request).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn, open(os.devnull, "rb") as null:
        conn.connect(str(sock))
        socket.send_fds(conn, [HEADER.pack(len(body))], [null.fileno()] * 3)
        conn.sendall(body)
        conn.settimeout(30)
        return conn.makefile("r").readline().strip()


def test_the_cli_forked_from_the_server_answers_as_a_fresh_one(tmp_path: Path, starts_server: None) -> None:
    """tests/cli_runner.py runs the tests' CLI calls forked from a server that preloaded the CLI: each must answer
    what `python -m adapters.cli` would, from the caller's environment, not the server's."""
    import socket

    from tests.cli_runner import CLI, _forked

    sock, server = _start_prewarmed(tmp_path, preload="adapters.cli,flows.ci")
    try:
        with socket.socket() as closed:  # a port nothing listens on
            closed.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
        env = {**os.environ, "PREFECT_API_URL": url}  # the server was started without it
        for argv in (["dora", "--json"], ["cd", "--env", "../up", "--version", "0" * 40, "--repo", str(ROOT)],
                     ["validate", "--repo", str(ROOT / "app")]):
            forked = _forked(sock, argv, env, ROOT, timeout=120)
            fresh = subprocess.run([*CLI, *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
                                   check=False)
            assert forked is not None, (tmp_path / "prewarmed.log").read_text()  # it did fork
            assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout,
                                                                         fresh.stderr), argv
            if argv[0] == "dora":
                assert forked.returncode == 1 and f"PREFECT_API_URL={url}" in forked.stderr
        # only the CLI and a flow run: never an arbitrary module of the server's
        assert _ask(sock, {"module": "os", "argv": [], "cwd": str(ROOT), "env": {}}) == "REFUSED module"
        assert _ask(sock, {"module": "adapters.cli", "argv": ["validate", "--repo", str(ROOT / "app")],
                           "cwd": str(ROOT), "env": dict(os.environ)}).startswith("PID ")
    finally:
        server.terminate()
        server.wait(10)
