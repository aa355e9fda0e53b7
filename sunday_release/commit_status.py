"""Commit statuses on the git host (pure): which repository and API, the request, and whether to send it.

GitHub's REST API (`POST /repos/{owner}/{repo}/statuses/{sha}`, body `state`, `target_url`, `description`,
`context`; `GET /repos/{owner}/{repo}/commits/{ref}/statuses` lists them newest first) and the compatible API of
Gitea and Forgejo (`/api/v1/repos/...`). One context per pipeline: `sunday-release/ci`, `sunday-release/e2e`,
`sunday-release/preview`. The sending (a Prefect task, retried, never what fails a run) is tasks/commit_status.py.

An outdated status never overwrites a newer one: a run posts `pending` when it starts and remembers when the host
recorded it; before its final state it reads the commit's statuses, and when a status of the same context from
another run was recorded after its own `pending` (a newer run of the same commit started meanwhile) it posts
nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CONTEXTS", "DESCRIPTION_LIMIT", "STATES", "GitRepository", "api_base", "newer_status_exists",
           "parse_repository", "status_body", "status_url", "statuses_url"]

CONTEXTS = ("sunday-release/ci", "sunday-release/e2e", "sunday-release/preview")
STATES = ("pending", "success", "failure", "error")
DESCRIPTION_LIMIT = 140  # GitHub refuses a longer description (422)

_PART = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class GitRepository:
    """A repository on a git host: `github.com`, `acme`, `shop`."""

    host: str
    owner: str
    name: str


def parse_repository(url: str) -> GitRepository | None:
    """The host, owner and name of a clone URL (`https://github.com/acme/shop.git`, `git@github.com:acme/shop.git`,
    `ssh://git@host:2222/acme/shop`); None for a local path or a URL of another shape."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    elif re.match(r"^[\w.-]+@[\w.-]+:", url):
        host, _, path = url.partition("@")[2].partition(":")
    else:
        return None
    segments = path.strip("/").removesuffix(".git").split("/")
    if len(segments) != 2 or not all(_PART.match(s) and s not in (".", "..") for s in segments):
        return None
    return GitRepository(host.lower(), segments[0], segments[1])


def api_base(repository: GitRepository, configured: str | None = None) -> str | None:
    """The REST API of the repository's host: `configured` (SUNDAY_GIT_API, e.g. `https://gitea.example.com/api/v1`
    or a GitHub Enterprise `https://ghe.example.com/api/v3`), else GitHub's for github.com; None when unknown."""
    if configured:
        return configured.rstrip("/")
    if repository.host == "github.com":
        return "https://api.github.com"
    return None


def status_url(api: str, repository: GitRepository, sha: str) -> str:
    """`POST` here to set a status of commit `sha`."""
    if not _SHA.match(sha):
        raise ValueError(f"sha: expected a 40-hex commit id, got {sha!r}")
    return f"{api}/repos/{repository.owner}/{repository.name}/statuses/{sha}"


def statuses_url(api: str, repository: GitRepository, sha: str) -> str:
    """`GET` here for commit `sha`'s statuses, newest first."""
    if not _SHA.match(sha):
        raise ValueError(f"sha: expected a 40-hex commit id, got {sha!r}")
    return f"{api}/repos/{repository.owner}/{repository.name}/commits/{sha}/statuses"


def _one_line(text: str) -> str:
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= DESCRIPTION_LIMIT else flat[:DESCRIPTION_LIMIT - 1] + "…"


def status_body(state: str, context: str, description: str, target_url: str | None) -> dict[str, str]:
    """The JSON body of a status: `state` one of STATES, `context` one of CONTEXTS, the description on one line of at
    most 140 characters, `target_url` (the run in the Prefect UI) when known."""
    if state not in STATES:
        raise ValueError(f"state: expected one of {', '.join(STATES)}, got {state!r}")
    if context not in CONTEXTS:
        raise ValueError(f"context: expected one of {', '.join(CONTEXTS)}, got {context!r}")
    body = {"state": state, "context": context, "description": _one_line(description)}
    if target_url:
        if not target_url.startswith(("https://", "http://")):
            raise ValueError(f"target_url: expected an http(s) URL, got {target_url!r}")
        body["target_url"] = target_url
    return body


def newer_status_exists(statuses: list[dict[str, Any]], context: str, own_target_url: str | None,
                        own_pending_at: str) -> bool:
    """Whether `statuses` (the host's list for the commit) holds a status of `context` from another run recorded
    after this run's `pending` (`created_at`, ISO 8601 as the host writes it). Then this run's final state would
    overwrite a newer run's."""
    mine = _time(own_pending_at)
    if mine is None:
        return False
    for status in statuses:
        if not isinstance(status, dict) or status.get("context") != context:
            continue
        created = _time(status.get("created_at"))
        if created is not None and created > mine and status.get("target_url") != own_target_url:
            return True
    return False


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
