"""Scale: what a rerun, another service, another task run and another build host cost. Ratios from one run.

Parts (all by default; `--parts cache,hosts` picks):
- cache: cold CI of the sample app as shipped (two platforms; empty registry, empty Docker build cache, empty
  result storage) vs a rerun of the same commit (target warm/cold <= 0.05: nothing built, no check run, no
  image scanned again).
- services: CI of a generated 20-service repository vs the same with 2 services (each service a small shell
  tool with a test stage, amd64): the marginal cost of a service, (t20 - t2) / 18.
- overhead: Prefect's own cost per task run: a flow submitting N no-op tasks vs N = 0, per task in ms (target
  <= 50 ms), against the benchmark's server.
- hosts: a CI run that fails at its last stage on host A (its Trivy DB has a blocking advisory), retried on
  host B (a DB without it)
  (devtools/build_host.py: its own dockerd, host name and SUNDAY_HOME; the same server, S3 results and
  registry): the Retry on B / the first attempt on A.

- runs: 50 flow runs submitted at once to the server, each a small I/O-bound task
  (bench/io_flow.py: an HTTP GET that a local server answers after 2 s), through the platform's work-pool
  command (deployments.launch, forked from a prewarmed server, as `make server` runs them), each worker taking
  4 runs at a time: every run must complete and the HTTP server must have seen each run's request exactly once
  (none lost, none run twice); runs/minute with 2 workers vs 1 (goal >= 1.6 on 2 cores).

Everything is its own: a Prefect server on PostgreSQL (as `make server`), a registry, an S3 endpoint
(moto_server, a stand-in for AWS S3) for the hosts part. The cache part empties the machine's Docker build cache.

    .venv/bin/python bench/scale.py [--parts cache,services,overhead,hosts,runs] [--tasks 1000] [--runs 50]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, free_port, git, make_repo, run_ci
from ci_cache import start_registry

from devtools.build_host import build_host
from devtools.trivydb import Advisory, write_trivy_db
from tests.deployed_ci import ProcessWorker, wait_for_flow_run

TOOL = ROOT / "tests" / "fixtures" / "other-app" / "tool"


def write_clean_trivy_db(cache: Path) -> None:
    """An offline Trivy DB dated now, with one FAKE advisory for a package no image has."""
    write_trivy_db(cache, [Advisory("CVE-2099-0999", "debian 12", "no-such-package", "CRITICAL", "FAKE (benchmark)",
                                    "1.0")])


def amd64_only(repo: Path) -> None:
    config = repo / "sunday-release.yaml"
    config.write_text(re.sub(r"^(  (backend|frontend):\n)", r"\1    platforms: [linux/amd64]\n", config.read_text(),
                             flags=re.M))
    git(repo, "commit", "-qam", "amd64 only")


@contextmanager
def fresh_results() -> Iterator[None]:
    """An empty result storage for the CLI's runs (no check pass or Trivy report from before)."""
    before = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    with tempfile.TemporaryDirectory(prefix="sunday-bench-results-") as fresh:
        os.environ["PREFECT_LOCAL_STORAGE_PATH"] = fresh
        try:
            yield
        finally:
            os.environ.pop("PREFECT_LOCAL_STORAGE_PATH")
            if before is not None:
                os.environ["PREFECT_LOCAL_STORAGE_PATH"] = before


def change_every_service(repo: Path) -> None:
    """Content no run built before: every service's image must be built (and its checks run)."""
    for path in ("backend/sunday_api/__init__.py", "frontend/public/style.css"):
        comment = "#" if path.endswith(".py") else "/*"
        (repo / path).write_text((repo / path).read_text() + f"\n{comment} {secrets.token_hex(8)}"
                                 + (" */" if comment == "/*" else "") + "\n")
    git(repo, "commit", "-qam", "a change in every service")


