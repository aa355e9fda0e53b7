"""Preview flows: a pull request's own environment `pr-N`, deployed on green CI, tested end to end, torn down on close.

`preview` deploys the pull request's head commit (its `pr-N-COMMIT` images) to `pr-N` blue-green like any
environment, runs the E2E flow against it, and reports `sunday-release/preview` (with the preview's URL) and
`sunday-release/e2e` on the commit. Before it deploys, under the project's `previews` slot, previews past their
TTL and those beyond the cap (the least recently pushed first) are stopped, each with a status saying why.
`close_preview` removes everything of one (pull request closed); `previews_gc` applies the TTL on a schedule.
The policy (cap, TTL, ports, E2E) is the server's (`sunday_release.preview.PreviewPolicy`), never the commit's.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from deployments.projects import find_policy, read_policy, same_repository
from flows.cd import environment_slot, release
from flows.ci import _first_line, _run_url
from sunday_release import validate
from sunday_release.config import PipelineConfig
from sunday_release.errors import InputError, StageFailed
from sunday_release.policy import default_policy
from sunday_release.preview import (
    PreviewPolicy,
    PreviewRecord,
    choose_ports,
    expired,
    over_cap,
    preview_config,
    preview_env,
    preview_host,
    preview_url,
)
from sunday_release.refs import pull_ref, pull_request_number, validate_sha
from sunday_release.settings import Settings
from sunday_release.targets import last_config
from tasks._common import progress
from tasks.commit_status import report_status, status_target
from tasks.preview import (
    delete_preview_images,
    destroy_preview,
    forget_preview,
    ports_taken,
    provision_preview,
    read_preview,
    read_previews,
    save_preview,
)
from tasks.source import clone_repo, load_pipeline_config

__all__ = ["E2E_CONTEXT", "PREVIEW_CONTEXT", "close_preview", "preview", "previews_gc"]

PREVIEW_CONTEXT = "sunday-release/preview"
E2E_CONTEXT = "sunday-release/e2e"
SLOT = "previews"  # the project's slot (global concurrency limit deploy:PROJECT:previews) around the bookkeeping


def _number(ref: str) -> int:
    number = pull_request_number(ref)
    if number is None:
        raise InputError(f"--ref: {ref!r} is not a pull request's ref (refs/pull/N/head)")
    return number


@flow(name="preview", flow_run_name="preview-{ref}", persist_result=True)
def preview(repo: str, ref: str, sha: str) -> dict[str, Any]:
    """Deploy pull request N's head commit `sha` (which passed CI) to `pr-N`, then run E2E against it.

    Args:
        repo: the repository the deployment pins (the pull request's base; a fork's head is fetched from it).
        ref: `refs/pull/N/head`.
        sha: the head commit CI passed (its images are tagged `pr-N-SHA`).
    """
    repo, number, given = validate.repo(repo), _number(validate.ref(ref, "--ref")), validate_sha(sha)
    if given is None or len(given) != 40:
        raise InputError(f"--sha: {sha!r} is not a full commit SHA (the pull request's head commit CI passed)")
    sha = given
    env, run_id = preview_env(number), str(flow_run.get_id() or "local")
    settings = Settings.from_env()
    checkout = clone_repo(repo, pull_ref(number), workspace=str(settings.workspaces / run_id), sha=sha)
    config = load_pipeline_config(checkout)
    policy = find_policy(checkout.repo, config.project).previews
    target, run_url = status_target(repo, sha), _run_url(run_id)
    if not policy.enabled:
        progress(f"previews are off for {config.project} (its policy): nothing deployed")
        return {"project": config.project, "env": env, "state": "SKIPPED", "reason": "previews are off"}
    pending_at = report_status(target, "pending", PREVIEW_CONTEXT, f"deploying {env}", run_url)
    try:
        record, ports = _admit(repo, config, number, sha, policy, run_id)
        shaped = preview_config(config, policy, number, ports)
        if policy.target == "kubernetes":  # its namespace from the platform's overlay, before the first deploy
            provision_preview(shaped, number, preview_host(policy, number))
        result = release(shaped, env, sha, checkout, allow_older=True, image_tag=f"pr-{number}-{sha}")
    except BaseException as exc:
        last = read_preview(config.project, number)
        if last is not None:  # a redeploy that failed: the last green version still serves (blue-green)
            serving = last.url is not None and last.state != "stopped" and last.sha != sha
            save_preview(last.model_copy(update={"state": "live" if serving else "failed",
                                                 "reason": f"{sha[:12]}: {_first_line(exc)}"[:300]}))
        state = "failure" if isinstance(exc, Exception) and not isinstance(exc, InputError) else "error"
        report_status(target, state, PREVIEW_CONTEXT, f"{env} not deployed: {_first_line(exc)}", run_url, pending_at)
        raise
    url = preview_url(policy, number) if policy.target == "kubernetes" else str(result["url"])
    save_preview(record.model_copy(update={"state": "live", "url": url, "reason": ""}))
    report_status(target, "success", PREVIEW_CONTEXT, f"{env} serves {sha[:12]} at {url}", url, pending_at)
    summary: dict[str, Any] = {"project": config.project, "env": env, "number": number, "sha": sha, "url": url,
                               "revision": result["revision"], "color": result["color"], "flow_run_id": run_id}
    if policy.e2e:
        summary["e2e"] = _e2e(target, config.project, env, policy, run_url)
        if summary["e2e"]["state"] != "COMPLETED":
            raise StageFailed(f"E2E of {config.project}/{env} failed: " + "; ".join(summary["e2e"].get("lines", [])),
                              summary)
    progress(f"{config.project}/{env}: {sha[:12]} live at {url}")
    return summary


def _admit(repo: str, config: PipelineConfig, number: int, sha: str, policy: PreviewPolicy,
           run_id: str) -> tuple[PreviewRecord, tuple[int, int] | None]:
    """Under the project's previews slot: stop the previews past their TTL or beyond the cap, give this one its
    ports (its own when it has some), and record it as deploying."""
    now, project = datetime.now(UTC), config.project
    with environment_slot(project, SLOT):
        records = read_previews(project)
        for old in expired(records, policy.ttl_hours, now):
            _stop(repo, old, f"no push for {policy.ttl_hours:g} h (the previews' TTL); push again to redeploy")
        records = read_previews(project)
        for old in over_cap(records, policy.max_active, number):
            _stop(repo, old, f"stopped for pr-{number}: {policy.max_active} previews at most, and this one was "
                             "pushed to longest ago; push again to redeploy")
        existing = read_preview(project, number)
        ports = existing.ports if existing is not None and existing.state != "stopped" else None
        if ports is None and policy.target == "docker":
            held = {p for r in read_previews() if r.state != "stopped" and r.ports for p in r.ports}
            ports = choose_ports(policy, ports_taken(Settings.from_env(), policy) | held)
        record = PreviewRecord(project=project, number=number, sha=sha, ports=ports, state="deploying",
                               url=existing.url if existing is not None and existing.state != "stopped" else None,
                               created=existing.created if existing is not None else now, pushed=now,
                               flow_run_id=run_id, target=policy.target, registry=config.registry,
                               services=tuple(config.services), repo=repo,
                               host=socket.gethostname() if policy.target == "docker" else None)
        save_preview(record)
    return record, ports


def _stop(repo: str, record: PreviewRecord, why: str) -> None:
    """Stop a preview (containers, router, database): the record stays, `stopped`, and its commit says why."""
    _remove(record)
    save_preview(record.model_copy(update={"state": "stopped", "url": None, "reason": why}))
    report_status(status_target(record.repo or repo, record.sha), "error", PREVIEW_CONTEXT, f"{record.env} {why}",
                  None)
    progress(f"{record.project}/{record.env} stopped: {why}")


def _last_config(record: PreviewRecord) -> PipelineConfig | None:
    """The preview's last config as this machine keeps it; None when it has none (never deployed here, stopped)."""
    try:
        return last_config(Settings.from_env(), record.project, record.env)
    except (OSError, ValueError):
        return None


