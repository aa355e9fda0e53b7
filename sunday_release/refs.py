"""Validation of git refs and repository locations: the names callers know, kept; the rules live in `validate`."""

from __future__ import annotations

import re

from sunday_release import validate
from sunday_release.validate import is_sha, short_ref

__all__ = ["is_sha", "pull_request_number", "pull_ref", "short_ref", "validate_ref", "validate_repo", "validate_sha"]

_PULL = re.compile(r"^refs/pull/([1-9][0-9]{0,9})/(?:head|merge)$")


def pull_ref(number: int) -> str:
    """The ref a git host keeps for pull request `number`'s head commit, in the base repository (forks too)."""
    return f"refs/pull/{number}/head"


def pull_request_number(ref: str) -> int | None:
    """N for `refs/pull/N/head` (or `/merge`), else None. A pull request's CI never deploys and never gets
    release tags, whatever the commit's own config says."""
    match = _PULL.match(ref)
    return int(match.group(1)) if match else None


def validate_ref(ref: str) -> str:
    """Return `ref` if it is a safe branch, tag, full ref or SHA (its short form too); else InputError."""
    return validate.ref(ref)


def validate_sha(sha: str | None) -> str | None:
    """Return `sha` (None stays None) if it is a commit id; else InputError naming --sha."""
    return None if sha is None else validate.sha(sha)


def validate_repo(repo: str) -> str:
    """Return a usable repository location (a git URL without secrets, or a local repository's path)."""
    return validate.repo(repo)
