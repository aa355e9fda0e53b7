"""The `ci` flow as a deployment run by a real process worker, and what its runs did: shared by tests and benches.

Imports nothing from `tests.conftest` (which rewrites the environment), so benchmarks can use it too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
_DEFAULT_TASK_RUN_NAME = re.compile(r"-[0-9a-f]{3}$")  # tasks without task_run_name: "name-" + 3 hex digits


class ProcessWorker:
    """`prefect worker start --pool POOL` as a child process (its own process group), logging to a file.

    Every result is persisted (PREFECT_RESULTS_PERSIST_BY_DEFAULT), on this machine's disk under
    `home/results`, so a Retry finds what the first attempt completed (`make server` uses S3 instead).
    """

    def __init__(self, pool: str, home: Path, env: dict[str, str] | None = None, poll_seconds: float = 1,
                 wrap: Callable[[list[str]], list[str]] | None = None, limit: int | None = None,
                 kind: str = "process") -> None:
        self.pool = pool
        self.kind = kind  # the worker's type: process, or kubernetes (tests/test_pools.py, a real cluster)
        self.limit = limit  # flow runs at a time (`--limit`), or as many as it is given
        self.wrap = wrap or (lambda argv: argv)  # e.g. BuildHost.command: the worker runs on another "host"
        self.log = home / f"worker-{pool}.log"
        self.env = {**os.environ, "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                    "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
                    "PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds),
                    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)

    def start(self) -> ProcessWorker:
        with open(self.log, "ab") as log:
            limit = ["--limit", str(self.limit)] if self.limit else []
            argv = self.wrap([PREFECT, "worker", "start", "--pool", self.pool, "--type", self.kind, *limit])
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=ROOT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_online(self, timeout: float = 120) -> None:
        """Wait until the pool lists a worker that is ONLINE (it has sent its first heartbeat)."""
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while not any(w.status == "ONLINE" for w in client.read_workers_for_work_pool(self.pool)):
                if not self.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker of pool {self.pool} did not come online:\n{self.log_tail()}")
                time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the worker's process group (the worker and any flow run it started), SIGKILL after 30 s."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def __enter__(self) -> ProcessWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_flow_run(run_id: Any, worker: ProcessWorker, until: Callable[[Any], bool] | None = None,
                      timeout: float = 600) -> Any:
    """Poll the flow run until `until(state)` (default: a final state); return the flow run.

    Fails at once, with the worker's log, when the worker died or the time is up.
    """
    from prefect.client.orchestration import get_client

    done = until or (lambda state: state is not None and state.is_final())
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if done(run.state):
                return run
            if not worker.alive() or time.monotonic() > deadline:
                raise AssertionError(f"flow run {run_id} is {run.state!r} after {timeout:.0f}s "
                                     f"(worker alive: {worker.alive()}):\n{worker.log_tail()}")
            time.sleep(0.5)


def task_run_states(run_id: Any) -> dict[str, list[str]]:
    """The state names of a flow run's task runs by task run name, in the order of the flow run's attempts.

    A Retry of the flow run makes new task runs: a task that completed in attempt 1 and was skipped in
    attempt 2 reads `["Completed", "Cached"]`. Default task run names lose their random suffix.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    states: dict[str, list[str]] = {}
    for tr in sorted(runs, key=lambda tr: tr.flow_run_run_count):
        states.setdefault(_DEFAULT_TASK_RUN_NAME.sub("", tr.name), []).append(tr.state.name if tr.state else "?")
    return states


def create_process_pool(name: str, overwrite: bool = False) -> None:
    """The process work pool `prefect work-pool create NAME --type process [--overwrite]` makes, through the client.

    The same base job template (the process worker's default), without a `prefect` command's import of
    Prefect (3 CPU-seconds each).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker as PrefectProcessWorker

    template = PrefectProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template),
                                overwrite=overwrite)


def write_clean_trivy_db(cache: Path) -> Path:
    """An offline Trivy DB holding one FAKE advisory, for a package no image has: every image scan passes.

    Dated now (`write_trivy_db`'s default): the image scan refuses a DB older than `scan.db_max_age_days`.
    """
    from devtools.trivydb import Advisory, write_trivy_db

    write_trivy_db(cache, [Advisory("CVE-2099-0999", "debian 12", "no-such-package", "CRITICAL", "FAKE", "1.0")])
    return share_layer_cache(cache)


def share_layer_cache(cache: Path) -> Path:
    """Make `cache/fanal` (Trivy's layer cache) the test run's one, whatever DB `cache` holds.

    What Trivy finds in a layer does not depend on the DB (the packages are matched against the DB
    afresh every scan, `test_layers_analysed_before_are_judged_against_the_new_db`), so every worker
    and every test's own DB shares one: a layer is analysed once per run, as on one CI host.
    """
    shared = Path(os.environ["SUNDAY_TEST_SHARED"]) / "trivy-fanal"
    shared.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "fanal").is_symlink():
        (cache / "fanal").symlink_to(shared, target_is_directory=True)
    return cache
