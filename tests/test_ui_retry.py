"""Retry from the UI, proven in a browser: a real worker runs the `ci` deployment, Chromium presses Retry."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.result_storage import register_result_storage
from devtools.build_host import build_host
from tests.conftest import APP, ROOT, Registry
from tests.deployed_ci import ProcessWorker, task_run_states, wait_for_flow_run, write_clean_trivy_db
from tests.pg import S3, s3  # noqa: F401 (a fixture)
from tests.test_ci_images import _use_registry

pytestmark = pytest.mark.docker

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# the vulnerability gate, the last stage (the image scans and the lockfiles' audit, which gates the release tags
# too): the fault, no Trivy DB on host A, hits only these
SCANS = {"scan[backend linux/amd64]", "scan[frontend linux/amd64]", "audit-dependencies"}
TAGS = {"tag[backend]", "tag[frontend]"}  # release tags: only for images whose scan passed
REPORTS = "publish-ci-reports"  # takes the scans' results as input
# what reads the checkout, which lives on one host's disk: another host clones again and redoes these
CHECKOUT = {"clone", "load-config", "scan-repository", "check-key[backend]", "check-key[frontend]",
            "content-key[backend]", "content-key[frontend]"}
# asked of the registry afresh every attempt: the second finds the images the first published, and points their
# content-key tags at them again (the same digests): nothing is built or pushed
LOOKUPS = {"lookup[backend]", "lookup[frontend]", "publish[backend]", "publish[frontend]"}
BUILT = {"build[backend]", "build[frontend]",  # the check images: the checks' passes are reused, not their images
         "build[backend linux/amd64]", "build[frontend linux/amd64]", "push[backend linux/amd64]",
         "push[frontend linux/amd64]"}


def _amd64_only(repo: Path) -> None:
    """One platform per service: the test is about Retry, not QEMU."""
    config = repo / "sunday-release.yaml"
    config.write_text(re.sub(r"^(  (backend|frontend):\n)", r"\1    platforms: [linux/amd64]\n", config.read_text(),
                             flags=re.M))


@contextmanager
def ci_deployment(pool: str) -> Iterator[Any]:
    """A process work pool and a deployment of flows/ci.py:ci from this checkout (no image); removed afterwards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.ci import ci

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    try:
        deployment_id = ci.from_source(str(ROOT), "flows/ci.py:ci").deploy(
            name=pool, work_pool_name=pool, print_next_steps=False, ignore_warnings=True)
        try:
            yield deployment_id
        finally:
            with get_client(sync_client=True) as client:
                client.delete_deployment(deployment_id)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_work_pool(pool)


