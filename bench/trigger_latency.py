"""Trigger latency and Retry cost on the deployed platform: git push → CI Running; Retry vs a full CI run.

Part 1 sends signed pushes (each of a new empty commit: the receiver drops a repeated one) to the webhook
receiver (`sunday-release webhook`); the `git.push` event of each
makes the `ci` deployment's trigger (prefect.yaml) create a CI run, which a process worker starts. Pushes
alternate between the two ways a run can start: `plain` (Prefect's own `python -m prefect.engine`, which
imports Prefect and the flow first) and `prewarmed` (the pools' command under `make server`:
`deployments.launch` hands the run to `deployments.prewarmed`, a fork of a process that imported them
already). Prints per way the median and max time from the HTTP request to the run's Running state (target
median <= 2 s), and where that time goes (run created by the trigger, picked up by the worker). Each run is
cancelled once Running, so the next push finds the worker and the deployment's concurrency limit free.

Part 2 (prewarmed) times full CI runs of the sample app through the deployment: the first from nothing (an
empty registry and an empty Docker build cache, `docker builder prune -af`: every image of both platforms
built and pushed) and one of a commit changing both services (warm caches); then a run of another such
commit that fails in its last stage (the image scans find no Trivy DB) and its UI-style Retry (the
AwaitingRetry state the UI's Retry button sets) once the DB is back. Prints the times and the ratio
retry/full against both full runs (target <= 0.15 against the full run). Every time runs from the request to
the final state.

Everything is its own: a Prefect server, a registry, the `sunday-ci` pool with one worker, the webhook, the
prewarmed server. Part 2 empties the machine's Docker build cache.

    .venv/bin/python bench/trigger_latency.py [--pushes 20] [--poll 0.5] [--latency-only] [--server-timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, free_port, git, make_repo
from ci_cache import start_registry

from adapters.webhook import sign
from deployments.prewarmed import launch_command
from tests.deployed_ci import PREFECT, ProcessWorker, wait_for_flow_run, write_clean_trivy_db

CLI = str(ROOT / ".venv/bin/sunday-release")
POOL = "sunday-ci"  # prefect.yaml's pool of the ci deployment


@contextmanager
def prefect_server(home: Path, timeout: float) -> Iterator[None]:
    """A Prefect server of the benchmark's own (given `timeout` seconds to start: a busy machine is slow)."""
    from adapters.server import LocalServer

    server = LocalServer(home, port=free_port())
    os.environ["PREFECT_API_URL"] = server.start(timeout=timeout)
    os.environ["PREFECT_API_AUTH_STRING"] = server.auth_string()  # the CLI children authenticate too
    try:
        yield
    finally:
        server.stop()


def deploy_ci(repo: Path) -> Any:
    """Register prefect.yaml's `ci` deployment (its git.push trigger included); return its id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    env = {**os.environ, "SUNDAY_RELEASE_DIR": str(ROOT), "SUNDAY_APP_REPO": str(repo)}
    done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "ci"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode != 0:
        sys.exit(f"prefect deploy --name ci failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name("ci/ci").id


def start_webhook(repo: Path, secret: str, stack: ExitStack, log: Path) -> str:
    """`sunday-release webhook` on a free port (stopped by `stack`); return its URL once it answers."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([CLI, "webhook", "--port", str(port), "--repo", str(repo)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "SUNDAY_WEBHOOK_SECRET": secret})
    stack.callback(lambda: (proc.send_signal(signal.SIGINT), proc.wait(30)))
    deadline = time.monotonic() + 180  # a busy machine takes its time to import the CLI
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}/webhook"
        except httpx.HTTPError:
            time.sleep(0.1)
    sys.exit(f"the webhook receiver did not start: {log.read_text()[-2000:]}")


def push(url: str, secret: str, repo: Path, sha: str) -> float:
    """Send one signed push of main; return the wall-clock time (epoch seconds) the request was sent."""
    body = json.dumps({"ref": "refs/heads/main", "after": sha, "repository": {"clone_url": f"file://{repo}"},
                       "pusher": {"name": "bench"}}).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-Hub-Signature-256": sign(secret.encode(), body)}
    sent = time.time()
    answer = httpx.post(url, content=body, headers=headers, timeout=30)
    if answer.status_code != 202 or answer.json().get("status") != "accepted":
        sys.exit(f"the webhook refused the push: {answer.status_code} {answer.text}")
    return sent


