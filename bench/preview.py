"""Pull request → preview on the platform, against the same work run by hand: the cost of the event chain.

One platform (`make server`, the webhook receiver, the application served by `git daemon`, a FAKE git host API:
tests/pr_platform.py). Each round opens two pull requests, each a new commit changing the frontend (the backend is
reused by content, as in any real PR that touches one service), alternating which goes first:
- `event`: a signed `pull_request opened` to the receiver; the chain runs on its own (the `ci` trigger, CI on the
  sunday-ci worker, `sunday.ci.passed` → the `preview` deployment on the sunday-deploy worker, E2E as its
  subflow). Timed from the HTTP request to the `sunday-release/preview` status `success` (the preview serves)
  and to the `sunday-release/e2e` status.
- `hand`: the same work as one person would run it, `sunday-release ci` then `sunday-release preview` (which
  deploys and runs E2E), against the same server. Timed to the same two statuses.
Prints the medians and the ratio event/hand for both moments (target <= 1.1), then each preview's teardown time:
a signed `closed` to the `preview-close` run done and the port free. A first, untimed round warms the caches.

    .venv/bin/python bench/preview.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pr_platform import Host, pr_platform


def _wait(host: Host, sha: str, context: str, started: float, timeout: float = 900) -> float:
    status = host.wait_status(sha, context, {"success", "failure", "error"}, timeout, poll=0.2)
    if status["state"] != "success":
        raise SystemExit(f"{context} of {sha[:12]}: {status['state']}: {status['description']}")
    return time.monotonic() - started


def by_event(host: Host, number: int) -> tuple[float, float]:
    sha = host.push_pr(number, f"bench-{number}")
    started, wall = time.monotonic(), time.time()
    host.deliver("opened", number, sha)
    serving = _wait(host, sha, "sunday-release/preview", started)
    took = serving, _wait(host, sha, "sunday-release/e2e", started)
    print("    where the event chain's time went (s from the delivery): " + _breakdown(host, sha, wall), flush=True)
    return took


def _breakdown(host: Host, sha: str, wall: float) -> str:
    """Created, Running and ended of the ci and preview runs of `sha`, relative to the delivery."""
    from datetime import datetime

    def at(stamp: str | None) -> str:
        return f"{datetime.fromisoformat(stamp).timestamp() - wall:5.1f}" if stamp else "  -  "

    parts = []
    for deployment in ("ci", "preview"):
        runs = [r for r in host.stack.runs(deployment) if r["parameters"].get("sha") == sha]
        if runs:
            run = runs[0]
            parts.append(f"{deployment} created {at(run['created'])}, running {at(run['start_time'])}, "
                         f"ended {at(run['end_time'])}")
    return "; ".join(parts)


def by_hand(host: Host, number: int) -> tuple[float, float]:
    """`ci` then `preview` in a thread, as a person runs them; the statuses are watched meanwhile, as for events."""
    sha = host.push_pr(number, f"bench-{number}")
    env = {**host.stack.platform.client_env(), "SUNDAY_GIT_API": host.api_url, "SUNDAY_GIT_TOKEN": host.api.token,
           "SUNDAY_K6_VUS": "2", "SUNDAY_K6_DURATION": "5s", "SUNDAY_TRIVY_CACHE": str(host.stack.trivy),
           **host.stack.staging.env}
    failed: list[str] = []

    def run() -> None:
        for args in (["ci", "--repo", host.url, "--ref", f"refs/pull/{number}/head", "--sha", sha],
                     ["preview", "--repo", host.url, "--pr", str(number), "--sha", sha]):
            done = subprocess.run([sys.executable, "-m", "adapters.cli", *args], env=env, capture_output=True,
                                  text=True, timeout=1800, check=False)
            if done.returncode != 0:
                failed.append(f"{args[0]} of pr {number} failed:\n{done.stderr[-3000:]}")
                return

    started = time.monotonic()
    person = threading.Thread(target=run)
    person.start()
    try:
        took = _wait(host, sha, "sunday-release/preview", started), _wait(host, sha, "sunday-release/e2e", started)
    finally:
        person.join()
    if failed:
        raise SystemExit(failed[0])
    return took


def teardown(host: Host, number: int) -> float:
    sha = subprocess.run(["git", "-C", str(host.stack.repo), "rev-parse", f"topic-{number}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    started = time.monotonic()
    host.deliver("closed", number, sha)
    host.stack.wait_run("preview-close", {"ref": f"refs/pull/{number}/head"}, {"COMPLETED"}, timeout=600)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    subprocess.run(["bash", "infra/local/setup.sh", "all"], check=True, stdout=subprocess.DEVNULL)
    times: dict[str, list[tuple[float, float]]] = {"event": [], "hand": []}
    closes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sunday-bench-preview-") as top, \
            pr_platform(Path(top), "max_active: 5, e2e_vus: 2, e2e_duration: 5s") as host:
        print(f"platform up; warming the caches (pr 100 by hand){' ' * 10}", flush=True)
        by_hand(host, 100)
        closes.append(teardown(host, 100))
        number = 101
        for round_ in range(args.rounds):
            order = ("event", "hand") if round_ % 2 == 0 else ("hand", "event")
            for way in order:
                took = by_event(host, number) if way == "event" else by_hand(host, number)
                times[way].append(took)
                print(f"round {round_ + 1} {way:<5} pr {number}: preview serving {took[0]:6.1f} s, "
                      f"E2E status {took[1]:6.1f} s", flush=True)
                closes.append(teardown(host, number))
                try:
                    httpx.get(f"http://127.0.0.1:{host.first_port}", timeout=3)
                    raise SystemExit(f"pr {number}: something still serves on {host.first_port} after close")
                except httpx.TransportError:
                    pass
                number += 1
    med = {way: (statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs))
           for way, runs in times.items()}
    print()
    print(f"{'':<28}{'event':>10}{'by hand':>10}{'ratio':>8}")
    for i, what in enumerate(("opened → preview serving", "opened → E2E status")):
        print(f"{what:<28}{med['event'][i]:>9.1f}s{med['hand'][i]:>9.1f}s{med['event'][i] / med['hand'][i]:>8.2f}")
    print(f"teardown (closed → preview-close done): median {statistics.median(closes):.1f} s, "
          f"max {max(closes):.1f} s over {len(closes)}")


if __name__ == "__main__":
    main()
