"""Prefect's own machinery failing under real runs of `make server`: its API server restarted, a worker killed.

One platform for the module (tests/faults/test_platform_e2e.py's stack: `make server`, the webhook receiver, the
sample app's staging), started with heartbeats every 30 s (Prefect's minimum) and a zombie window of 60 s
(SUNDAY_HEARTBEAT_SECONDS, SUNDAY_ZOMBIE_SECONDS: the automation registered is prefect.yaml's own).
The cases run in order on it:
1. a push; the Prefect server restarted (`server.sh restart-server`) while its CI runs, then while the CD it
   triggered runs: both finish (or end Crashed and a Retry finishes them), staging serves the commit, every task
   run reached a final state (but one the restart cut off, reported) and no concurrency slot stays taken;
2. a push; the CI worker and its flow run killed -9 once the images are published: the zombie automation marks
   the run Crashed, Retry in the UI runs it on the pool's other worker, which reuses the published images (their
   digests unchanged, the build tasks Cached) and CD deploys it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sunday_release.registry import RegistryClient
from tests.deployed_ci import ProcessWorker
from tests.faults._engine import (
    active_slots,
    environ_of,
    kill_worker_and_runs,
    restart_server,
    task_runs,
    wait_for,
)
from tests.faults.test_platform_e2e import FINAL, Stack, running_stack
from tests.test_ui_retry import press_retry

pytestmark = pytest.mark.docker

HEARTBEAT, ZOMBIE = 30, 60  # Prefect's shortest heartbeat; two of them
REGISTRY = "localhost:5000"  # the sample app's (sunday_release.config's default)
RECORDED = 30  # seconds for a task run's state event to be written: six flushes of Prefect's task run recorder


@pytest.fixture(scope="module")
def stack(starts_server: None, docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    extra = {"SUNDAY_HEARTBEAT_SECONDS": str(HEARTBEAT), "SUNDAY_ZOMBIE_SECONDS": str(ZOMBIE)}
    with running_stack(tmp_path_factory.mktemp("engine-faults"), extra) as running:
        yield running


def _run_of(stack: Stack, deployment: str, parameters: dict[str, str]) -> dict[str, Any] | None:
    return next((run for run in stack.runs(deployment)
                 if all(run["parameters"].get(k) == v for k, v in parameters.items())), None)


def _mid_run(stack: Stack, deployment: str, parameters: dict[str, str], tasks: int) -> dict[str, Any]:
    """The run once it is Running with at least `tasks` task runs finished."""
    def check() -> dict[str, Any] | None:
        for pid in (stack.platform.dir / "pids").glob("worker-*"):
            assert Path(f"/proc/{pid.read_text().strip()}").exists(), f"{pid.name} died\n{stack.logs()}"
        run = _run_of(stack, deployment, parameters)
        if run is None or run["state"]["type"] != "RUNNING":
            if run is not None and run["state"]["type"] in FINAL:
                pytest.fail(f"{deployment} {parameters} ended before the fault: {run['state']}")
            return None
        done = [t for t in task_runs(stack.platform, run["id"]) if (t["state"] or {}).get("type") in FINAL]
        return run if len(done) >= tasks else None

    found: dict[str, Any] = wait_for(f"{deployment} {parameters} running with {tasks} task runs done", check,
                                     timeout=600, why=stack.logs)
    return found


def _finished(stack: Stack, deployment: str, parameters: dict[str, str], tmp_path: Path) -> tuple[dict[str, Any], str]:
    """The run completed, retried from the UI first if it ended Crashed; the run and how it got there."""
    run = stack.wait_run(deployment, parameters, {"COMPLETED", "CRASHED"}, timeout=600)
    if run["state"]["type"] == "COMPLETED":
        return run, "completed"
    press_retry(f"{stack.platform.ui}/v2/runs/flow-run/{run['id']}", tmp_path / f"retry-{deployment}.png",
                auth=stack.platform.auth, state="Crashed")
    return stack.wait_run(deployment, parameters, {"COMPLETED"}, timeout=600), "crashed, retried"


def _all_final(stack: Stack, run: dict[str, Any], cut: datetime | None = None) -> list[str]:
    """No task run of the run was left behind (Running, Pending): none of its state changes was lost.

    A task run's states reach the server as events, which its task run recorder writes a moment later: the last task
    of a flow run may still read Running just after the flow run reads Completed. So a state is lost only when it has
    not arrived within RECORDED seconds (a CI run read `publish-rollout` Running 0.5 s after its flow completed).

    Except a task run that was running when the fault `cut` it off (the server restarted: its final state travels
    as an event, and the server's in-memory event queue does not outlive the server process, a durable broker such
    as prefect-redis would keep it; the run's process killed: nothing is left to finish it). Those are returned, to
    be reported."""
    def behind() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        left = [t for t in task_runs(stack.platform, run["id"]) if (t["state"] or {}).get("type") not in FINAL]
        return left, [t for t in left if cut and datetime.fromisoformat(t["state"]["timestamp"]) <= cut]

    deadline = time.monotonic() + RECORDED
    left, cut_off = behind()
    while left != cut_off and time.monotonic() < deadline:
        time.sleep(0.5)
        left, cut_off = behind()
    assert left == cut_off, [(t["name"], t["state"]["name"], t["state"]["timestamp"], cut) for t in left]
    return [f"{t['name']} (attempt {t['flow_run_run_count']}) {t['state']['name']} since {t['state']['timestamp']}"
            for t in cut_off]


def _leases(stack: Stack) -> str:
    """What the server and the workers logged about concurrency leases and slots."""
    logs = stack.platform.dir / "logs"
    lines = [f"{log.name}: {line}" for log in sorted(logs.glob("*.log"))
             for line in log.read_text(errors="replace").splitlines() if re.search(r"(?i)lease|slot", line)]
    return "\n".join(lines[-40:])


def test_the_server_restarted_mid_ci_and_mid_cd(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    platform = stack.platform
    sha = stack.commit("one")
    stack.push("refs/heads/main", sha)
    ci = _mid_run(stack, "ci", {"sha": sha}, tasks=3)
    gone, window = restart_server(platform)
    ci, ci_end = _finished(stack, "ci", {"sha": sha}, tmp_path)
    stale = _all_final(stack, ci, window[1])
    assert ci["state"]["message"] is None or "heartbeat" not in ci["state"]["message"], ci["state"]

    cd = _mid_run(stack, "cd-staging", {"version": sha}, tasks=2)
    gone_cd, window = restart_server(platform)
    cd, cd_end = _finished(stack, "cd-staging", {"version": sha}, tmp_path)
    stale += _all_final(stack, cd, window[1])
    stack.serves(stack.staging, sha, "one")
    # nothing held on: the ci deployment's concurrency limit and the environment's deploy slot come free
    ci_limit = platform.get(f"/deployments/{stack.deployments['ci']}").json()["global_concurrency_limit"]["name"]
    freed = time.monotonic()
    freed_in = {}
    for name in (ci_limit, f"deploy:{stack.staging.project}:staging"):  # at the latest when their leases expire
        wait_for(f"{name} free", lambda name=name: active_slots(platform, name) == 0, timeout=90,  # type: ignore[misc]
                 why=lambda: _leases(stack))
        freed_in[name] = round(time.monotonic() - freed, 1)
    print(f"server restarts: {gone:.1f} s mid-CI (run {ci_end}), {gone_cd:.1f} s mid-CD (run {cd_end}); "
          f"slots free after (s) {freed_in}; case {time.monotonic() - started:.1f} s; "
          f"task runs left as they were when the server went: {stale}")


def _digests(service_repos: list[str]) -> dict[str, str]:
    """Every tag of the services' repositories → the digest it points at, read from the registry."""
    import httpx

    out: dict[str, str] = {}
    with RegistryClient(REGISTRY) as client:
        for repo in service_repos:
            tags = httpx.get(f"http://{REGISTRY}/v2/{repo}/tags/list", timeout=30).json().get("tags") or []
            for tag in tags:
                found = client.head(repo, tag)
                assert found is not None, (repo, tag)
                out[f"{repo}:{tag}"] = found.digest
    return out


def test_a_worker_killed_mid_run_is_crashed_by_the_zombie_automation_and_retried_elsewhere(
        stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    platform = stack.platform
    first = int((platform.dir / "pids" / "worker-sunday-ci").read_text())
    environ = environ_of(first)  # the second worker is started as server.sh started the first
    sha = stack.commit("two")
    stack.push("refs/heads/main", sha)

    def published() -> dict[str, Any] | None:
        run = _run_of(stack, "ci", {"sha": sha})
        if run is None:
            return None
        names = {t["name"]: t["state"]["type"] for t in task_runs(platform, run["id"]) if t["state"]}
        if names.get("publish[backend]") == "COMPLETED" and names.get("publish[frontend]") == "COMPLETED":
            return run
        assert run["state"]["type"] not in FINAL, run["state"]
        return None

    run = wait_for(f"ci of {sha[:8]}: both images published", published, timeout=600, why=stack.logs)
    killed = kill_worker_and_runs(platform, "sunday-ci")
    killed_at, killed_when = time.monotonic(), datetime.now(UTC)
    assert _run_of(stack, "ci", {"sha": sha})["state"]["type"] == "RUNNING"  # type: ignore[index]
    repos = [f"{stack.staging.project}/backend", f"{stack.staging.project}/frontend"]
    before = _digests(repos)
    with ProcessWorker("sunday-ci", tmp_path / "second", env=environ, poll_seconds=0.5) as second:
        crashed = stack.wait_run("ci", {"sha": sha}, {"CRASHED"}, timeout=ZOMBIE + 90)
        to_crash = time.monotonic() - killed_at
        assert f"No heartbeat for {ZOMBIE} s" in (crashed["state"]["message"] or ""), crashed["state"]
        wait_for("the second worker online", lambda: any(
            w["status"] == "ONLINE" and f"Worker '{w['name']}' started" in second.log.read_text()
            for w in platform.post("/work_pools/sunday-ci/workers/filter").json()), timeout=120, why=second.log_tail)

        press_retry(f"{platform.ui}/v2/runs/flow-run/{run['id']}", tmp_path / "retry.png", auth=platform.auth,
                    state="Crashed")
        retried = stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
        assert retried["id"] == run["id"] and retried["run_count"] == 2, retried
        submitted = re.findall(r"Worker '([^']+)' submitting flow run", "\n".join(stack.run_logs(run["id"])))
        assert len(submitted) == 2 and submitted[1] != submitted[0], submitted
        assert submitted[1] in second.log.read_text(), second.log_tail()  # attempt 2 on the worker started here

        # the published images were reused: attempt 2 built and pushed nothing, and no digest moved
        attempts: dict[str, list[str]] = {}
        for t in sorted(task_runs(platform, run["id"]), key=lambda t: t["flow_run_run_count"]):
            attempts.setdefault(t["name"], []).append(t["state"]["name"])
        built = [n for n in attempts if n.startswith(("build[", "push["))]  # check images, platform images, pushes
        assert built and all(attempts[n] == ["Completed"] for n in built), attempts  # attempt 2 found them published
        checks = [n for n in attempts if n.startswith(("test[", "lint[", "typecheck["))]  # attempt 1 may have
        assert checks and all(attempts[n][1:] == ["Cached"] for n in checks), attempts  # reused an earlier test's
        after = _digests(repos)
        assert {tag: after[tag] for tag in before} == before, (before, after)
        for repo in repos:  # the release tag, set by attempt 2, names the image attempt 1 published
            assert after[f"{repo}:sha-{sha}"] in {before[t] for t in before if t.startswith(repo + ":")}, after
        cut_off = _all_final(stack, retried, killed_when)

        stack.wait_run("cd-staging", {"version": sha}, {"COMPLETED"}, timeout=300)
    stack.serves(stack.staging, sha, "two")
    print(f"killed {killed}; Crashed {to_crash:.1f} s after the kill; case {time.monotonic() - started:.1f} s; "
          f"task runs the kill cut off: {cut_off}")
