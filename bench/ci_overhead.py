"""CI overhead: `sunday-release ci` on the sample app vs the same container commands run one by one.

Prints both wall times per round and the ratio pipeline/script (target ≤ 1.0: parallelism must pay
for the orchestration). Rounds alternate the two so a noisy machine hurts both alike. The Prefect
server is started once before timing (the CLI reuses a running server); its start-up time is
printed on its own line.

    .venv/bin/python bench/ci_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sunday_release.config import load_config  # noqa: E402
from sunday_release.server import LocalServer  # noqa: E402
from sunday_release.settings import Settings  # noqa: E402


def make_repo(dest: Path) -> Path:
    shutil.copytree(ROOT / "app", dest)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b.invalid"}
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", "-C", str(dest), *argv], check=True, env=env)
    return dest


def run_pipeline(repo: Path) -> float:
    started = time.monotonic()
    done = subprocess.run([str(ROOT / ".venv/bin/sunday-release"), "ci", "--repo", str(repo), "--ref", "main"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"pipeline failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def run_script(repo: Path, work: Path) -> float:
    """The same work as the checks stage, as a plain script would do it: one command after another."""
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
    subprocess.run([settings.trivy, "fs", "--scanners", "misconfig,secret", "--skip-check-update", "--cache-dir",
                    str(settings.trivy_cache), "--format", "json", "--quiet", str(repo)], check=True,
                   capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sunday-bench-") as tmp:
        work = Path(tmp)
        os.environ["SUNDAY_HOME"] = str(work / "home")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        server = LocalServer(work / "home", port=port)
        t0 = time.monotonic()
        os.environ["PREFECT_API_URL"] = server.start()
        print(f"prefect server start-up (paid once; the CLI reuses a running server): {time.monotonic() - t0:6.1f} s")
        try:
            repo = make_repo(work / "repo")
            run_pipeline(repo)  # warm Docker's build cache for both sides alike
            pipeline, script = [], []
            for i in range(args.rounds):
                order = [("pipeline", run_pipeline, (repo,)), ("script", run_script, (repo, work / "reports"))]
                for label, fn, fn_args in order if i % 2 == 0 else order[::-1]:
                    (pipeline if label == "pipeline" else script).append(fn(*fn_args))  # type: ignore[operator]
                print(f"round {i + 1}: pipeline {pipeline[-1]:6.1f} s   script {script[-1]:6.1f} s   "
                      f"ratio {pipeline[-1] / script[-1]:.2f}")
            p, s = statistics.median(pipeline), statistics.median(script)
            print(f"median:  pipeline {p:6.1f} s   script {s:6.1f} s   ratio pipeline/script {p / s:.2f} "
                  f"(target <= 1.0)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
