"""Pull requests on the platform as a team runs it: `make server`, the webhook receiver, a git host.

The git host is two parts: the application's repository served by a real `git daemon` (the workers fetch
`refs/pull/N/head` from it), and a FAKE of its REST API (tests/fake_git_host.py: GitHub itself cannot run here)
that records the commit statuses and checks each against GitHub's documented shape. Driven only by signed
`pull_request` deliveries, the cases run in order on one platform:
1. `opened`: CI of the head commit (statuses pending then success, whose target_url opens the run in the UI in
   headless Chromium), the preview pr-N serving the PR's version, E2E against it, all reported as statuses;
2. `synchronize` with a failing test: CI `failure` naming the service and the test, the preview still serves the
   last green version;
3. a fork's pull request: CI runs, no preview, no secret in the environment of its checks (canary), nothing
   published under release tags;
4. `closed`: nothing of pr-N remains (containers, database, router, record).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DOCKER, _git
from tests.pr_platform import TOKEN, Host, pr_platform
from tests.test_ui_retry import chromium_page

pytestmark = [pytest.mark.docker, pytest.mark.faults]


@pytest.fixture(scope="module")
def host(starts_server: None, docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    with pr_platform(tmp_path_factory.mktemp("pr-platform"), "e2e_vus: 2, e2e_duration: 5s") as running:
        yield running


def test_an_opened_pull_request_is_built_previewed_tested_and_reported(host: Host, tmp_path: Path) -> None:
    started = time.monotonic()
    sha = host.push_pr(5, "pr5-one")
    host.deliver("opened", 5, sha)
    ci = host.stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
    assert ci["parameters"]["ref"] == "refs/pull/5/head"
    states = [s["state"] for s in host.statuses(sha, "sunday-release/ci")]
    assert states == ["pending", "success"], states
    success = host.statuses(sha, "sunday-release/ci")[-1]
    assert success["target_url"] == f"{host.stack.platform.ui}/runs/flow-run/{ci['id']}"
    with chromium_page(host.stack.platform.auth) as page:  # the link a developer clicks opens the run's page
        page.goto(success["target_url"])
        try:
            page.get_by_text(ci["name"], exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("Completed", exact=True).first.wait_for(timeout=30_000)
        finally:
            page.screenshot(path=str(tmp_path / "target-url.png"), full_page=True)
        assert page.url.rstrip("/") == success["target_url"], page.url  # no redirect to a list or a login

    preview = host.wait_status(sha, "sunday-release/preview", {"success", "failure", "error"}, timeout=400)
    assert preview["state"] == "success", preview
    url = f"http://127.0.0.1:{host.first_port}"
    assert preview["target_url"] == url and url in preview["description"]
    assert "Sunday @pr5-one" in httpx.get(url, timeout=30).text
    e2e = host.wait_status(sha, "sunday-release/e2e", {"success", "failure", "error"}, timeout=600)
    assert e2e["state"] == "success", e2e
    assert [s["state"] for s in host.statuses(sha, "sunday-release/e2e")] == ["pending", "success"]
    assert host.api.problems == []
    print(f"opened → preview serving and E2E reported: {time.monotonic() - started:.1f} s")


def test_a_push_with_a_failing_test_fails_ci_and_the_preview_keeps_the_last_green(host: Host) -> None:
    failing = {"backend/tests/test_pr5_broke.py": "def test_pr5_broke_this():\n    assert 'pr5' == 'green'\n"}
    sha = host.push_pr(5, "pr5-two", failing)
    host.deliver("synchronize", 5, sha)
    host.stack.wait_run("ci", {"sha": sha}, {"FAILED"}, timeout=600)
    failure = host.wait_status(sha, "sunday-release/ci", {"failure", "error"}, timeout=60)
    assert failure["state"] == "failure"
    assert "backend" in failure["description"] and "test_pr5_broke_this" in failure["description"], failure
    assert host.statuses(sha, "sunday-release/preview") == []
    assert "Sunday @pr5-one" in httpx.get(f"http://127.0.0.1:{host.first_port}", timeout=30).text


def test_a_forks_pull_request_runs_ci_without_secrets_preview_or_release_tags(host: Host) -> None:
    canary = {"backend/tests/test_fork_canary.py": (
        "import os\n\n\ndef test_no_secret_reaches_a_fork():\n"
        f"    assert not [k for k, v in os.environ.items() if {TOKEN[:12]!r} in v]\n")}
    sha = host.push_pr(6, "fork-six", canary)
    host.deliver("opened", 6, sha, fork=True)
    ci = host.stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
    assert ci["parameters"]["fork"] is True  # as the trigger templated it from the delivery
    assert host.wait_status(sha, "sunday-release/ci", {"success"}, timeout=60)["state"] == "success"
    time.sleep(10)  # what a preview trigger would have started by now
    assert host.stack.runs("preview") == [r for r in host.stack.runs("preview") if r["parameters"]["sha"] != sha]
    assert host.statuses(sha, "sunday-release/preview") == []
    for service in ("backend", "frontend"):
        tags = httpx.get(f"http://127.0.0.1:5000/v2/{host.stack.staging.project}/{service}/tags/list",
                         timeout=10).json()["tags"]
        assert f"pr-6-{sha}" in tags and f"sha-{sha}" not in tags, tags


def test_a_closed_pull_request_leaves_nothing_of_its_preview(host: Host) -> None:
    host.deliver("closed", 5, _git(host.stack.repo, "rev-parse", "topic-5"))
    host.stack.wait_run("preview-close", {"ref": "refs/pull/5/head"}, {"COMPLETED"}, timeout=300)
    project = host.stack.staging.project
    left = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label=sunday.project={project}", "--filter",
                           "label=sunday.env=pr-5"], capture_output=True, text=True, check=True).stdout.split()
    assert left == []
    assert not (host.stack.staging.db_root / project / "pr-5").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{host.first_port}", timeout=5)
    listed = subprocess.run([sys.executable, "-m", "adapters.cli", "previews", "--project", project, "--json"],
                            env=host.stack.platform.client_env(), capture_output=True, text=True, timeout=120)
    assert json.loads(listed.stdout) == []


def test_six_pull_requests_with_the_cap_at_five_stop_the_least_recently_pushed(host: Host, tmp_path: Path) -> None:
    """By hand (the CLI against the platform's server), E2E off: six pull requests of one commit each, the sixth
    preview stops the first, whose commit's status says why."""
    stack, project = host.stack, host.stack.staging.project
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"previews: {{ports: [{host.first_port}, {host.first_port + 19}], max_active: 5, e2e: false}}\n")
    env = {**stack.platform.client_env(), "SUNDAY_GIT_API": host.api_url, "SUNDAY_GIT_TOKEN": TOKEN,
           **stack.staging.env}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters.cli", *args], env=env, capture_output=True, text=True,
                              timeout=900, check=False)

    assert cli("project", "add", project, "--repo", host.url, "--policy", str(policy)).returncode == 0
    heads: dict[int, str] = {}
    for number in range(11, 17):
        heads[number] = sha = host.push_pr(number, f"pr{number}")
        built = cli("ci", "--repo", host.url, "--ref", f"refs/pull/{number}/head", "--sha", sha)
        assert built.returncode == 0, built.stderr[-2000:]
        deployed = cli("preview", "--repo", host.url, "--pr", str(number), "--sha", sha, "--json")
        assert deployed.returncode == 0, deployed.stderr[-2000:]
    listed = {r["number"]: r for r in json.loads(cli("previews", "--project", project, "--json").stdout)}
    assert [n for n in range(11, 17) if listed[n]["state"] == "live"] == [12, 13, 14, 15, 16]
    assert listed[11]["state"] == "stopped" and "stopped for pr-16: 5 previews at most" in listed[11]["reason"]
    stopped = host.statuses(heads[11], "sunday-release/preview")[-1]
    assert stopped["state"] == "error" and "5 previews at most" in stopped["description"], stopped
    gone = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label=sunday.project={project}", "--filter",
                           "label=sunday.env=pr-11"], capture_output=True, text=True, check=True).stdout.split()
    assert gone == []
    for number in range(11, 17):
        assert cli("preview", "--repo", host.url, "--pr", str(number), "--close").returncode == 0