def next_run(client: Any, deployment_id: Any, seen: set[Any], timeout: float = 60) -> Any:
    """The deployment's flow run that is not in `seen` (the one the last push's trigger created)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        new = [r for r in runs if r.id not in seen]
        if new:
            return new[0]
        time.sleep(0.05)
    sys.exit("no CI run was created for the push (is the git.push trigger registered?)")


def since(client: Any, run_id: Any, started: float) -> dict[str, float]:
    """Seconds from `started` (epoch) to each state the run entered after it (the last of each name)."""
    return {s.name: s.timestamp.timestamp() - started for s in client.read_flow_run_states(run_id)
            if s.timestamp.timestamp() >= started}


def start_way(client: Any, deployment_id: Any, way: str) -> None:
    """Make the deployment's runs start `plain` (Prefect's default command) or `prewarmed` (the launcher)."""
    from prefect.client.schemas.actions import DeploymentUpdate

    variables = {"command": launch_command()} if way == "prewarmed" else {}
    client.update_deployment(deployment_id, DeploymentUpdate(job_variables=variables))


WAYS = ("plain", "prewarmed")


def trigger_latencies(url: str, secret: str, repo: Path, deployment_id: Any, worker: ProcessWorker,
                      pushes: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per way and push: seconds from the request to the run created, to Pending (worker), to Running."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    seen: set[Any] = set()
    out: dict[str, list[tuple[float, float, float]]] = {way: [] for way in WAYS}
    with get_client(sync_client=True) as client:
        for i in range(pushes):
            way = WAYS[i % 2]  # alternating: a noisy machine hurts both alike
            start_way(client, deployment_id, way)
            git(repo, "commit", "-q", "--allow-empty", "-m", f"bench push {i + 1}")  # the webhook drops duplicates
            sent = push(url, secret, repo, git(repo, "rev-parse", "HEAD"))
            run = next_run(client, deployment_id, seen)
            seen.add(run.id)
            wait_for_flow_run(run.id, worker, until=lambda s: s is not None and (s.is_running() or s.is_final()),
                              timeout=120)
            states = since(client, run.id, sent)
            if "Running" not in states:
                sys.exit(f"push {i + 1}: the run ended without running: {states}")
            client.set_flow_run_state(run.id, Cancelling(message="trigger-latency bench"), force=True)
            out[way].append((run.created.timestamp() - sent, states["Pending"], states["Running"]))
            got = out[way][-1]
            print(f"  push {i + 1:2d} {way:9s}: created {got[0]:5.2f} s   pending {got[1]:5.2f} s   "
                  f"running {got[2]:5.2f} s", flush=True)
            wait_for_flow_run(run.id, worker, timeout=120)  # cancelled: its concurrency slot is free again
    return out


def run_ci(deployment_id: Any, repo: Path, worker: ProcessWorker, expect: str = "Completed") -> tuple[Any, float]:
    """Create a CI run of main from the deployment; return it once final and the seconds it took."""
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"repo": str(repo), "ref": "main"})
    run = wait_for_flow_run(run.id, worker, timeout=3600)
    if run.state.name != expect:
        sys.exit(f"expected CI to end {expect}, it is {run.state!r}")
    return run, time.monotonic() - started


def change_every_service(repo: Path) -> None:
    for path, line in (("backend/sunday_api/__init__.py", "# bench\n"), ("frontend/public/style.css", "/* bench */\n")):
        (repo / path).write_text((repo / path).read_text() + line)
    git(repo, "commit", "-qam", "a change in every service")


def retry_cost(deployment_id: Any, repo: Path, worker: ProcessWorker, trivy_cache: Path) -> None:
    """Full CI runs (cold registry, warm caches) vs a UI-style Retry of a run that failed in its last stage."""
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    write_clean_trivy_db(trivy_cache)
    with get_client(sync_client=True) as client:
        start_way(client, deployment_id, "prewarmed")
    subprocess.run(["/usr/bin/docker", "builder", "prune", "-af"], check=True, capture_output=True)
    _, cold = run_ci(deployment_id, repo, worker)
    print(f"full CI run (empty registry and build cache: all built):     {cold:6.1f} s", flush=True)
    change_every_service(repo)
    _, warm = run_ci(deployment_id, repo, worker)
    print(f"full CI run, a change in every service (warm caches):        {warm:6.1f} s", flush=True)

    change_every_service(repo)
    shutil.rmtree(trivy_cache / "db")  # the fault: no Trivy DB, the image scans (the last stage) fail
    failed, first = run_ci(deployment_id, repo, worker, expect="Failed")
    if "no Trivy vulnerability DB" not in (failed.state.message or ""):
        sys.exit(f"expected the image scans to fail, got {failed.state!r}")
    print(f"the same, failing at the image scans (no Trivy DB):          {first:6.1f} s", flush=True)
    write_clean_trivy_db(trivy_cache)  # the fault is gone: Retry
    started, wall = time.monotonic(), time.time()
    with get_client(sync_client=True) as client:  # what the UI's Retry button sends
        client.set_flow_run_state(failed.id, AwaitingRetry(message="Retry from the UI"), force=True)
        retried = wait_for_flow_run(failed.id, worker, timeout=3600)
        retry = time.monotonic() - started
        phases = since(client, failed.id, wall)
    if not retried.state.is_completed():
        sys.exit(f"the Retry did not complete: {retried.state!r}")
    print(f"UI-style Retry of it (scans, tags, reports run again):       {retry:6.1f} s   "
          f"(worker picked it up at {phases['Pending']:.1f} s, Running at {phases['Running']:.1f} s)")
    print(f"ratio retry/full CI run            {retry / cold:5.2f}  (target <= 0.15)")
    print(f"ratio retry/warm CI run            {retry / warm:5.2f}  (for comparison: a new run on warm caches)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--latency-only", action="store_true", help="part 1 only (leaves the build cache alone)")
    parser.add_argument("--server-timeout", type=float, default=300,
                        help="seconds the Prefect server may take to start")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="the worker's PREFECT_WORKER_QUERY_SECONDS (make server: SUNDAY_WORKER_QUERY_SECONDS, "
                             "1 by default; Prefect's is 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sunday-bench-trigger-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        registry, address = start_registry(work / "registry")
        stack.callback(lambda: (registry.terminate(), registry.wait(10)))
        os.environ["SUNDAY_HOME"] = str(work / "home")
        stack.enter_context(prefect_server(work / "home", args.server_timeout))
        repo = make_repo(work / "repo", config_prefix=f"registry: {address}\n")
        deployment_id = deploy_ci(repo)
        trivy_cache = work / "trivy-cache"  # the workers' offline Trivy DB: part 2 takes it away and back
        sock = work / "prewarm.sock"
        prewarmed = subprocess.Popen([sys.executable, "-m", "deployments.prewarmed", "--socket", str(sock)], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(lambda: (prewarmed.terminate(), prewarmed.wait(10)))
        worker = stack.enter_context(ProcessWorker(POOL, work / "worker", poll_seconds=args.poll, env={
            "SUNDAY_TRIVY_CACHE": str(trivy_cache), "SUNDAY_PREWARM_SOCKET": str(sock)}))
        worker.wait_online()
        secret = secrets.token_urlsafe(32)
        url = start_webhook(repo, secret, stack, work / "webhook.log")

        print(f"part 1: {args.pushes} signed pushes -> git.push -> trigger -> worker "
              f"(worker polls every {args.poll:g} s)", flush=True)
        lat = trigger_latencies(url, secret, repo, deployment_id, worker, args.pushes)
        for way in WAYS:
            created, pending, running = ([x[i] for x in lat[way]] for i in range(3))
            for label, values in (("run created by the trigger", created),
                                  ("picked up by the worker (Pending)", pending), ("Running", running)):
                print(f"{way:9s} request -> {label:34s} median {statistics.median(values):5.2f} s   "
                      f"max {max(values):5.2f} s")
        medians = {way: statistics.median(x[2] for x in lat[way]) for way in WAYS}
        print(f"median request -> Running: plain {medians['plain']:.2f} s   prewarmed {medians['prewarmed']:.2f} s   "
              f"ratio {medians['prewarmed'] / medians['plain']:.2f}   (target <= 2 s; make server runs prewarmed)",
              flush=True)

        if args.latency_only:
            return
        print("part 2: full CI runs vs a UI-style Retry of a run that failed in its last stage", flush=True)
        retry_cost(deployment_id, repo, worker, trivy_cache)


if __name__ == "__main__":
    main()
