"""Faults of Prefect's own machinery on `make server`: restart its API server, kill a worker and its flow run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.platform_fixture import Platform, server_sh


def restart_server(platform: Platform) -> tuple[float, tuple[datetime, datetime]]:
    """`server.sh restart-server` (PostgreSQL, workers and flow runs stay up); the seconds it took, and when (UTC)."""
    started, since = time.monotonic(), datetime.now(UTC)
    done = server_sh("restart-server", platform.env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.monotonic() - started, (since, datetime.now(UTC))


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with (/proc/PID/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _children() -> dict[int, list[int]]:
    """Parent PID → child PIDs, of every process now."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def flow_run_processes(worker: int, prewarmed: int) -> tuple[list[int], list[int]]:
    """The worker's children (its flow runs' launchers, deployments.launch) and the flow runs' processes: a
    launcher's own child (`python -m prefect.engine`) or a prewarmed server's grandchild (a fork per run)."""
    tree = _children()
    launchers = tree.get(worker, [])
    runs = [pid for launcher in launchers for pid in tree.get(launcher, [])]
    runs += [pid for handler in tree.get(prewarmed, []) for pid in tree.get(handler, [])]
    return launchers, runs


def kill_worker_and_runs(platform: Platform, pool: str) -> list[int]:
    """`kill -9` of the pool's worker (server.sh's), its launchers and its flow runs' process groups (the run and
    what it started: a machine that died); the PIDs killed."""
    worker = int((platform.dir / "pids" / f"worker-{pool}").read_text())
    prewarmed = int((platform.dir / "pids" / "prewarmed").read_text())
    launchers, runs = flow_run_processes(worker, prewarmed)
    assert runs, f"no flow-run process of the {pool} worker (PID {worker}) to kill"
    for pid in runs:  # each leads its own process group (deployments.prewarmed / launch: setsid)
        os.killpg(pid, signal.SIGKILL)
    for pid in [worker, *launchers]:
        os.kill(pid, signal.SIGKILL)
    return [worker, *launchers, *runs]


def task_runs(platform: Platform, run_id: str) -> list[dict[str, Any]]:
    """The flow run's task runs (every attempt), as the API lists them."""
    listed = platform.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})
    assert listed.status_code == 200, listed.text
    return list(listed.json())


def wait_for(what: str, check: Callable[[], Any], timeout: float, why: Callable[[], str] = str) -> Any:
    """Poll `check` every 0.5 s until it returns something truthy; fail naming `what` (and `why()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{why()}")


def active_slots(platform: Platform, name: str) -> int:
    """The slots of the global concurrency limit `name` taken now (0 when it does not exist)."""
    response = platform.get(f"/v2/concurrency_limits/{name}")
    if response.status_code == 404:
        return 0
    assert response.status_code == 200, response.text
    return int(response.json()["active_slots"])