def cache(work: Path, address: str) -> None:
    """The sample app as shipped (linux/amd64 and linux/arm64, the latter under QEMU)."""
    repo = make_repo(work / "cache-repo", config_prefix=f"registry: {address}\n")
    change_every_service(repo)
    with fresh_results():
        subprocess.run(["/usr/bin/docker", "builder", "prune", "-af"], check=True, capture_output=True)
        cold = run_ci(repo)
        warm = run_ci(repo)
    print(f"cold CI of the sample app (nothing built, checked or scanned before): {cold:7.1f} s", flush=True)
    print(f"warm CI of the same commit:                                          {warm:7.1f} s", flush=True)
    print(f"ratio warm/cold  {warm / cold:5.3f}  (target <= 0.05)", flush=True)


def tools_repo(dest: Path, services: int, address: str) -> Path:
    """A repository of `services` small shell tools (tests/fixtures/other-app's), each of its own content."""
    lines = [f"project: scale{services}", f"registry: {address}", "services:"]
    for i in range(services):
        shutil.copytree(TOOL, dest / f"tool{i:02d}")
        (dest / f"tool{i:02d}" / "build-id").write_text(secrets.token_hex(8))
        lines += [f"  tool{i:02d}:", f"    context: tool{i:02d}", "    port: 8080", "    platforms: [linux/amd64]",
                  "    checks:", "      test: [sh, tests/run.sh]", "      lint: [sh, -n, wordcount.sh]"]
    (dest / "sunday-release.yaml").write_text("\n".join(lines) + "\n")
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", f"{services} services")
    return dest


def services(work: Path, address: str) -> None:
    times = {}
    for count in (2, 20):
        times[count] = run_ci(tools_repo(work / f"tools-{count}", count, address))
        print(f"CI of a {count:2d}-service repository (every service new): {times[count]:7.1f} s", flush=True)
    marginal = (times[20] - times[2]) / 18
    print(f"marginal cost of a service  {marginal:5.2f} s   ratio t20/t2  {times[20] / times[2]:5.2f}", flush=True)


def overhead(tasks: int) -> None:
    from prefect import flow, task

    @task(persist_result=False)
    def nothing(i: int) -> int:
        return i

    @flow(persist_result=False)
    def fan_out(n: int) -> int:
        return sum(f.result() for f in [nothing.submit(i) for i in range(n)])

    logging.getLogger("prefect").setLevel(logging.WARNING)  # not a line per task run
    fan_out(1)  # the first flow run pays the imports and the client's start
    timed = {}
    for n in (0, tasks):
        started = time.monotonic()
        fan_out(n)
        timed[n] = time.monotonic() - started
    per = (timed[tasks] - timed[0]) / tasks * 1000
    print(f"a flow of {tasks} no-op task runs: {timed[tasks]:6.2f} s; of none: {timed[0]:5.2f} s", flush=True)
    print(f"Prefect's overhead per task run  {per:5.1f} ms  (target <= 50 ms)", flush=True)


@contextmanager
def s3_results(stack: ExitStack) -> Iterator[str]:
    """moto_server (AWS S3 cannot run here) and the result storage block on it: yields the block's slug."""
    from deployments.result_storage import register_result_storage

    port = free_port()
    proc = subprocess.Popen([str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait(10)))
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-not-a-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-not-a-secret")
    yield register_result_storage(f"http://127.0.0.1:{port}", "bench-results", name="bench-results")


