"""The platform as users run it: `make server` and the webhook receiver, driven only by signed pushes and the UI.

One platform, one application repository and one project (staging and production on free ports) for the
module; the cases run in order on them:
1. a push to main: the `ci` deployment's trigger runs CI, the cd-staging trigger deploys the commit;
2. a release tag: CI, the production deploy pauses, a person approves in the UI's form (Chromium), production
   serves the tag; a second tag is rejected in the form and the old one keeps serving;
3. two pushes 0.3 s apart: both built, staging ends on the newer commit (the ordering guard);
4. a CI run failed (no Trivy DB), its worker is gone: Retry in the UI runs it on the pool's other worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.webhook import sign
from tests.conftest import APP, ROOT, _git, free_port
from tests.deployed_ci import ProcessWorker, write_clean_trivy_db
from tests.platform_fixture import Platform, started_platform
from tests.test_cd import Env, status
from tests.test_ui_retry import chromium_page, open_run, press_retry
from tests.waiting import wait_for_healthz

pytestmark = pytest.mark.docker

SECRET = "platform-e2e-webhook-secret"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    platform: Platform
    repo: Path
    staging: Env
    production: Env
    trivy: Path  # the flow runs' Trivy DB (SUNDAY_TRIVY_CACHE): removed, it is case 4's fault
    webhook: str
    deployments: dict[str, str]  # name → id

    def push(self, ref: str, sha: str) -> None:
        """What GitHub sends on a push: signed with the shared secret."""
        body = json.dumps({"ref": ref, "after": sha, "repository": {"clone_url": f"file://{self.repo}"},
                           "pusher": {"name": "octocat"}}).encode()
        response = httpx.post(self.webhook, content=body, timeout=30, headers={
            "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(SECRET.encode(), body)})
        assert response.status_code == 202 and response.json()["status"] == "accepted", response.text

    def commit(self, title: str) -> str:
        """A commit on main whose frontend page title ends with `title`."""
        index = self.repo / "frontend" / "public" / "index.html"
        text = index.read_text()
        start, end = text.index("<title>") + len("<title>"), text.index("</title>")
        index.write_text(text[:start] + text[start:end].split(" @")[0] + f" @{title}" + text[end:])
        _git(self.repo, "commit", "-qam", title)
        return _git(self.repo, "rev-parse", "HEAD")

    def runs(self, deployment: str) -> list[dict[str, Any]]:
        listed = self.platform.post("/flow_runs/filter", {
            "flow_runs": {"deployment_id": {"any_": [self.deployments[deployment]]}}, "limit": 50})
        assert listed.status_code == 200, listed.text
        return list(listed.json())

    def wait_run(self, deployment: str, parameters: dict[str, str], until: set[str], timeout: float) -> dict[str, Any]:
        """The run of `deployment` with these parameters, once its state type is in `until` (any other final
        state fails the test with the run's message and the workers' logs)."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = [run for run in self.runs(deployment)
                    if all(run["parameters"].get(k) == v for k, v in parameters.items())]
            for run in seen:
                kind = run["state"]["type"]
                if kind in until:
                    return run
                if kind in FINAL and run["state"].get("name") != "AwaitingRetry":
                    pytest.fail(f"{deployment} run {run['name']} {parameters}: {run['state']['name']}: "
                                f"{run['state'].get('message')}\n{self.logs()}")
            time.sleep(0.5)
        pytest.fail(f"no {deployment} run {parameters} reached {until} in {timeout} s: "
                    f"{[(r['name'], r['state']['name']) for r in seen]}\n{self.logs()}")

    def run_logs(self, run_id: str) -> list[str]:
        """The messages of the flow run's own logs (not its tasks'), oldest first."""
        messages: list[str] = []
        while True:
            page = self.platform.post("/logs/filter", {
                "logs": {"flow_run_id": {"any_": [run_id]}, "task_run_id": {"is_null_": True}},
                "sort": "TIMESTAMP_ASC", "limit": 200, "offset": len(messages)}).json()
            messages += [log["message"] for log in page]
            if len(page) < 200:
                return messages

    def logs(self, lines: int = 15) -> str:
        out = []
        logs = self.platform.dir / "logs"
        for log in [*sorted(logs.glob("worker-*.log")), logs / "prewarmed.log"]:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            out.append(f"--- {log.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def serves(self, env: Env, version: str, title: str) -> None:
        st = status(env)
        assert st["serving"] is True and st["version"] == version, st
        page = httpx.get(f"{env.url}/", timeout=30)
        assert page.status_code == 200 and f"@{title}</title>" in page.text, page.text[:300]


def _configure(repo: Path, staging: Env, production: Env) -> None:
    """The sample app's own staging and production, on this module's ports and project; amd64 only."""
    config = repo / "sunday-release.yaml"
    text = config.read_text().replace("    route: /", "    platforms: [linux/amd64]\n    route: /")
    text = text.replace("project: sunday\n", f"project: {staging.project}\n", 1)
    text = "\n".join(line for line in text.split("\n") if not line.startswith(("  staging: ", "  production: ")))
    lines = "".join(f"  {e.name}: {{port: {e.port}, db_port: {e.db_port}, watch_seconds: 2, drain_seconds: 1, "
                    f"health_timeout: 90, approval: {str(e.approval).lower()}}}\n" for e in (staging, production))
    config.write_text(text.replace("environments:\n", "environments:\n" + lines, 1))


@contextmanager
def running_stack(top: Path, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """`make server` (with `extra_env`) for a copy of the sample app under `top`, its staging and production on
    free ports, and the webhook receiver; all stopped and removed afterwards."""
    project = f"plat-{uuid.uuid4().hex[:6]}"
    staging, production = Env(project=project, name="staging"), Env(project=project, name="production", approval=True)
    shutil.rmtree(production.db_root)
    production.db_root = staging.db_root  # one SUNDAY_DB_ROOT for the platform's flow runs
    repo = top / "app"
    shutil.copytree(APP, repo, ignore=shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache"))
    _configure(repo, staging, production)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "sample app"]):
        _git(repo, *args)
    trivy = write_clean_trivy_db(top / "trivy")
    extra = {"SUNDAY_APP_REPO": str(repo), "SUNDAY_TRIVY_CACHE": str(trivy), **staging.env, **(extra_env or {})}
    webhook: subprocess.Popen[str] | None = None
    try:
        with started_platform(extra) as platform:
            print(f"server.sh start took {platform.seconds:.1f} s")
            port = free_port()
            webhook = subprocess.Popen(
                [sys.executable, "-m", "adapters.cli", "webhook", "--port", str(port)], cwd=ROOT, text=True,
                env={**platform.client_env(), "SUNDAY_WEBHOOK_SECRET": SECRET, "SUNDAY_HOME": str(top / "home")},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wait_for_healthz(webhook, port)
            listed = platform.post("/deployments/filter").json()
            yield Stack(platform, repo, staging, production, trivy, f"http://127.0.0.1:{port}/webhook",
                        {d["name"]: d["id"] for d in listed})
    finally:
        if webhook is not None:
            webhook.send_signal(signal.SIGINT)
            try:
                webhook.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                webhook.kill()
                webhook.communicate(timeout=10)
        staging.teardown()
        production.teardown()


@pytest.fixture(scope="module")
def stack(starts_server: None, docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("platform-e2e")) as running:
        yield running


def answer_in_ui(stack: Stack, run_id: str, approve: bool, reason: str, screenshot: Path) -> None:
    """As an operator: open the paused run in the UI, Resume, fill in the form (approve, reason), submit."""
    from playwright.sync_api import Error

    with chromium_page(stack.platform.auth) as page:
        try:
            open_run(page, f"{stack.platform.ui}/v2/runs/flow-run/{run_id}", "Paused")
            page.locator('[data-slot="dropdown-menu-trigger"]').click()
            page.get_by_role("menuitem", name="Resume", exact=True).click()
            dialog = page.get_by_role("dialog", name="Resume Flow Run")
            dialog.get_by_text("Provide input to resume").wait_for(timeout=30_000)
            switch = dialog.get_by_role("switch")
            switch.click()  # `approve` is unset (the form refuses it) until the switch is touched
            if switch.is_checked() != approve:
                switch.click()
            dialog.get_by_role("textbox").first.fill(reason)
            dialog.get_by_role("button", name="Resume", exact=True).click()
            page.get_by_text("Flow run resumed").wait_for(timeout=30_000)
        except (Error, AssertionError) as exc:  # AssertionError: open_run gave up
            page.screenshot(path=str(screenshot), full_page=True)
            html = page.locator("[role=dialog]").first.inner_html(timeout=2000) if page.locator(
                "[role=dialog]").count() else ""
            raise AssertionError(f"could not answer the approval of {run_id} in the UI ({exc}); screenshot: "
                                 f"{screenshot}\n{html[:4000]}") from exc


def _timed(name: str) -> Callable[[], None]:
    started = time.monotonic()
    return lambda: print(f"{name}: {time.monotonic() - started:.1f} s")


def test_a_push_to_main_is_built_and_served_by_staging(stack: Stack) -> None:
    done = _timed("push → staging")
    sha = stack.commit("one")
    stack.push("refs/heads/main", sha)
    ci = stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
    assert ci["parameters"]["ref"] == "main"
    stack.wait_run("cd-staging", {"version": sha}, {"COMPLETED"}, timeout=300)
    stack.serves(stack.staging, sha, "one")
    done()


def test_a_release_tag_is_approved_then_the_next_rejected_in_the_ui(stack: Stack, tmp_path: Path) -> None:
    done = _timed("tags → production")
    sha = _git(stack.repo, "rev-parse", "HEAD")
    _git(stack.repo, "tag", "v1.0.0")
    stack.push("refs/tags/v1.0.0", sha)
    stack.wait_run("ci", {"ref": "v1.0.0"}, {"COMPLETED"}, timeout=600)
    paused = stack.wait_run("cd-production", {"version": "v1.0.0"}, {"PAUSED"}, timeout=300)
    answer_in_ui(stack, paused["id"], approve=True, reason="release notes read", screenshot=tmp_path / "approve.png")
    stack.wait_run("cd-production", {"version": "v1.0.0"}, {"COMPLETED"}, timeout=300)
    stack.serves(stack.production, "v1.0.0", "one")

    later = stack.commit("two")
    _git(stack.repo, "tag", "v1.1.0")
    stack.push("refs/tags/v1.1.0", later)
    stack.wait_run("ci", {"ref": "v1.1.0"}, {"COMPLETED"}, timeout=600)
    paused = stack.wait_run("cd-production", {"version": "v1.1.0"}, {"PAUSED"}, timeout=300)
    answer_in_ui(stack, paused["id"], approve=False, reason="not on a Friday", screenshot=tmp_path / "reject.png")
    rejected = stack.wait_run("cd-production", {"version": "v1.1.0"}, FINAL, timeout=300)
    assert rejected["state"]["type"] == "FAILED" and "not on a Friday" in (rejected["state"]["message"] or ""), \
        rejected["state"]
    stack.serves(stack.production, "v1.0.0", "one")
    done()


def test_two_quick_pushes_leave_staging_on_the_newer_commit(stack: Stack) -> None:
    done = _timed("two pushes")
    older = stack.commit("three")
    stack.push("refs/heads/main", older)
    time.sleep(0.3)  # the scenario itself: a second push 0.3 s after the first
    newer = stack.commit("four")
    stack.push("refs/heads/main", newer)
    for sha in (older, newer):
        stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
    stack.wait_run("cd-staging", {"version": newer}, {"COMPLETED"}, timeout=300)
    late = stack.wait_run("cd-staging", {"version": older}, FINAL, timeout=300)
    if late["state"]["type"] != "COMPLETED":  # it ran after the newer one: the ordering guard refused it
        assert "older" in (late["state"]["message"] or ""), late["state"]
    stack.serves(stack.staging, newer, "four")
    done()


def test_a_failed_run_retried_in_the_ui_runs_on_the_pools_other_worker(stack: Stack, tmp_path: Path) -> None:
    done = _timed("retry on another worker")
    platform = stack.platform
    shutil.rmtree(stack.trivy)  # the fault: no vulnerability DB, the image scans fail
    sha = stack.commit("five")
    stack.push("refs/heads/main", sha)
    failed = stack.wait_run("ci", {"sha": sha}, {"FAILED"}, timeout=600)
    assert "no Trivy vulnerability DB" in (failed["state"]["message"] or ""), failed["state"]

    # a second worker for the pool (as server.sh starts one), then the first one's machine is gone
    results = "s3-bucket/sunday-results"
    env = {"PREFECT_API_URL": platform.api, "PREFECT_API_AUTH_STRING": platform.auth,
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_WORKER_QUERY_SECONDS": "0.5",
           "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": results,
           "SUNDAY_S3_ENDPOINT": f"http://127.0.0.1:{platform.env['SUNDAY_S3_PORT']}",
           "SUNDAY_BACKUP_BUCKET": "sunday-backups", "SUNDAY_PREWARM_SOCKET": str(platform.dir / "prewarm.sock"),
           "AWS_ACCESS_KEY_ID": "local-moto-not-a-key", "AWS_SECRET_ACCESS_KEY": "local-moto-not-a-secret",
           "AWS_REGION": "us-east-1", "SUNDAY_RELEASE_DIR": str(ROOT)}
    with ProcessWorker("sunday-ci", tmp_path / "second", env=env, poll_seconds=0.5) as second:
        deadline = time.monotonic() + 120
        while len([w for w in platform.post("/work_pools/sunday-ci/workers/filter").json()
                   if w["status"] == "ONLINE"]) < 2:
            assert second.alive() and time.monotonic() < deadline, second.log_tail()
            time.sleep(0.5)
        first = int((platform.dir / "pids" / "worker-sunday-ci").read_text())
        os.kill(first, signal.SIGKILL)

        write_clean_trivy_db(stack.trivy)  # the fault is gone; a person presses Retry
        press_retry(f"{platform.ui}/v2/runs/flow-run/{failed['id']}", tmp_path / "retry.png", auth=platform.auth)
        retried = stack.wait_run("ci", {"sha": sha}, {"COMPLETED"}, timeout=600)
        assert retried["id"] == failed["id"] and retried["run_count"] == 2, retried
        workers = re.findall(r"Worker '([^']+)' submitting flow run", "\n".join(stack.run_logs(failed["id"])))
        assert len(workers) == 2 and workers[0] != workers[1], workers  # attempt 2 on the other worker
        assert workers[1] in second.log.read_text(), second.log_tail()  # the one started here
        stack.wait_run("cd-staging", {"version": sha}, {"COMPLETED"}, timeout=300)
    stack.serves(stack.staging, sha, "five")
    done()
