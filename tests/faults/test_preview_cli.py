"""A pull request's preview on the docker target driven by hand (the CLI), for real: CI of refs/pull/N/head, the
preview flow deploying it to pr-N (its own router port from the policy's range, its own PostgreSQL seeded by
migrations), a push that fails CI leaving the last green version serving, and `--close` leaving nothing of pr-N
behind, its registry images included. In `make test-faults` beside the same driven by events
(test_pull_request_platform.py): `make test` keeps to its ten minutes."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import APP, DOCKER
from tests.test_ci_flow import sunday

pytestmark = [pytest.mark.docker, pytest.mark.faults]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.3)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def db_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="sunday-db-", dir="/tmp"))
    root.chmod(0o755)  # the postgres OS user must reach it
    yield root
    for data in root.glob("*/*/data"):
        subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-m",
                        "immediate", "-D", str(data)], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def _marker(repo: Path, text: str) -> None:
    page = repo / "frontend" / "public" / "index.html"
    page.write_text(page.read_text().replace("<title>Sunday</title>", f"<title>Sunday {text}</title>", 1))


def test_a_pull_requests_preview_serves_its_version_keeps_the_last_green_and_leaves_nothing_when_closed(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        db_root: Path, tmp_path: Path) -> None:
    project = f"pv{random.randrange(16**6):06x}"
    first = random.randrange(20000, 29000, 10)
    assert not any(_listening(p) for p in range(first, first + 10))

    def edit(repo: Path) -> None:
        config = repo / "sunday-release.yaml"
        text = config.read_text().replace("project: sunday\n", f"project: {project}\n", 1)
        text = text.replace("    route: /", "    platforms: [linux/amd64]\n    route: /")
        text = text.replace("  staging: {port: 8081, replicas: {backend: 2}, watch_seconds: 5}",
                            "  staging: {port: 8081, replicas: {backend: 2}, watch_seconds: 1, drain_seconds: 0, "
                            "health_interval: 60}")
        config.write_text(text)

    repo = make_repo(APP, edit=edit)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"previews: {{ports: [{first}, {first + 9}], e2e: false}}\n")
    env = {"SUNDAY_DB_ROOT": str(db_root)}
    added = sunday("project", "add", project, "--repo", str(repo), "--policy", str(policy), api=prefect_api)
    assert added.returncode == 0, added.stderr

    # the pull request's branch lives only as refs/pull/7/head of the base repository
    git(repo, "checkout", "-q", "-b", "feature")
    _marker(repo, "PR-7 one")
    git(repo, "commit", "-q", "-am", "pr 7: first push")
    one = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/pull/7/head", one)
    ci = sunday("ci", "--repo", str(repo), "--ref", "refs/pull/7/head", "--sha", one, api=prefect_api)
    assert ci.returncode == 0, ci.stderr

    done = sunday("preview", "--repo", str(repo), "--pr", "7", "--sha", one, "--json", api=prefect_api, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["env"], result["url"]) == ("pr-7", f"http://127.0.0.1:{first}")
    assert "Sunday PR-7 one" in httpx.get(result["url"], timeout=10).text
    board = httpx.post(f"{result['url']}/api/boards", json={"name": "preview"}, timeout=10)
    assert board.status_code == 201, board.text  # its own database, migrated
    assert (db_root / project / "pr-7" / "data" / "PG_VERSION").exists()
    listed = json.loads(sunday("previews", "--project", project, "--json", api=prefect_api).stdout)
    assert [(r["number"], r["state"], r["sha"], r["url"]) for r in listed] == [(7, "live", one, result["url"])]

    # a push whose backend test fails: CI fails naming it, and the preview keeps serving the last green version
    test = repo / "backend" / "tests" / "test_preview_breaks.py"
    test.write_text("def test_the_pull_request_broke_this():\n    assert 1 == 2\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pr 7: a failing test")
    two = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/pull/7/head", two)
    failed = sunday("ci", "--repo", str(repo), "--ref", "refs/pull/7/head", "--sha", two, api=prefect_api)
    assert failed.returncode == 1
    assert "backend" in failed.stderr and "test_the_pull_request_broke_this" in failed.stderr + failed.stdout
    refused = sunday("preview", "--repo", str(repo), "--pr", "7", "--sha", two, api=prefect_api, env=env)
    assert refused.returncode == 2 and f"pr-7-{two}" in refused.stderr  # no image passed CI: nothing moves
    assert "Sunday PR-7 one" in httpx.get(result["url"], timeout=10).text

    # the next green push redeploys blue-green: the other color, the same database (the board is still there)
    test.unlink()
    page = repo / "frontend" / "public" / "index.html"
    page.write_text(page.read_text().replace("Sunday PR-7 one", "Sunday PR-7 three"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pr 7: fixed")
    three = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/pull/7/head", three)
    assert sunday("ci", "--repo", str(repo), "--ref", "refs/pull/7/head", "--sha", three,
                  api=prefect_api).returncode == 0
    again = sunday("preview", "--repo", str(repo), "--pr", "7", "--sha", three, "--json", api=prefect_api, env=env)
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["color"], json.loads(again.stdout)["url"]) == ("green", result["url"])
    assert "Sunday PR-7 three" in httpx.get(result["url"], timeout=10).text
    assert "preview" in httpx.get(f"{result['url']}/api/boards", timeout=10).text

    # no push for longer than the TTL: the hourly sweep (here by hand) stops it and says why
    policy.write_text(f"previews: {{ports: [{first}, {first + 9}], e2e: false, ttl_hours: 0.0003}}\n")
    assert sunday("project", "add", project, "--repo", str(repo), "--policy", str(policy),
                  api=prefect_api).returncode == 0
    time.sleep(1.5)
    expired = sunday("previews", "--expire", "--repo", str(repo), "--json", api=prefect_api, env=env)
    assert expired.returncode == 0, expired.stderr
    assert f"{project}/pr-7" in json.loads(expired.stdout)["stopped"]
    listed = json.loads(sunday("previews", "--project", project, "--json", api=prefect_api).stdout)
    assert [(r["state"], "TTL" in r["reason"]) for r in listed] == [("stopped", True)]
    assert not _listening(first)

    closed = sunday("preview", "--repo", str(repo), "--pr", "7", "--close", "--json", api=prefect_api, env=env)
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["removed"] == [f"{project}/pr-7"]
    left = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label=sunday.project={project}"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert left == []
    assert not _listening(first) and not _listening(first + 1)  # router and database stopped
    assert not (db_root / project / "pr-7").exists()
    assert json.loads(sunday("previews", "--project", project, "--json", api=prefect_api).stdout) == []
    for service in ("backend", "frontend"):
        tags = httpx.get(f"http://127.0.0.1:5000/v2/{project}/{service}/tags/list", timeout=10).json().get("tags")
        assert not [t for t in tags or [] if t.startswith("pr-7-")], service
    sunday("project", "remove", project, api=prefect_api)