def _remove(record: PreviewRecord, config: PipelineConfig | None = None) -> None:
    """Remove the preview's environment: its namespace (kubernetes), or its containers, router and database on this
    machine (docker: its record names the machine that runs it). `config`: its last config, if read already."""
    if record.target == "docker" and record.host and record.host != socket.gethostname():
        raise InputError(f"{record.project}/{record.env} runs on {record.host}, not on {socket.gethostname()}: "
                         "stop it from a worker of that machine")
    config = config or _last_config(record)
    destroy_preview(record.project, record.number, config,
                    (read_policy(record.project) or default_policy(record.project)).previews)


def _e2e(target: Any, project: str, env: str, policy: PreviewPolicy, run_url: str | None) -> dict[str, Any]:
    """The E2E flow against the preview, as a subflow; its commit status; its summary (never raises)."""
    from flows.e2e import e2e

    pending_at = report_status(target, "pending", E2E_CONTEXT, f"E2E of {env} is running", run_url)
    state = e2e(env=env, project=project, vus=policy.e2e_vus, duration=policy.e2e_duration, return_state=True)
    e2e_url = _run_url(str(state.state_details.flow_run_id)) if state.state_details.flow_run_id else run_url
    if state.is_completed():
        summary = dict(state.result())
        report_status(target, "success", E2E_CONTEXT, f"E2E of {env} passed in {summary.get('seconds', '?')} s",
                      e2e_url, pending_at)
        return summary
    exc = state.result(raise_on_failure=False)
    summary = exc.summary if isinstance(exc, StageFailed) and isinstance(exc.summary, dict) else {
        "state": "FAILED", "lines": [_first_line(exc)]}
    report_status(target, "failure", E2E_CONTEXT, f"E2E of {env}: " + "; ".join(summary.get("lines", []))[:120],
                  e2e_url, pending_at)
    return summary