def hosts(work: Path, address: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import AwaitingRetry

    from flows.ci import ci

    repo = make_repo(work / "hosts-repo", config_prefix=f"registry: {address}\n")
    amd64_only(repo)
    change_every_service(repo)  # host A builds, checks and pushes both images
    pool = f"bench-hosts-{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        shared = {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": stack.enter_context(s3_results(stack))}
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment = ci.from_source(str(ROOT), "flows/ci.py:ci").deploy(
            name=pool, work_pool_name=pool, print_next_steps=False, ignore_warnings=True)
        # host A's DB has a (FAKE) critical advisory for tar, which every image has: its image scans, the last
        # stage, run and block; host B's DB, a newer one without it, lets the Retry pass
        blocking = work / "trivy-a"
        write_trivy_db(blocking, [Advisory("CVE-2099-0100", "debian 12", "tar", "CRITICAL", "FAKE (benchmark)",
                                           "9.9-1")])
        with ProcessWorker(pool, work / "worker-a", env={**shared, "SUNDAY_TRIVY_CACHE": str(blocking)},
                           poll_seconds=0.5) as worker:
            worker.wait_online()
            started = time.monotonic()
            with get_client(sync_client=True) as client:
                run_id = client.create_flow_run_from_deployment(deployment, parameters={"repo": str(repo)}).id
            first = wait_for_flow_run(run_id, worker, timeout=3600)
            on_a = time.monotonic() - started
        if "CVE-2099-0100" not in (first.state.message or ""):
            sys.exit(f"expected the image scans to block on host A, got {first.state!r}")
        with build_host() as host_b, ProcessWorker(pool, work / "worker-b", env={**shared, **host_b.env()},
                                                   wrap=host_b.command, poll_seconds=0.5) as worker:
            write_clean_trivy_db(host_b.home / "trivy-cache")
            worker.wait_online()
            started = time.monotonic()
            with get_client(sync_client=True) as client:  # what the UI's Retry button sends
                client.set_flow_run_state(run_id, AwaitingRetry(message="Retry from the UI"), force=True)
            second = wait_for_flow_run(run_id, worker, timeout=3600)
            on_b = time.monotonic() - started
            images_b = host_b.images()
        if not second.state.is_completed():
            sys.exit(f"the Retry on host B did not complete: {second.state!r}")
    print(f"CI blocked at its last stage on host A (built, checked, pushed, scanned): {on_a:7.1f} s", flush=True)
    print(f"its Retry on host B (checkout, image scans with its DB, tags):         {on_b:7.1f} s "
          f"(images on B's engine: {len(images_b)})", flush=True)
    print(f"ratio retry on B / first attempt on A  {on_b / on_a:5.2f}", flush=True)


