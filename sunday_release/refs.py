"""Validation of git refs and repository locations: the names callers know, kept; the rules live in `validate`."""

from __future__ import annotations

from sunday_release import validate
from sunday_release.validate import is_sha, short_ref

__all__ = ["is_sha", "short_ref", "validate_ref", "validate_repo", "validate_sha"]


def validate_ref(ref: str) -> str:
    """Return `ref` if it is a safe branch, tag, full ref or SHA (its short form too); else InputError."""
    return validate.ref(ref)


def validate_sha(sha: str | None) -> str | None:
    """Return `sha` (None stays None) if it is a commit id; else InputError naming --sha."""
    return None if sha is None else validate.sha(sha)


def validate_repo(repo: str) -> str:
    """Return a usable repository location (a git URL without secrets, or a local repository's path)."""
    return validate.repo(repo)
