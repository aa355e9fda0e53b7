"""The CI flow end to end against the real Docker engine, Trivy and a real Prefect server."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import run_cli
from tests.conftest import APP, DOCKER, FIXTURES, ROOT, read_events
from tests.deployed_ci import task_run_states

pytestmark = pytest.mark.docker
CLI = [sys.executable, "-m", "adapters.cli"]


def sunday(*args: str, api: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m adapters.cli ARGS` with this process's environment and `env`, forked from the worker's prewarmed
    CLI server (tests/cli_runner.py)."""
    full_env = {**os.environ, **(env or {})}
    if api:
        full_env["PREFECT_API_URL"] = api
    return run_cli(args, env=full_env, cwd=ROOT, timeout=1500)


def images_for(commit: str) -> list[str]:
    out = subprocess.run([DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}", "sunday-ci/*"],
                         capture_output=True, text=True, check=True).stdout.split()
    return [i for i in out if i.endswith(commit[:12])]


def test_sample_app_goes_green(prefect_api: str, docker_engine: str, make_repo: Callable[..., Path],
                               git: Callable[..., str]) -> None:
    repo = make_repo(APP)
    done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED"
    assert summary["commit"] == git(repo, "rev-parse", "HEAD")
    backend, frontend = summary["services"]["backend"], summary["services"]["frontend"]
    assert backend["tests"]["passed"] > 10 and backend["tests"]["failed"] == 0
    assert (backend["lint"], backend["typecheck"]) == ("passed", "passed")
    assert frontend["tests"]["passed"] > 5 and frontend["lint"] == "passed"
    assert frontend["typecheck"] == "not configured"
    assert summary["scan"]["passed"] is True and summary["scan"]["blocking"] == 0
    # progress a person can follow: service, step, elapsed time
    assert "test[backend]" in done.stderr and "s]" in done.stderr

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    assert {"ci-tests-sunday", "ci-repo-scan-sunday"} <= keys


def _break_a_backend_test(repo: Path) -> None:
    (repo / "backend" / "tests" / "test_broken.py").write_text(
        "def test_board_names_are_trimmed() -> None:\n    assert ' x '.strip() == ' x '\n")


def test_failing_unit_test_fails_ci_naming_service_and_test(prefect_api: str, docker_engine: str,
                                                            make_repo: Callable[..., Path]) -> None:
    repo = make_repo(APP, edit=_break_a_backend_test)
    done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api)
    assert done.returncode == 1, done.stderr
    assert "backend: test failed" in done.stderr and "test_board_names_are_trimmed" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "FAILED"
    assert summary["services"]["backend"]["tests"]["failed"] == 1
    # the other service's checks still completed
    frontend = summary["services"]["frontend"]
    assert frontend["test"] == "passed" and frontend["lint"] == "passed"
    assert summary["services"]["backend"]["lint"] == "passed"


def _unique(repo: Path) -> None:
    """Content no other test builds: the first run cannot find a pass to reuse."""
    (repo / "tool" / "build-id").write_text(secrets.token_hex(8))


def test_a_check_image_that_does_not_build_fails_ci_once_and_its_checks_do_not_run(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path]) -> None:
    def broken_test_stage(repo: Path) -> None:
        dockerfile = repo / "tool" / "Dockerfile"
        text = dockerfile.read_text()
        dockerfile.write_text(text.replace("COPY . .\n", f"COPY . .\nRUN echo {secrets.token_hex(4)} && false\n", 1))

    repo = make_repo(FIXTURES / "other-app", edit=broken_test_stage)
    done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    tool = summary["services"]["tool"]
    assert (tool["build"], tool["test"], tool["lint"]) == ("failed", "not run", "not run"), tool
    assert "tool: build failed" in done.stderr, done.stderr
    # its two checks needed the image: the first built it and failed, the second did not build it again
    assert task_run_states(summary["flow_run_id"])["build[tool]"] == ["Failed"]


def _wrong_key(repo: Path) -> None:
    text = (repo / "sunday-release.yaml").read_text().replace("health_path:", "healthpath:", 1)
    (repo / "sunday-release.yaml").write_text(text)


def _wrong_type(repo: Path) -> None:
    text = (repo / "sunday-release.yaml").read_text().replace("port: 8000", "port: eight-thousand", 1)
    (repo / "sunday-release.yaml").write_text(text)


def _missing_path(repo: Path) -> None:
    text = (repo / "sunday-release.yaml").read_text().replace("context: frontend", "context: web", 1)
    (repo / "sunday-release.yaml").write_text(text)


@pytest.mark.parametrize(("edit", "key", "expected"), [
    (_wrong_key, "services.backend.healthpath", "unknown key 'healthpath'"),
    (_wrong_type, "services.backend.port", "valid integer"),
    (_missing_path, "services.frontend.context", "'web' does not exist"),
])
def test_bad_config_exits_2_and_builds_nothing(prefect_api: str, docker_engine: str,
                                               make_repo: Callable[..., Path], git: Callable[..., str],
                                               edit: Callable[[Path], None], key: str, expected: str) -> None:
    repo = make_repo(APP, edit=edit)
    done = sunday("ci", "--repo", str(repo), "--ref", "main", api=prefect_api)
    assert done.returncode == 2, done.stderr
    assert "sunday-release.yaml" in done.stderr and key in done.stderr and expected in done.stderr
    assert images_for(git(repo, "rev-parse", "HEAD")) == []
    # the same verdict without any server from `validate`
    checked = sunday("validate", "--repo", str(repo))
    assert checked.returncode == 2 and key in checked.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--ref", "main..evil"], "--ref"),
    (["--ref", "-x"], "--ref"),
    (["--repo", "/nonexistent/repo"], "--repo"),
])
def test_bad_arguments_exit_2_before_anything_runs(tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--repo": str(ROOT), "--ref": "main"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    done = sunday("ci", *[x for kv in base.items() for x in kv], env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert done.returncode == 2 and message in done.stderr


def test_unknown_ref_exits_2(prefect_api: str, docker_engine: str, make_repo: Callable[..., Path]) -> None:
    repo = make_repo(FIXTURES / "other-app")
    done = sunday("ci", "--repo", str(repo), "--ref", "no-such-branch", api=prefect_api)
    assert done.returncode == 2, done.stderr
    assert "'no-such-branch' was not found" in done.stderr


def test_another_language_goes_through_without_code_changes(prefect_api: str, docker_engine: str,
                                                            make_repo: Callable[..., Path],
                                                            git: Callable[..., str]) -> None:
    repo = make_repo(FIXTURES / "other-app")
    git(repo, "tag", "v0.1.0")
    done = sunday("ci", "--repo", str(repo), "--ref", "v0.1.0", "--json", api=prefect_api)
    assert done.returncode == 0, done.stderr
    tool = json.loads(done.stdout)["services"]["tool"]
    assert tool["tests"] == {"passed": 4, "failed": 0, "skipped": 0}
    assert (tool["lint"], tool["typecheck"]) == ("passed", "not configured")


def test_a_pull_requests_head_is_fetched_from_the_base_repository_and_never_release_tagged(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str]) -> None:
    """What the git.pull_request trigger runs: CI of refs/pull/N/head, a ref only the base repository has (the
    branch lives in the fork). Green, its images get pr-N-COMMIT, never sha-COMMIT (what CD deploys), and it
    announces no deploy target."""
    import httpx

    repo = make_repo(APP)
    git(repo, "checkout", "-q", "-b", "fork-branch")
    git(repo, "commit", "-q", "--allow-empty", "-m", "a pull request's commit")
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/pull/7/head", head)
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "fork-branch")
    done = sunday("ci", "--repo", str(repo), "--ref", "refs/pull/7/head", "--sha", head, "--json", api=prefect_api)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "COMPLETED" and summary["commit"] == head
    for service in ("backend", "frontend"):
        tags = httpx.get(f"http://127.0.0.1:5000/v2/sunday/{service}/tags/list", timeout=10).json()["tags"]
        assert f"pr-7-{head}" in tags and f"sha-{head}" not in tags, service
    deadline = time.monotonic() + 30  # other tests of this server announce passes of this project too
    while not (mine := [e for e in read_events("sunday.ci.passed", "sunday.project.sunday")
                        if e.payload.get("sha") == head]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [e.resource["sunday.deploy-to"] for e in mine] == ["none"]


def test_retry_reruns_only_the_failed_task(prefect_api: str, docker_engine: str, make_repo: Callable[..., Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose repository scan fails (trivy missing) is retried: only the scan and what follows run."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import AwaitingRetry

    from flows.ci import ci

    repo = make_repo(FIXTURES / "other-app", edit=_unique)  # checked nowhere before: attempt 1 builds and checks
    monkeypatch.setenv("SUNDAY_TRIVY", "/nonexistent/trivy")
    first = ci(repo=str(repo), ref="main", return_state=True)
    assert first.is_failed()
    run_id = first.state_details.flow_run_id

    monkeypatch.delenv("SUNDAY_TRIVY")  # the fault is gone; press Retry
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, AwaitingRetry(), force=True)
        flow_run = client.read_flow_run(run_id)
    second = run_flow(ci, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert second.is_completed()

    states = task_run_states(run_id)
    for name in ("clone", "load-config", "check-key[tool]", "test[tool]", "lint[tool]"):
        assert "Cached" in states[name], (name, states)  # completed the first time: not run again
    assert states["build[tool]"] == ["Completed"], states  # the checks were reused: their image was not needed
    assert "Completed" in states["scan-repository"] and "Failed" in states["scan-repository"], states
    assert states["publish-ci-reports"].count("Completed") == 2, states  # follows the scan: ran again


def test_a_container_left_by_a_killed_attempt_does_not_block_the_check(docker_engine: str, tmp_path: Path) -> None:
    from tasks.checks import check_in_image

    reports = tmp_path / "run-left0ver" / "reports" / "svc-lint"
    name = "sunday-check-run-left-svc-lint"  # the name run_check gives this step's container
    base = "localhost:5000/base/debian:bookworm"
    subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
    subprocess.run([DOCKER, "create", "--name", name, base, "true"], capture_output=True, check=True)
    try:
        result = check_in_image("svc", "lint", ["sh", "-c", "echo checked"], base, str(reports), timeout=60)
        assert result.outcome == "passed", result
        left = subprocess.run([DOCKER, "ps", "-a", "-q", "--filter", f"name=^{name}$"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert left == ""  # the old container was removed and the check's own removed itself (--rm)
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)


def test_passed_checks_of_unchanged_content_are_reused_and_failures_never(prefect_api: str, docker_engine: str,
                                                                          make_repo: Callable[..., Path],
                                                                          git: Callable[..., str]) -> None:
    """A check that passed on the same content with the same command is not run again (`checks.reuse`), and its
    check image is not even built: a worker that never built it (here: the image removed) reuses the pass."""
    repo = make_repo(FIXTURES / "other-app", edit=_unique)
    runs: list[dict[str, Any]] = []

    def ci() -> tuple[dict[str, Any], str]:
        done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api)
        assert done.stdout, done.stderr
        runs.append(json.loads(done.stdout))
        return runs[-1]["services"]["tool"], done.stderr

    def commit(path: str, text: str, message: str) -> None:
        (repo / path).write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", message)

    tool, log = ci()
    assert tool["reused"] == [] and "test started" in log and "lint started" in log, log
    assert "building test stage of tool" in log, log
    first, tag = runs[-1]["flow_run_id"], f"sunday-ci/wordcount-tool:test-{runs[-1]['commit'][:12]}"
    subprocess.run([DOCKER, "rmi", tag], capture_output=True, check=True)  # as on a worker that never built it
    commit("NOTES.md", "outside the service\n", "docs only")
    tool, log = ci()  # the tool's content is unchanged: both of its checks passed on this content
    assert tool["reused"] == ["lint", "test"] and tool["reused_from"] == {"lint": first, "test": first}, tool
    assert f"test reused: passed on this content with this command in flow run {first}" in log, log
    assert "test started" not in log and "lint started" not in log and "stage of tool" not in log, log
    assert tool["test"] == "passed" and tool["tests"] == {"passed": 4, "failed": 0, "skipped": 0}

    config = (repo / "sunday-release.yaml").read_text()
    commit("sunday-release.yaml", config.replace("    checks:\n", "    checks:\n      reuse: false\n"), "no reuse")
    tool, log = ci()
    assert tool["reused"] == [] and "test started" in log and "lint started" in log, log
    commit("sunday-release.yaml", config, "reuse again")

    run_sh = (repo / "tool" / "tests" / "run.sh").read_text()
    assert 'check one_word 1 "hello"' in run_sh
    commit("tool/tests/run.sh", run_sh.replace('check one_word 1 "hello"', 'check one_word 2 "hello"'), "break")
    for attempt in ("broken", "broken, docs changed"):
        tool, log = ci()  # a failure is never reused: the same content fails by running again
        assert tool["test"] == "failed" and tool["tests"]["failed"] == 1, (attempt, tool)
        assert "test" not in tool["reused"] and "test started" in log, (attempt, log)
        commit("NOTES.md", f"{attempt}\n", attempt)
