"""What the benchmarks share: a throwaway repository of the sample app, a Prefect server, the CLI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.server import LocalServer  # noqa: E402
from devtools.trivydb import Advisory, write_trivy_db  # noqa: E402

GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b.invalid"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout.strip()


def make_repo(dest: Path, config_prefix: str = "") -> Path:
    """A git repository (branch main) holding a copy of the sample app."""
    shutil.copytree(ROOT / "app", dest)
    if config_prefix:
        config = dest / "sunday-release.yaml"
        config.write_text(config_prefix + config.read_text())
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "bench")
    return dest


@contextmanager
def prefect_server(home: Path) -> Iterator[float]:
    """A Prefect server of the benchmark's own; yields its start-up time in seconds."""
    os.environ["SUNDAY_HOME"] = str(home)
    os.environ["SUNDAY_ENV_ROOT"] = str(home / "envs")  # the benchmark's environments, not the machine's
    # the image scans need an offline DB, dated now (a stale one fails the gate): one FAKE advisory for a
    # package no image has
    write_trivy_db(home / "trivy-cache", [Advisory("CVE-2099-0999", "debian 12", "no-such-package", "CRITICAL",
                                                   "FAKE (benchmark)", "1.0")])
    server = LocalServer(home, port=free_port())
    started = time.monotonic()
    os.environ["PREFECT_API_URL"] = server.start()
    os.environ["PREFECT_API_AUTH_STRING"] = server.auth_string()  # the CLI children authenticate too
    try:
        yield time.monotonic() - started
    finally:
        server.stop()


def run_ci(repo: Path, ref: str = "main") -> float:
    """Wall time of `sunday-release ci`; exits the benchmark if CI did not pass."""
    started = time.monotonic()
    done = subprocess.run([str(ROOT / ".venv/bin/sunday-release"), "ci", "--repo", str(repo), "--ref", ref],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"CI failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def two_versions(repo: Path) -> list[str]:
    """Commit two versions of the sample app (page titles ending " a", then " b"), run CI on each: their commits."""
    versions = []
    for label in ("a", "b"):
        index = repo / "frontend" / "public" / "index.html"
        index.write_text(index.read_text().replace("</title>", f" {label}</title>", 1))
        git(repo, "commit", "-qam", label)
        run_ci(repo)
        versions.append(git(repo, "rev-parse", "HEAD"))
    return versions
