"""The kill -9 matrix under k6 load: per step, failed requests and the re-run's time against a normal deploy.

For each step of a deploy (backup, migrate, start, smoke, approval pause, switch, watch) and for a
`rollback`, with k6 at constant load through the environment's router: the CLI killed with -9 at the
step's progress line (or while paused for approval), then the same command again. Prints per step the
requests failed during the kill and the re-run (target 0) and the time from the re-run's start to one
healthy live color (the re-run's end), as a ratio to a normal deploy of the same environment run just
before the case (target <= 1.5): each case has its own baseline, as the machine's speed drifts. The
three environments (plain, approval, backup to a local S3 endpoint, moto_server standing in for AWS)
share one repository with two versions.

    .venv/bin/python bench/faults.py
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, free_port, git, make_repo, prefect_server, two_versions
from bluegreen import cleanup

from devtools.faults import CLI, Approver, ConstantLoad, kill_at, paused_since, running_colors, timed

PROJECT = "sunday"
STEPS: dict[str, Callable[[str], str]] = {  # step -> the progress line at which the run is killed (idle color)
    "migrate": lambda idle: "migrate[backend]",
    "start": lambda idle: f"start[{idle}]",
    "smoke": lambda idle: f"smoke[{idle}]",
    "switch": lambda idle: f"switch[{idle}]",
    "watch": lambda idle: f"watch[{idle}]",
}


@contextmanager
def s3_endpoint() -> Iterator[str]:
    """A local S3 endpoint (moto_server, a stand-in for AWS) with the bucket `backups`; its URL."""
    import boto3
    import httpx

    os.environ |= {"AWS_ACCESS_KEY_ID": "bench-not-a-key", "AWS_SECRET_ACCESS_KEY": "bench-not-a-secret"}
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"moto_server did not start on {url}")
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="backups")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def cd(env: str, repo: Path, version: str) -> list[str]:
    return [*CLI, "cd", "--env", env, "--version", version, "--repo", str(repo), "--allow-older"]


def status(env: str) -> dict[str, object]:
    done = timed([*CLI, "status", "--env", env, "--project", PROJECT, "--json"], os.environ)
    return dict(json.loads(done.stdout))


def printed(text: str) -> Callable[[str], bool]:
    """A kill point: the first progress line holding `text`."""
    return lambda line: text in line


def other(color: object) -> str:
    return "green" if color == "blue" else "blue"


def deploy(env: str, repo: Path, version: str, extra: dict[str, str], approve: bool = False) -> float:
    """A normal deploy (approved when the environment asks); its wall time. Exits the benchmark on failure."""
    tag = f"env:{PROJECT}/{env}"
    if approve:
        with Approver(tag, approve=True):
            done = timed(cd(env, repo, version), {**os.environ, **extra})
    else:
        done = timed(cd(env, repo, version), {**os.environ, **extra})
    if done.returncode:
        sys.exit(f"deploy of {version[:12]} to {env} failed:\n{done.stderr[-2000:]}")
    return done.seconds


def case(env: str, argv: list[str], extra: dict[str, str], work: Path, port: int, when: Callable[[str], bool],
         ready: Callable[[], bool] | None = None, approve: bool = False) -> tuple[int, int, float, bool, str]:
    """Kill `argv` at `when`/`ready`, run it again, under load: (failed, requests, re-run s, freed at once, check)."""
    summary = work / f"k6-{secrets.token_hex(3)}.json"
    with ConstantLoad(f"http://127.0.0.1:{port}", summary) as load:
        kill_at(argv, {**os.environ, **extra}, when, ready)
        if approve:
            with Approver(f"env:{PROJECT}/{env}", approve=True):
                again = timed(argv, {**os.environ, **extra})
        else:
            again = timed(argv, {**os.environ, **extra})
    st = status(env)
    outcomes = [h["outcome"] for h in st["history"]]  # type: ignore[attr-defined]
    one = running_colors(PROJECT, env) == {st["live_color"]} and st["serving"] is True
    consistent = outcomes.count("live") == 1 and "in-progress" not in outcomes
    check = "ok" if again.returncode == 0 and one and consistent else \
        f"FAILED (exit {again.returncode}, one color {one}, history {consistent})"
    freed = "freed the slot of a dead run" in again.stderr
    return load.result.failed, load.result.requests, again.seconds, freed, check


def main() -> None:
    db_root = Path(tempfile.mkdtemp(prefix="sunday-bench-db-", dir="/tmp"))
    db_root.chmod(0o755)
    os.environ["SUNDAY_DB_ROOT"] = str(db_root)
    suffix = secrets.token_hex(2)
    envs = {"plain": f"kill-{suffix}", "gated": f"kill-a-{suffix}", "backed": f"kill-b-{suffix}"}
    ports = {name: free_port() for name in envs}
    with tempfile.TemporaryDirectory(prefix="sunday-bench-faults-") as tmp, prefect_server(Path(tmp) / "home"), \
            s3_endpoint() as s3:
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        work = Path(tmp)
        settings = temporary_settings(updates={PREFECT_API_URL: os.environ["PREFECT_API_URL"],
                                               PREFECT_API_AUTH_STRING: os.environ["PREFECT_API_AUTH_STRING"]})
        settings.__enter__()  # this process's clients (the approver) ask the benchmark's server
        backup_env = {"SUNDAY_BACKUP_BUCKET": "backups", "SUNDAY_S3_ENDPOINT": s3}
        extra = {"plain": {}, "gated": {}, "backed": backup_env}
        try:
            repo = make_repo(work / "repo")
            config = repo / "sunday-release.yaml"
            lines = "".join(f"  {env}: {{port: {ports[name]}, db_port: {free_port()}, watch_seconds: 2, "
                            f"drain_seconds: 1, approval: {str(name == 'gated').lower()}, "
                            f"backup: {str(name == 'backed').lower()}}}\n" for name, env in envs.items())
            text = config.read_text().replace("budget_ms: 2000", "budget_ms: 10000")  # a shared 2-core machine
            config.write_text(text.replace("environments:\n", "environments:\n" + lines, 1))
            git(repo, "commit", "-qam", "bench environments")
            versions = two_versions(repo)
            for name, env in envs.items():  # a first deploy: each environment has a live version
                deploy(env, repo, versions[0], extra[name], approve=name == "gated")

            def normal(name: str) -> float:
                """A normal deploy of the version not live, just before a case: its baseline, on the machine of
                that moment (a shared machine's speed drifts over the minutes of the run)."""
                env = envs[name]
                live = status(env)["version"]
                version = versions[0] if live == versions[1] else versions[1]
                seconds = deploy(env, repo, version, extra[name], approve=name == "gated")
                print(f"{env}: normal deploy {seconds:.1f} s", flush=True)
                return seconds

            rows: list[tuple[str, str, int, int, float, float, bool, str]] = []

            def record(step: str, name: str, base: float, result: tuple[int, int, float, bool, str]) -> None:
                failed, requests, seconds, freed, check = result
                rows.append((step, name, failed, requests, seconds, base, freed, check))
                print(f"{step}: {check}", flush=True)

            env = envs["plain"]
            for step, marker in STEPS.items():
                base = normal("plain")
                st = status(env)
                version = versions[0] if st["version"] == versions[1] else versions[1]
                text = marker(other(st["live_color"]))
                record(step, "plain", base, case(env, cd(env, repo, version), {}, work, ports["plain"],
                                                 when=printed(text)))
            base = normal("plain")
            st = status(env)
            kept = [h for h in st["history"] if h["outcome"] == "superseded"  # type: ignore[attr-defined]
                    and h["version"] != st["version"]]
            argv = [*CLI, "rollback", "--env", env, "--project", PROJECT, "--to", str(kept[-1]["revision"])]
            idle = other(st["live_color"])
            record("rollback", "plain", base, case(env, argv, {}, work, ports["plain"],
                                                   when=printed(f"switch[{idle}]")))

            for name, step, when, ready in (
                    ("gated", "approval", lambda line: False, paused_since(f"env:{PROJECT}/{envs['gated']}")),
                    ("backed", "backup", printed("backing up"), None)):
                base = normal(name)  # leaves versions[1] live: the case deploys versions[0]
                record(step, name, base, case(envs[name], cd(envs[name], repo, versions[0]), extra[name], work,
                                              ports[name], when=when, ready=ready, approve=name == "gated"))
        finally:
            for env in envs.values():
                cleanup(work / "home", db_root, PROJECT, env)

    print()
    print(f"{'step':<10} {'env':<7} {'failed':>7} {'requests':>9} {'re-run s':>9} {'normal s':>9} {'ratio':>6} "
          f"{'freed at once':>13}  check")
    for step, name, failed, requests, seconds, base, freed, check in rows:
        print(f"{step:<10} {name:<7} {failed:>7} {requests:>9} {seconds:>9.1f} {base:>9.1f} {seconds / base:>6.2f} "
              f"{'yes' if freed else 'no':>13}  {check}")
    print("targets: failed 0; ratio <= 1.5 (time from the re-run's start to one healthy live color, over a normal "
          "deploy of the same environment)")


if __name__ == "__main__":
    main()
