"""The CI flow: check out a ref; checks of every service in parallel; then multi-arch images, pushed and scanned."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

from adapters.logs import bind
from sunday_release.ci_report import StepResult, ci_summary, failure_lines
from sunday_release.config import PipelineConfig
from sunday_release.errors import CheckFailed, GateFailed, StageFailed
from sunday_release.findings import DependencyAudit, ImageScan, ScanReport
from sunday_release.refs import pull_request_number, short_ref, validate_ref, validate_repo, validate_sha
from sunday_release.registry import PublishedImage, validate_repository
from sunday_release.settings import Settings
from tasks._common import progress
from tasks.approvals import tag_project
from tasks.checks import CheckImage, check_content_key, run_check
from tasks.commit_status import report_status, status_target
from tasks.images import (
    build_platform_image,
    find_published,
    image_content_key,
    publish_manifest,
    push_platform_image,
    tag_release,
)
from tasks.reports import publish_ci_reports
from tasks.scan import audit_dependencies, scan_image, scan_repository
from tasks.source import Checkout, clone_repo, load_pipeline_config

CI_CONTEXT = "sunday-release/ci"  # the commit status of this flow on the git host

__all__ = ["ci"]


def _outcome(future: PrefectFuture[Any], service: str, step: str) -> StepResult:
    """The StepResult of a finished check future, whether it passed or failed."""
    state = future.state
    if state.is_completed():
        value = future.result()
        result = value if isinstance(value, StepResult) else StepResult(service, step, "passed")
        if state.name == "Cached":  # the task did not run: say so where it would have
            result = replace(result, reused=True)
            progress(f"{step} reused: passed on this content with this command in flow run {result.run or '?'}, "
                     "not run again", task_run_name=f"{step}[{service}]")
        return result
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, CheckFailed) and isinstance(exc.result, StepResult):
        return exc.result
    return StepResult(service, step, "failed", detail=str(exc))


@flow(name="ci", flow_run_name="ci-{ref}", persist_result=True, log_prints=True)
def ci(repo: str, ref: str = "main", sha: str | None = None, fork: bool | None = None) -> dict[str, Any]:
    """Check out `ref` of `repo`; build and check every service in parallel; scan the repository.

    Args:
        repo: a local git repository or a git URL.
        ref: branch, tag, full ref (refs/heads/main) or commit SHA.
        sha: the commit of `ref` to build (a push's commit: the ref may have moved on since the push);
            None builds the tip of `ref`.
        fork: for a pull request's ref, whether its head is in another repository (the delivery says so); only a
            pull request known not to come from a fork (False) gets a preview: None counts as a fork.

    Returns:
        The run summary (see `sunday_release.ci_report.ci_summary`). Raises StageFailed with the
        same summary attached when a check or the repository scan fails.
    """
    repo, ref, sha = validate_repo(repo), short_ref(validate_ref(ref)), validate_sha(sha)
    run_id = str(flow_run.get_id() or "local")
    settings = Settings.from_env()
    checkout = clone_repo(repo, ref, workspace=str(settings.workspaces / run_id), sha=sha)
    # the commit's status on the git host (docs/webhook.md § 5b): pending now, its outcome at the end
    target, url = status_target(repo, checkout.commit), _run_url(run_id)
    pending_at = report_status(target, "pending", CI_CONTEXT, f"CI of {ref} is running", url)
    try:
        summary = _checks_and_images(checkout, ref, run_id, settings, fork is not False)
    except StageFailed as failed:
        report_status(target, "failure", CI_CONTEXT, _first_line(failed), url, pending_at)
        raise
    except BaseException as exc:
        report_status(target, "error", CI_CONTEXT, f"CI stopped: {_first_line(exc)}", url, pending_at)
        raise
    report_status(target, "success", CI_CONTEXT, f"CI passed: {', '.join(summary['services'])}", url, pending_at)
    return summary


def _run_url(run_id: str) -> str | None:
    """The flow run in the Prefect UI (a commit status's target_url); None outside a server's run."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui and run_id != "local" else None


def _checks_and_images(checkout: Checkout, ref: str, run_id: str, settings: Settings,
                       fork: bool) -> dict[str, Any]:
    """The checks stage, then (when it passed) the images stage; the summary, or StageFailed carrying it."""
    config = load_pipeline_config(checkout)
    tag_project(config.project)
    bind(project=config.project)  # on every JSON log line of the run from here

    scan_future = scan_repository.submit(checkout, config.scan)
    # the lockfiles' audit runs beside the checks; its verdict joins the image scans' (it needs their offline DB)
    audit_future = audit_dependencies.submit(checkout, {name: spec.context for name, spec in config.services.items()},
                                             config.scan, str(settings.home / "runs" / run_id / "sarif"))
    checks: list[tuple[str, str, PrefectFuture[Any]]] = []
    for name, spec in config.services.items():
        if not spec.checks.steps():
            continue
        # a service's check image is built by the first of its checks that is not reused
        check_key: Any = check_content_key.submit(name, spec, checkout, config.base_image)
        image = CheckImage(config.project, name, spec, checkout, config.base_image)
        for step, argv in spec.checks.steps().items():
            reports = settings.home / "runs" / run_id / "reports" / f"{name}-{step}"
            check = run_check if spec.checks.reuse else run_check.with_options(refresh_cache=True)
            checks.append((name, step, check.submit(name, step, argv, check_key, image, str(reports),
                                                    spec.checks.timeout)))
    # which images already exist: read-only lookups, so they run beside the checks (the images stage waits for these)
    repos = {name: validate_repository(f"{config.project}/{name}") for name in config.services}
    keys: dict[str, Any] = {name: image_content_key.submit(name, spec, checkout, config.base_image)
                            for name, spec in config.services.items()}
    found = {name: find_published.submit(name, config.registry, repos[name], keys[name]) for name in keys}

    results: list[StepResult] = []
    for name, step, future in checks:
        future.wait()
        result = _outcome(future, name, step)
        if result.step == "build":  # the check image did not build: once for the service, its steps did not run
            if not any(r.service == name and r.step == "build" for r in results):
                results.append(result)
            result = StepResult(name, step, "not run", detail="the check image did not build")
        results.append(result)
    scan_future.wait()
    scan_exc = scan_future.state.result(raise_on_failure=False)
    scan: ScanReport | None = scan_future.result() if scan_future.state.is_completed() else (
        scan_exc.report if isinstance(scan_exc, GateFailed) and isinstance(scan_exc.report, ScanReport) else None)

    failures = failure_lines(results, scan)
    if scan is None and not scan_future.state.is_completed():
        failures.append(f"repository scan did not run: {scan_exc}")
    images: dict[str, PublishedImage] = {}
    scans: list[ImageScan] = []
    if not failures:  # the images stage runs once the checks stage passed
        images, scans, image_failures = _images_stage(config, checkout, ref, repos, keys, found,
                                                      settings.home / "runs" / run_id, audit_future)
        failures += image_failures
    audit, audit_failure = _audit_outcome(audit_future)
    if audit_failure:
        failures.append(audit_failure)
    publish_ci_reports(config.project, checkout.commit, results, scan, list(images.values()), scans, audit)
    summary = ci_summary(run_id, "FAILED" if failures else "COMPLETED", checkout.commit, list(config.services),
                         results, scan, images, scans, audit)
    if failures:
        raise StageFailed("\n".join(failures), summary)
    _announce_pass(config, checkout, ref, fork)
    return summary


def deploy_target_of(config: PipelineConfig, ref: str, fork: bool = True) -> str:
    """Where green CI of `ref` deploys: `staging` (default branch), `production` (release tag), `preview` (a pull
    request not from a fork: its own `pr-N`, never another environment whatever its commit's config names), or
    `none` (anything else, a fork's pull request included)."""
    if pull_request_number(ref) is not None:
        return "none" if fork else "preview"
    if ref == config.default_branch:
        return "staging"
    return "production" if re.match(config.release_tags, ref) else "none"


def image_tags_of(config: PipelineConfig, ref: str, commit: str) -> list[str]:
    """The tags green CI of `ref` at `commit` gives its images: `sha-COMMIT` (what CD deploys) and a release tag's
    own name; for pull request N only `pr-N-COMMIT`, which no CD looks up."""
    number = pull_request_number(ref)
    if number is not None:
        return [f"pr-{number}-{commit}"]
    return [f"sha-{commit}"] + ([ref] if re.match(config.release_tags, ref) else [])


def _announce_pass(config: PipelineConfig, checkout: Checkout, ref: str, fork: bool) -> None:
    """Emit `sunday.ci.passed`: the cd-staging / cd-production / preview deployment triggers listen for it."""
    to = deploy_target_of(config, ref, fork)
    emit_event(event="sunday.ci.passed",
               resource={"prefect.resource.id": f"sunday.project.{config.project}",
                         "sunday.project": config.project, "sunday.deploy-to": to},
               payload={"sha": checkout.commit, "ref": ref, "version": ref if to == "production" else checkout.commit})


def _audit_outcome(future: PrefectFuture[Any]) -> tuple[DependencyAudit | None, str | None]:
    """The dependency audit (also when its gate failed) and the failure line, if it failed."""
    future.wait()
    if future.state.is_completed():
        return future.result(), None
    exc = future.state.result(raise_on_failure=False)
    audit = exc.report if isinstance(exc, GateFailed) and isinstance(exc.report, DependencyAudit) else None
    return audit, _first_line(exc)


def _images_stage(config: PipelineConfig, checkout: Checkout, ref: str, repos: dict[str, str],
                  keys: dict[str, Any], found: dict[str, PrefectFuture[Any]], run_dir: Path,
                  audit: PrefectFuture[Any]) -> tuple[dict[str, PublishedImage], list[ImageScan], list[str]]:
    """Build (or reuse), push and scan every service's multi-arch image; return what failed too.

    `repos` are the services' registry repositories; `keys` and `found` the futures of each one's
    content key and of its published image (None: not built yet). Futures are passed on as task
    inputs (Prefect resolves them). No image gets its release tags unless the dependency audit (`audit`) passed
    too: the vulnerability gate is the images' and the lockfiles' together.
    """
    tags = image_tags_of(config, ref, checkout.commit)
    publish: dict[str, PrefectFuture[Any]] = {}
    upstream: dict[str, list[PrefectFuture[Any]]] = {name: [] for name in config.services}
    for name, spec in config.services.items():
        cached = found[name].result()
        if cached is not None:
            publish[name] = publish_manifest.submit(name, config.registry, repos[name], keys[name], [], [], cached)
            continue
        pushed: list[Any] = []
        for platform in spec.platforms:
            built: Any = build_platform_image.submit(name, spec, checkout, config, platform, keys[name])
            pushed.append(push_platform_image.submit(name, built, platform))
            upstream[name] += [built, pushed[-1]]
        publish[name] = publish_manifest.submit(name, config.registry, repos[name], keys[name], pushed, [])

    images: dict[str, PublishedImage] = {}
    failures: list[str] = []
    scan_futures: list[tuple[str, PrefectFuture[Any]]] = []
    for name, future in publish.items():
        future.wait()
        if not future.state.is_completed():
            failed = [f for f in [*upstream[name], future] if (f.wait() or f.state.is_failed())]
            why = failed[0].state.result(raise_on_failure=False) if failed else future.state.message
            failures.append(f"{name}: image not published: {_first_line(why)}")
            continue
        image = future.result()
        images[name] = image
        for platform in config.services[name].platforms:
            scan_futures.append((name, scan_image.submit(name, platform, image.platform_ref(platform), config.scan,
                                                         str(run_dir / "sarif"))))
    scans: list[ImageScan] = []
    gated: dict[str, bool] = {name: True for name in images}
    for name, future in scan_futures:
        future.wait()
        if future.state.is_completed():
            scans.append(future.result())
            continue
        gated[name] = False
        exc = future.state.result(raise_on_failure=False)
        if isinstance(exc, GateFailed) and isinstance(exc.report, ImageScan):
            scans.append(exc.report)
        failures.append(f"vulnerability scan failed: {_first_line(exc)}")
    # release tags only for images that passed, and only when the lockfiles did: CD deploys nothing else
    audited = _audit_outcome(audit)[1] is None
    tagged = {name: tag_release.submit(name, image, tags) for name, image in images.items()
              if gated[name] and audited}
    for name, future in tagged.items():
        future.wait()
        if future.state.is_completed():
            images[name] = future.result()
        else:
            failures.append(f"{name}: release tags not set: {_first_line(future.state.result(raise_on_failure=False))}")
    return images, scans, failures


def _first_line(exc: object) -> str:
    """The message of a failed task's exception, as one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