def busy_seconds() -> float:
    """CPU seconds the machine has spent busy (all cores, /proc/stat), to tell I/O-bound from CPU-bound."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class SlowAnswers:
    """A local HTTP server that answers GET /ID after `wait` seconds and counts the requests of each ID."""

    def __init__(self, wait: float) -> None:
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: Counter[str] = Counter()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(wait)
                with lock:
                    outer.seen[self.path.strip("/")] += 1
                body = self.path.encode() * 64
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def postgres_server(work: Path) -> Iterator[None]:
    """A Prefect server of its own on a PostgreSQL database (tests/pg.py), as `make server` runs it; PREFECT_API_URL
    points at it meanwhile. Not SQLite: there two writes at once (two tasks taking a tag lock) make the server answer
    503 and the client retry 2 s later, which was most of a warm CI's time."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from adapters.server import LocalServer

    saved = dict(os.environ)
    from tests.pg import start_postgres, stop_postgres  # imports tests/conftest.py, which sets the tests' environment

    os.environ.clear()
    os.environ.update(saved)  # the benchmark's own SUNDAY_HOME, Trivy cache, ...
    pg = start_postgres(user="prefect", db="prefect", password=secrets.token_hex(16), schema=False)
    server = LocalServer(work / "pg-server", port=free_port(),
                         database_url=pg.dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    before = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    try:
        url, auth = server.start(timeout=300), server.auth_string()
        os.environ["PREFECT_API_URL"], os.environ["PREFECT_API_AUTH_STRING"] = url, auth
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
            yield
    finally:
        server.stop()
        stop_postgres(pg)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def runs(work: Path, count: int, per_worker: int = 4, wait: float = 2.0) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from deployments.prewarmed import pool_job_template

    answers = SlowAnswers(wait)
    sock = work / "prewarm.sock"
    with ExitStack() as stack:
        stack.callback(answers.close)
        log = stack.enter_context(open(work / "prewarmed.log", "wb"))
        prewarmed = subprocess.Popen([sys.executable, "-m", "deployments.prewarmed", "--socket", str(sock),
                                      "--preload", "flows.ci"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(lambda: (prewarmed.terminate(), prewarmed.wait(10)))
        while not sock.exists():
            if prewarmed.poll() is not None:
                sys.exit(f"the prewarmed server did not start: {(work / 'prewarmed.log').read_text()}")
            time.sleep(0.1)
        rates = {}
        for workers in (1, 2):
            pool = f"bench-runs-{workers}-{uuid.uuid4().hex[:6]}"
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                       base_job_template=pool_job_template()))
            deployment = flow.from_source(str(ROOT), "bench/io_flow.py:io_bound").deploy(  # type: ignore[attr-defined]
                name=pool, work_pool_name=pool, print_next_steps=False, ignore_warnings=True)
            with ExitStack() as running:
                started = [running.enter_context(ProcessWorker(pool, work / f"{pool}-{i}", limit=per_worker,
                                                               poll_seconds=0.5,
                                                               env={"SUNDAY_PREWARM_SOCKET": str(sock)}))
                           for i in range(workers)]
                for worker in started:
                    worker.wait_online()
                began, busy = time.monotonic(), busy_seconds()
                with get_client(sync_client=True) as client:
                    ids = [client.create_flow_run_from_deployment(
                        deployment, parameters={"url": f"{answers.url}/{pool}-{i}"}).id for i in range(count)]
                    while True:
                        states = [r.state for r in client.read_flow_runs(
                            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=count)]
                        if len(states) == count and all(s is not None and s.is_final() for s in states):
                            break
                        if time.monotonic() - began > 1800:
                            sys.exit(f"{workers} worker(s): {count} runs not final after 30 minutes")
                        time.sleep(0.5)
                elapsed, cpu = time.monotonic() - began, busy_seconds() - busy
            completed = sum(1 for s in states if s is not None and s.is_completed())
            requests = [answers.seen[f"{pool}-{i}"] for i in range(count)]
            lost, twice = requests.count(0), sum(1 for n in requests if n > 1)
            rates[workers] = count / elapsed * 60
            print(f"{count} runs on {workers} worker(s) x {per_worker} at a time: {elapsed:6.1f} s, "
                  f"{rates[workers]:5.1f} runs/min; completed {completed}/{count}, requests lost {lost}, "
                  f"run twice {twice}; machine busy {cpu / elapsed / os.cpu_count():4.0%}, "
                  f"{cpu / count:4.2f} CPU-s per run", flush=True)
            if completed != count or lost or twice:
                sys.exit(f"{workers} worker(s): not every run completed exactly once")
    print(f"ratio runs/min 2 workers / 1  {rates[2] / rates[1]:5.2f}  (goal >= 1.6 when the work is I/O-bound)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="cache,services,overhead,hosts,runs")
    parser.add_argument("--tasks", type=int, default=1000, help="no-op task runs of the overhead part")
    parser.add_argument("--runs", type=int, default=50, help="flow runs submitted at once in the runs part")
    args = parser.parse_args()
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="sunday-bench-scale-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        registry, address = start_registry(work / "registry")
        stack.callback(lambda: (registry.terminate(), registry.wait(10)))
        home = work / "home"
        os.environ["SUNDAY_HOME"] = str(home)
        os.environ["SUNDAY_ENV_ROOT"] = str(home / "envs")
        write_clean_trivy_db(home / "trivy-cache")
        stack.enter_context(postgres_server(work))
        for part in parts:
            print(f"--- {part}", flush=True)
            {"cache": lambda: cache(work, address), "services": lambda: services(work, address),
             "overhead": lambda: overhead(args.tasks), "hosts": lambda: hosts(work, address),
             "runs": lambda: runs(work, args.runs)}[part]()


if __name__ == "__main__":
    main()
