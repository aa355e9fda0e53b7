"""E2E cost: wall time of each part (functional, visual, load) alone vs the whole `e2e` flow (parts in parallel).

Each part alone is its task body run directly (`.fn()`, no orchestration), one after another; the
flow runs the three at once under Prefect. Prints per round the parts, their sum, the flow and the
ratio flow/sum (below 1.0: running the parts in parallel pays for the orchestration). Rounds
alternate the two sides so a noisy machine hurts both alike.

Against an environment deployed on this machine (SUNDAY_HOME as for `sunday-release cd`):
    .venv/bin/python bench/e2e_cost.py --env staging [--rounds 3] [--vus 5] [--duration 10s]
or deploy the sample app to a throwaway environment first (CI + CD, torn down afterwards):
    .venv/bin/python bench/e2e_cost.py --deploy
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, free_port, git, make_repo, prefect_server, run_ci

from adapters.server import LocalServer

CLI = str(ROOT / ".venv/bin/sunday-release")


def _timed(fn: Callable[[], Any]) -> float:
    started = time.monotonic()
    try:
        fn()
    except Exception as exc:  # a failing part still took its time; say so
        print(f"    (failed: {str(exc).splitlines()[0][:120]})")
    return time.monotonic() - started


def parts_alone(url: str, work: Path, vus: int, duration: str) -> dict[str, float]:
    from tasks.e2e import check_visual, run_functional_suite, run_load_test

    return {
        "functional": _timed(lambda: run_functional_suite.fn(url, str(work / "functional"))),
        "visual": _timed(lambda: check_visual.fn(url, str(work / "visual"))),
        "load": _timed(lambda: run_load_test.fn(url, str(work / "load"), vus, duration)),
    }


def whole_flow(env: str, vus: int, duration: str) -> float:
    from flows.e2e import e2e

    started = time.monotonic()
    state = e2e(env=env, vus=vus, duration=duration, return_state=True)
    if not state.is_completed():
        print(f"    (flow {state.type.value}: {str(state.result(raise_on_failure=False)).splitlines()[0][:120]})")
    return time.monotonic() - started


@contextmanager
def api_server(home: Path) -> Iterator[None]:
    """PREFECT_API_URL if set, else a Prefect server of the benchmark's own (SUNDAY_HOME untouched)."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    server = LocalServer(home, port=free_port())
    os.environ["PREFECT_API_URL"] = server.start()
    os.environ["PREFECT_API_AUTH_STRING"] = server.auth_string()  # the CLI children authenticate too
    try:
        yield
    finally:
        server.stop()


@contextmanager
def throwaway_env(work: Path) -> Iterator[str]:
    """The sample app, CI'd and deployed to environment `bench-e2e` on free ports; torn down afterwards."""
    name, port, db_port = "bench-e2e", free_port(), free_port()
    db_root = work / "db"
    db_root.mkdir(parents=True)
    work.chmod(0o755)
    db_root.chmod(0o755)
    os.environ["SUNDAY_DB_ROOT"] = str(db_root)
    os.environ["SUNDAY_ENV_ROOT"] = str(work / "envs")  # the benchmark's environment, not the machine's
    repo = make_repo(work / "repo")
    config = repo / "sunday-release.yaml"
    text = config.read_text().replace("    route: /", "    platforms: [linux/amd64]\n    route: /")
    config.write_text(text.replace("environments:\n", f"environments:\n  {name}: {{port: {port}, db_port: {db_port}, "
                                   "watch_seconds: 2, drain_seconds: 1, health_timeout: 90}\n", 1))
    git(repo, "commit", "-qam", "bench environment")
    try:
        print(f"CI of the sample app: {run_ci(repo):.1f} s")
        started = time.monotonic()
        done = subprocess.run([CLI, "cd", "--env", name, "--version", git(repo, "rev-parse", "HEAD"), "--repo",
                               str(repo)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"CD failed:\n{done.stderr[-3000:]}")
        print(f"CD to {name}: {time.monotonic() - started:.1f} s")
        yield name
    finally:
        ids = subprocess.run(["/usr/bin/docker", "ps", "-aq", "--filter", f"label=sunday.env={name}"],
                             capture_output=True, text=True, check=False).stdout.split()
        if ids:
            subprocess.run(["/usr/bin/docker", "rm", "-f", *ids], capture_output=True, check=False)
        conf = Path(os.environ["SUNDAY_ENV_ROOT"]) / "sunday" / name / "router" / "nginx.conf"
        if conf.exists():
            subprocess.run(["nginx", "-s", "quit", "-c", str(conf)], capture_output=True, check=False)
        data = db_root / name / "data"
        if data.exists():
            subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-m",
                            "immediate", "-D", str(data)], capture_output=True, check=False)


def measure(env: str, work: Path, rounds: int, vus: int, duration: str) -> None:
    from flows.cd import saved_config, target_for

    url = target_for(saved_config(env), env).url
    print(f"E2E of {env} at {url}: k6 {vus} VUs for {duration}")
    flows_: list[float] = []
    sums: list[float] = []
    for i in range(rounds):
        def alone(i: int = i) -> None:
            parts = parts_alone(url, work / f"alone-{i}", vus, duration)
            sums.append(sum(parts.values()))
            print("  parts alone: " + "   ".join(f"{k} {v:5.1f} s" for k, v in parts.items())
                  + f"   sum {sums[-1]:5.1f} s")

        def flow() -> None:
            flows_.append(whole_flow(env, vus, duration))
            print(f"  flow:        {flows_[-1]:5.1f} s")

        for side in (alone, flow) if i % 2 == 0 else (flow, alone):
            side()
        print(f"round {i + 1}: flow {flows_[-1]:5.1f} s   sum of parts {sums[-1]:5.1f} s   "
              f"ratio {flows_[-1] / sums[-1]:.2f}")
    f, s = statistics.median(flows_), statistics.median(sums)
    print(f"median:  flow {f:5.1f} s   sum of parts {s:5.1f} s   ratio flow/sum {f / s:.2f} (target < 1.0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--env", help="an environment deployed on this machine")
    where.add_argument("--deploy", action="store_true", help="deploy the sample app to a throwaway environment")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vus", type=int, default=5)
    parser.add_argument("--duration", default="10s")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    work = Path(tempfile.mkdtemp(prefix="sunday-bench-e2e-", dir="/tmp"))
    work.chmod(0o755)  # the postgres OS user must reach the environment's database under it
    try:
        if args.deploy:
            with prefect_server(work / "home") as startup:
                print(f"prefect server start-up: {startup:.1f} s")
                with throwaway_env(work / "env") as env:
                    measure(env, work, args.rounds, args.vus, args.duration)
        else:
            with api_server(work / "server"):
                measure(args.env, work, args.rounds, args.vus, args.duration)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