@contextmanager
def chromium_page(auth: str | None = None) -> Iterator[Any]:
    """Headless Chromium on a page that gives the UI `auth` (default: this process's PREFECT_API_AUTH_STRING)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            # the server asks for its auth string: the UI keeps it, base64, in localStorage["prefect-password"]
            token = base64.b64encode((auth or os.environ["PREFECT_API_AUTH_STRING"]).encode()).decode()
            page.add_init_script(f"localStorage.setItem('prefect-password', {json.dumps(token)})")
            yield page
        finally:
            browser.close()


# The UI's own stylesheet applies (its utility classes take effect): a small stylesheet of one component can load
# while the main one fails, which left every control moving under the log lines (seen with the old check, "some
# stylesheet has rules", on a busy 2-core machine).
_STYLED = ("() => [...document.querySelectorAll('.inline-flex')]"
           ".some(e => getComputedStyle(e).display === 'inline-flex')")


def open_run(page: Any, url: str, badge: str) -> None:
    """Go to the flow run's page and wait for its state badge `badge` and for the UI's stylesheet to take effect;
    reloaded (twice at most) while the page stays blank or unstyled.

    The UI's module script runs before its stylesheet (linked after it) has loaded, so under load the run's page
    renders unstyled for a while: one long column whose controls move as log lines arrive above them, so a click
    never finds them still. Under load the bundle or the stylesheet can also fail to load (a grey shell, or an
    unstyled page that stays so): a reload is what an operator does. The page or an asset of its bundle that fails
    to load (Chromium cancels requests in flight with ERR_NETWORK_CHANGED when a network interface comes or goes:
    a build host's dockerd making its bridge) leaves the shell grey for good, so the page is reloaded at once then.
    The error names every asset that failed.
    """
    from playwright.sync_api import TimeoutError as PageTimeout

    origin = re.match(r"https?://[^/]+", url).group(0)  # type: ignore[union-attr]
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and "/assets/" in r.url and failed.append(f"{r.url}: {r.status}"))

    def own_failures(since: int) -> list[str]:  # the page or its bundle; the UI cancels API calls of its own
        return [f for f in failed[since:] if f.startswith(origin) and ("/assets/" in f or f.startswith(f"{url}:"))]

    page.goto(url)
    for reloads in range(3):
        loaded, deadline = len(failed), time.monotonic() + 60
        badge_shown = page.get_by_text(badge, exact=True).first
        while True:
            try:
                badge_shown.wait_for(timeout=1000)
            except PageTimeout as exc:
                if own_failures(loaded):
                    why = f"the UI's own requests failed: {'; '.join(own_failures(loaded)[:3])}"
                elif time.monotonic() > deadline:
                    why = f"the run's badge {badge!r} did not show: {exc}"
                else:
                    continue
            else:
                try:
                    page.wait_for_function(_STYLED, timeout=30_000)
                    return
                except PageTimeout:
                    why = "the UI's stylesheet did not take effect within 30 s"
            break
        if reloads == 2:
            assets = "; ".join(failed[-5:]) or "none failed"
            raise AssertionError(f"{url}: {why} (after two reloads; assets: {assets})")
        page.reload()


def press_retry(url: str, screenshot: Path, auth: str | None = None, state: str = "Failed") -> None:
    """Open the flow run (its badge showing `state`) in the (default, v2) UI, choose Retry in its menu and confirm;
    screenshot on failure."""
    from playwright.sync_api import Error

    with chromium_page(auth) as page:
        try:
            open_run(page, url, state)
            page.locator('[data-slot="dropdown-menu-trigger"]').click()
            page.get_by_role("menuitem", name="Retry", exact=True).click()
            dialog = page.get_by_role("alertdialog", name="Retry Flow Run")
            dialog.get_by_text("AwaitingRetry").wait_for()
            dialog.get_by_role("button", name="Retry", exact=True).click()
            page.get_by_text("Flow run scheduled for retry").wait_for(timeout=30_000)
        except (Error, AssertionError) as exc:  # AssertionError: open_run gave up
            page.screenshot(path=str(screenshot), full_page=True)
            raise AssertionError(f"could not press Retry at {url} ({exc}); screenshot: {screenshot}") from exc


def screenshot_of(url: str, path: Path) -> Path:
    """A screenshot of the flow run's page once it shows the run (the UI keeps polling: no network idle)."""
    from playwright.sync_api import Error

    with chromium_page() as page:
        page.goto(url)
        with contextlib.suppress(Error):
            page.get_by_role("tab", name="Task Runs").wait_for(timeout=30_000)
        page.screenshot(path=str(path), full_page=True)
    return path


def test_retry_pressed_in_the_ui_completes_on_another_host_redoing_only_the_checkout_and_the_failed_stage(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], registry: Registry,
        s3: S3, tmp_path: Path) -> None:  # noqa: F811
    """CI fails at its last stage (the vulnerability gate: host A has no Trivy DB); Retry, pressed in the UI, lands on
    host B (its own dockerd, host name and SUNDAY_HOME; the same server, S3 results and registry): B checks out
    again and redoes the failed stage, and reads everything else from the shared results: no image is built,
    pulled or pushed there, no check runs."""
    from prefect.client.orchestration import get_client

    def edit(repo: Path) -> None:
        _use_registry(registry.address)(repo)
        _amd64_only(repo)

    repo = make_repo(APP, edit=edit)
    pool = f"ui-retry-{uuid.uuid4().hex[:8]}"
    shared = {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": register_result_storage(s3.endpoint_url, s3.bucket, name=pool)}
    host_a = {**shared, "SUNDAY_TRIVY_CACHE": str(tmp_path / "trivy-cache")}  # the fault: no DB, the scans fail
    with ci_deployment(pool) as deployment_id:
        with ProcessWorker(pool, tmp_path / "worker-a", env=host_a) as worker:
            with get_client(sync_client=True) as client:
                run_id = client.create_flow_run_from_deployment(
                    deployment_id, parameters={"repo": str(repo), "ref": "main"}).id
            first = wait_for_flow_run(run_id, worker, timeout=900)
            assert first.state.is_failed(), f"{first.state!r}\n{worker.log_tail()}"
        before = task_run_states(run_id)
        assert {name for name, states in before.items() if states != ["Completed"]} == SCANS, before
        assert "no Trivy vulnerability DB" in (first.state.message or ""), first.state

        with build_host() as host_b, ProcessWorker(pool, tmp_path / "worker-b", env={**shared, **host_b.env()},
                                                   wrap=host_b.command) as worker:
            write_clean_trivy_db(host_b.home / "trivy-cache")  # host B has a DB; a person presses Retry
            worker.wait_online()
            ui = prefect_api.removesuffix("/api")
            assert httpx.get(f"{ui}/ui-settings", timeout=10).json()["api_url"] == prefect_api  # the UI's JS calls
            url = f"{ui}/v2/runs/flow-run/{run_id}"
            press_retry(url, tmp_path / "retry-failed.png")
            second = wait_for_flow_run(run_id, worker, timeout=600)
            if not second.state.is_completed():
                shot = screenshot_of(url, tmp_path / "after-retry.png")
                pytest.fail(f"after Retry the run is {second.state!r}; screenshot: {shot}\n{worker.log_tail()}")
            assert f"submitting flow run '{run_id}'" in worker.log.read_text(), worker.log_tail()  # B ran it
            assert host_b.images() == [], host_b.images()  # B built, pulled and pushed nothing

    assert second.run_count == 2  # the same flow run, attempt 2
    states = task_run_states(run_id)
    ran_again = {name for name, s in states.items() if len(s) > 1 and s[-1] != "Cached"}
    assert ran_again - CHECKOUT - LOOKUPS == SCANS | {REPORTS}, states  # the failed stage and what depends on it
    for name in before.keys() - SCANS - {REPORTS} - CHECKOUT - LOOKUPS - BUILT:
        assert states[name] == ["Completed", "Cached"], (name, states)  # ran once: attempt 2 read its result
    for name in (CHECKOUT | LOOKUPS) & before.keys():
        assert states[name] == ["Completed", "Completed"], (name, states)  # on B's disk, or asked afresh
    for name in BUILT:
        assert states[name] == ["Completed"], (name, states)  # built and pushed by A, never again
    for name in SCANS:
        assert states[name] == ["Failed", "Completed"], (name, states)
    for name in TAGS:
        assert states[name] == ["Completed"], (name, states)
    assert states[REPORTS] == ["Completed", "Completed"], states