@flow(name="preview-close", flow_run_name="preview-close-{ref}", persist_result=True)
def close_preview(repo: str, ref: str, delete_images: bool = True) -> dict[str, Any]:
    """Pull request N was closed: remove `pr-N` (containers, router, database, its directory), the images only it
    refers to, and its record. Nothing to remove is not an error."""
    repo, number = validate.repo(repo), _number(validate.ref(ref, "--ref"))
    records = [r for r in read_previews() if r.number == number and (r.repo is None or same_repository(r.repo, repo))]
    removed: list[str] = []
    kept: list[str] = []
    for record in records:
        with environment_slot(record.project, SLOT):
            config = _last_config(record)
            _remove(record, config)
            registry = record.registry or (config.registry if config is not None else None)
            services = list(record.services or (config.services if config is not None else []))
            if delete_images and registry and services:  # the environment is gone: an unreachable registry keeps
                # only images, which the next close or the registry's own retention removes (said in the result)
                deleted = delete_preview_images(registry, record.project, services, number, return_state=True)
                if deleted.is_completed():
                    removed += deleted.result()
                else:
                    kept.append(f"{record.project}/{record.env}: images not deleted: {deleted.message}")
            forget_preview(record.project, number)
        report_status(status_target(repo, record.sha), "success", PREVIEW_CONTEXT,
                      f"{record.env} removed: the pull request was closed", None)
        progress(f"{record.project}/{record.env} removed")
    return {"number": number, "removed": [f"{r.project}/{r.env}" for r in records], "images": removed,
            "warnings": kept}


@flow(name="previews-gc", flow_run_name="previews-gc", persist_result=True)
def previews_gc(repo: str) -> dict[str, Any]:
    """Stop every preview of this machine past its project's TTL (the `previews-gc` deployment runs it hourly)."""
    repo = validate.repo(repo)
    stopped: list[str] = []
    host = socket.gethostname()
    for project in sorted({r.project for r in read_previews()}):
        policy = (read_policy(project) or default_policy(project)).previews
        with environment_slot(project, SLOT):
            for record in expired(read_previews(project), policy.ttl_hours):
                if record.target == "kubernetes" or record.host in (None, host):
                    _stop(repo, record, f"no push for {policy.ttl_hours:g} h (the previews' TTL); push again to "
                                        "redeploy")
                    stopped.append(f"{project}/{record.env}")
    return {"stopped": stopped}
