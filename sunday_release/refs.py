"""Validation of git refs and repository locations given by people and webhooks."""

from __future__ import annotations

import re
from pathlib import Path

from sunday_release.errors import InputError

__all__ = ["is_sha", "short_ref", "validate_ref", "validate_repo", "validate_sha"]

_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_BAD = re.compile(r"(\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|//|/\.|\.lock$|\.$|/$|^/|^-)")
_URL = re.compile(r"^(https?|ssh|git|file)://[^\s]+$|^[\w.-]+@[\w.-]+:[^\s]+$")


def is_sha(ref: str) -> bool:
    """True for a (possibly abbreviated) lower-case hex commit id."""
    return bool(_SHA.match(ref))


def validate_ref(ref: str) -> str:
    """Return `ref` if git would accept it as a branch, tag, full ref or SHA; else InputError."""
    if not ref or len(ref) > 255 or _BAD.search(ref):
        raise InputError(f"--ref: {ref!r} is not a valid git ref (expected a branch, tag or commit SHA)")
    return ref


def validate_sha(sha: str | None) -> str | None:
    """Return `sha` (None stays None) if it is a commit id; else InputError naming --sha."""
    if sha is not None and not is_sha(sha):
        raise InputError(f"--sha: {sha!r} is not a commit SHA (expected 7 to 40 lower-case hex digits)")
    return sha


def short_ref(ref: str) -> str:
    """`refs/heads/main` → `main`, `refs/tags/v1.2.3` → `v1.2.3`, anything else unchanged."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def validate_repo(repo: str) -> str:
    """Return a usable repository location: an existing local git directory or a git URL."""
    if _URL.match(repo):
        return repo
    path = Path(repo).expanduser()
    if not path.exists():
        raise InputError(f"--repo: {repo!r} is neither an existing directory nor a git URL")
    if not (path / ".git").exists() and not (path / "HEAD").is_file():
        raise InputError(f"--repo: {repo!r} is not a git repository (no .git)")
    return str(path.resolve())
