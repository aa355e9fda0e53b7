"""Rollout analysis on real traffic: releases that degrade after the switch, and healthy ones, judged by Prometheus.

One environment of the sample app on the docker target, the platform's Prometheus (adapters/prometheus.py with
infra/local/prometheus.yml) scraping it, users' traffic through the router the whole time (20 requests a second,
tests/app_variants.Users). Alternately a healthy release (a new page title) and one that degrades only once it
takes the users' traffic (tests/app_variants.inject_user_fault): 5 % of their requests fail, 30 % fail, or each
answers 300 ms later. Prints, per release, the outcome and for a degraded one the time from the switch (the
degradation's start) to the rollback done, as a ratio to the watch window (target <= 0.5), and the users'
requests that failed meanwhile; then the detection rate (target 5/5) and the false rollbacks (target 0).

    .venv/bin/python bench/analysis.py [--rounds 5] [--watch 40]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, free_port, git, make_repo, prefect_server, run_ci
from bluegreen import cleanup

from adapters.prometheus import LocalPrometheus
from tests.app_variants import Users, inject_user_fault, remove_user_fault

CLI = str(ROOT / ".venv" / "bin" / "sunday-release")
FAULTS = [("5% of requests fail", 5, 0.0), ("30% of requests fail", 30, 0.0), ("p95 +300 ms", 0, 0.3)]


def configure(repo: Path, env: str, watch: int) -> None:
    config = repo / "sunday-release.yaml"
    text = config.read_text().replace("    route: /", "    platforms: [linux/amd64]\n    route: /")
    text = text.replace("environments:\n", f"environments:\n  {env}: {{port: {free_port()}, db_port: {free_port()}, "
                        f"watch_seconds: {watch}, drain_seconds: 1, health_interval: 60}}\n", 1)
    config.write_text(text)
    git(repo, "commit", "-qam", f"environment {env}")


def deploy(env: str, repo: Path, version: str) -> tuple[int, str]:
    done = subprocess.run([CLI, "cd", "--env", env, "--version", version, "--repo", str(repo)],
                          capture_output=True, text=True, check=False)
    return done.returncode, done.stderr


def last_release(env: str) -> dict[str, object]:
    done = subprocess.run([CLI, "status", "--env", env, "--json"], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout)["history"][-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="healthy releases, and as many degrading ones")
    parser.add_argument("--watch", type=int, default=40, help="the watch window, seconds")
    args = parser.parse_args()
    env = f"an-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="sunday-bench-analysis-") as tmp:
        home = Path(tmp)
        db_root = home / "db"
        db_root.mkdir()
        db_root.chmod(0o755)
        home.chmod(0o755)
        os.environ["SUNDAY_DB_ROOT"] = str(db_root)
        prometheus = LocalPrometheus(home, port=free_port())
        with prefect_server(home):
            url = prometheus.start()
            if url is None:
                sys.exit("no Prometheus: make setup installs Debian's prometheus")
            os.environ["SUNDAY_PROMETHEUS_URL"] = url
            repo = make_repo(home / "app")
            configure(repo, env, args.watch)
            original = (repo / "backend" / "sunday_api" / "server.py").read_text()
            index = repo / "frontend" / "public" / "index.html"
            run_ci(repo)
            base = git(repo, "rev-parse", "HEAD")
            code, err = deploy(env, repo, base)
            if code != 0:
                sys.exit(f"the first deploy failed:\n{err[-3000:]}")
            port = int(next(line for line in (repo / "sunday-release.yaml").read_text().splitlines()
                            if line.startswith(f"  {env}:")).split("port: ")[1].split(",")[0])
            rows: list[dict[str, object]] = []
            try:
                with Users(f"http://127.0.0.1:{port}") as users:
                    for i in range(args.rounds):
                        remove_user_fault(repo, original)
                        index.write_text(index.read_text().replace("</title>", f" h{i}</title>", 1))
                        git(repo, "commit", "-qam", f"healthy {i}")
                        run_ci(repo)
                        healthy = git(repo, "rev-parse", "HEAD")
                        code, err = deploy(env, repo, healthy)
                        rows.append({"release": f"healthy {i}", "rolled_back": code != 0,
                                     "reason": err.strip().splitlines()[-1] if code else ""})
                        print(json.dumps(rows[-1]), flush=True)
                        name, percent, delay = FAULTS[i % len(FAULTS)]
                        inject_user_fault(repo, fail_percent=percent, delay_seconds=delay)
                        git(repo, "commit", "-qam", f"degrades: {name}")
                        run_ci(repo)
                        code, err = deploy(env, repo, git(repo, "rev-parse", "HEAD"))
                        release = last_release(env)
                        timings = release["timings"]
                        assert isinstance(timings, dict)
                        row: dict[str, object] = {"release": f"degrading {i}: {name}", "rolled_back": code != 0}
                        if code != 0 and "switched_at" in timings:
                            done = timings["failed_at"] + timings.get("rollback_seconds", 0.0)
                            row |= {"switch_to_rollback_s": round(done - timings["switched_at"], 1),
                                    "ratio_to_watch": round((done - timings["switched_at"]) / args.watch, 2),
                                    "failed_requests": users.failed_between(timings["switched_at"], done),
                                    "reason": str(release.get("reason", ""))[:160]}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                prometheus.stop()
                cleanup(home, db_root, "sunday", env)
    degrading = [r for r in rows if str(r["release"]).startswith("degrading")]
    healthy_rows = [r for r in rows if str(r["release"]).startswith("healthy")]
    detected = [r for r in degrading if r["rolled_back"]]
    ratios = [float(r["ratio_to_watch"]) for r in detected if "ratio_to_watch" in r]  # type: ignore[arg-type]
    print(f"\ndetected {len(detected)}/{len(degrading)} degrading releases (target all); false rollbacks "
          f"{sum(1 for r in healthy_rows if r['rolled_back'])}/{len(healthy_rows)} (target 0)")
    if ratios:
        print(f"switch → rollback done, as a ratio to the {args.watch} s watch window: median "
              f"{statistics.median(ratios):.2f}, max {max(ratios):.2f} (target <= 0.5)")
        print(f"users' requests failed during it: {sum(int(r.get('failed_requests', 0)) for r in detected)} in all "
              f"(20 requests a second)")  # type: ignore[call-overload]
    return 0


if __name__ == "__main__":
    sys.exit(main())
