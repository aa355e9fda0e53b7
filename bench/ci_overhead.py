"""CI overhead: `sunday-release ci` on the sample app vs the same container commands run one by one.

The script does what a warm CI run does: build the check images, run every check, scan the
repository, and scan each published platform image (the images themselves are reused).

The pipeline side runs on a copy with `checks.reuse: false` and an empty result storage (no Trivy report kept
from before) so both sides run every check and scan every image; a third side, CI as shipped
(passed checks and reports of unchanged content reused), is printed
beside them. Prints the wall times per round and the ratio pipeline/script (target ≤ 1.0: parallelism
must pay for the orchestration). Rounds alternate the sides so a noisy machine hurts them alike. The Prefect
server is started once before timing (the CLI reuses a running server); its start-up time is
printed on its own line.

    .venv/bin/python bench/ci_overhead.py [--rounds 3]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import git, make_repo, prefect_server, run_ci

from sunday_release.config import load_config
from sunday_release.registry import RegistryClient
from sunday_release.settings import Settings
from tasks.scan import image_scan_argv, repo_scan_argv


def run_script(repo: Path, work: Path) -> float:
    """The same work as a warm CI run, as a plain script would do it: one command after another."""
    settings = Settings.from_env()
    config = load_config(repo)
    started = time.monotonic()
    for name, svc in config.services.items():
        tag = f"bench-script/{name}:test"
        context = repo / svc.context
        subprocess.run([settings.docker, "build", "-q", "--target", svc.checks.stage, "--build-arg",
                        f"BASE_IMAGE={config.base_image}", "-t", tag, "-f", str(context / svc.dockerfile),
                        str(context)], check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        for step, argv in svc.checks.steps().items():
            reports = work / f"{name}-{step}"
            shutil.rmtree(reports, ignore_errors=True)
            reports.mkdir(parents=True)
            subprocess.run([settings.docker, "run", "--rm", "--network", "none", "-v", f"{reports}:/reports",
                            tag, *argv], check=True, capture_output=True)
    subprocess.run(repo_scan_argv(settings.trivy, str(settings.trivy_cache), str(repo), config.scan), check=True,
                   capture_output=True)
    # the pipeline's warm run reuses the published images and scans each platform: so does the script
    commit = git(repo, "rev-parse", "HEAD")
    with RegistryClient(config.registry) as client:
        for name in config.services:
            for platform in client.platforms(f"{config.project}/{name}", f"sha-{commit}"):
                image = f"{config.registry}/{config.project}/{name}@{platform.digest}"
                subprocess.run(image_scan_argv(settings.trivy, str(settings.trivy_cache), image, config.scan, True),
                               check=True, capture_output=True)
    return time.monotonic() - started


def every_check_runs(repo: Path) -> Path:
    """`repo` with `checks.reuse: false` for every service: CI runs each check, as the script does."""
    config = repo / "sunday-release.yaml"
    config.write_text(config.read_text().replace("    checks:\n", "    checks:\n      reuse: false\n"))
    git(repo, "commit", "-qam", "every check runs every time")
    return repo


def same_work_ci(repo: Path) -> float:
    """`sunday-release ci` doing what the script does: every check run and every image scanned again (no reused
    check results, no reused Trivy reports)."""
    before = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    with tempfile.TemporaryDirectory(prefix="sunday-bench-results-") as fresh:  # no report kept from before
        os.environ["PREFECT_LOCAL_STORAGE_PATH"] = fresh
        try:
            return run_ci(repo)
        finally:
            os.environ.pop("PREFECT_LOCAL_STORAGE_PATH")
            if before is not None:
                os.environ["PREFECT_LOCAL_STORAGE_PATH"] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sunday-bench-") as tmp:
        work = Path(tmp)
        with prefect_server(work / "home") as startup:
            print(f"prefect server start-up (paid once; the CLI reuses a running server): {startup:6.1f} s")
            repo = make_repo(work / "repo")
            run_ci(repo)  # warm Docker's build cache and the registry for both sides alike
            same = every_check_runs(make_repo(work / "same-work"))
            pipeline: list[float] = []
            script: list[float] = []
            shipped: list[float] = []
            for i in range(args.rounds):
                sides = [(pipeline, lambda: same_work_ci(same)), (script, lambda: run_script(same, work / "reports")),
                         (shipped, lambda: run_ci(repo))]
                for times, fn in sides if i % 2 == 0 else sides[::-1]:
                    times.append(fn())
                print(f"round {i + 1}: pipeline {pipeline[-1]:6.1f} s   script {script[-1]:6.1f} s   "
                      f"ratio {pipeline[-1] / script[-1]:.2f}   (as shipped: {shipped[-1]:.1f} s)")
            p, s, r = statistics.median(pipeline), statistics.median(script), statistics.median(shipped)
            print(f"median:  pipeline {p:6.1f} s   script {s:6.1f} s   ratio pipeline/script {p / s:.2f} "
                  f"(target <= 1.0; same work: every image scanned)")
            print(f"as shipped (passed checks and Trivy reports of unchanged content reused): {r:6.1f} s   "
                  f"ratio {r / s:.2f}")


if __name__ == "__main__":
    main()
