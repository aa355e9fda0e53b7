"""Commit statuses sent to the git host (GitHub's REST API, or Gitea/Forgejo's compatible one).

The token: the Prefect Secret block `sunday-git-token`, else SUNDAY_GIT_TOKEN (a GitHub App installation token
or a fine-grained token with "Commit statuses: write"; docs/webhook.md). The API: SUNDAY_GIT_API, else GitHub's
for a github.com repository. Without a token or an API nothing is sent and the run says so once. A status is
retried and never fails the run that reports it (`report_status`); the ordering rule is
sunday_release/commit_status.py's. The token never reaches a log, an artifact or a parameter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from sunday_release.commit_status import (
    GitRepository,
    api_base,
    newer_status_exists,
    parse_repository,
    status_body,
    status_url,
    statuses_url,
)
from sunday_release.tls import tls_context
from tasks._common import progress

__all__ = ["TOKEN_BLOCK", "TOKEN_ENV", "StatusTarget", "post_status", "report_status", "status_target"]

TOKEN_BLOCK = "sunday-git-token"
TOKEN_ENV = "SUNDAY_GIT_TOKEN"
API_ENV = "SUNDAY_GIT_API"


@dataclass(frozen=True)
class StatusTarget:
    """Where a run's statuses go: the API, the repository and the commit."""

    api: str
    repository: GitRepository
    sha: str


def _token() -> str | None:
    """The Secret block's token (looked up only when PREFECT_API_URL names a server), else SUNDAY_GIT_TOKEN."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        from adapters.secrets import read_secret_block
        from sunday_release.errors import PipelineError

        try:
            return read_secret_block(TOKEN_BLOCK).get_secret_value()
        except PipelineError:  # no such block (or an empty one): the environment's, if any
            pass
    return os.environ.get(TOKEN_ENV) or None


def status_target(repo: str, sha: str) -> StatusTarget | None:
    """The status target of commit `sha` of clone URL `repo`; None (nothing is reported) for a local repository or
    a host whose API is not known (set SUNDAY_GIT_API)."""
    repository = parse_repository(repo)
    if repository is None:
        return None
    api = api_base(repository, os.environ.get(API_ENV))
    return StatusTarget(api, repository, sha) if api else None


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "sunday-release"}


@task(name="commit-status", task_run_name="status[{context}:{state}]", retries=3, retry_delay_seconds=[1, 4, 10],
      retry_jitter_factor=0.5, cache_policy=NO_CACHE)
def post_status(target: StatusTarget, state: str, context: str, description: str, target_url: str | None,
                pending_at: str | None = None) -> str | None:
    """POST the status; its `created_at` as the host recorded it, or None when nothing was sent (no token, or a
    newer run of the commit already reported this context: `pending_at` is this run's own pending).

    Raises:
        RuntimeError: the host answered 5xx or 429 (retried, then the task fails); a 4xx other than 429 fails at
            once, naming the status code (a token without the permission, a repository it cannot see).
    """
    token = _token()
    if token is None:
        progress(f"no git host token ({TOKEN_BLOCK} block or {TOKEN_ENV}): commit status {context} not reported")
        return None
    body = status_body(state, context, description, target_url)
    with httpx.Client(headers=_headers(token), timeout=15, verify=tls_context()) as client:
        if pending_at is not None:
            listed = client.get(statuses_url(target.api, target.repository, target.sha), params={"per_page": 100})
            if listed.status_code >= 500 or listed.status_code == 429:
                raise RuntimeError(f"git host answered {listed.status_code} listing the commit's statuses")
            if listed.status_code == 200 and newer_status_exists(listed.json(), context, target_url, pending_at):
                progress(f"{context}: a newer run of {target.sha[:12]} reported meanwhile; {state} not sent")
                return None
        response = client.post(status_url(target.api, target.repository, target.sha), json=body)
    if response.status_code >= 500 or response.status_code == 429:
        raise RuntimeError(f"git host answered {response.status_code} to the {context} status")
    if response.status_code not in (200, 201):
        raise ValueError(f"git host refused the {context} status: HTTP {response.status_code} "
                         f"{response.text[:200]!r}")
    progress(f"{context}: {state} on {target.repository.owner}/{target.repository.name}@{target.sha[:12]}")
    created = response.json().get("created_at") if response.headers.get("content-type", "").startswith(
        "application/json") else None
    return str(created) if created else None


def report_status(target: StatusTarget | None, state: str, context: str, description: str,
                  target_url: str | None, pending_at: str | None = None) -> str | None:
    """Run `post_status` without letting it fail the caller: its `created_at`, or None when nothing was sent (no
    target, no token, a newer run, or a failure: the failed task run stays visible in the UI)."""
    if target is None:
        return None
    state_of_run = post_status(target, state, context, description, target_url, pending_at,
                               return_state=True)
    if state_of_run.is_completed():
        result = state_of_run.result()
        return result if isinstance(result, str) else None
    progress(f"{context}: status {state} not delivered: {state_of_run.message}")
    return None
