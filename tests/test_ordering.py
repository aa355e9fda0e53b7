"""A deploy never goes back to an older version unless a person asks: tag order and commit ancestry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sunday_release.bluegreen import Release
from sunday_release.errors import InputError
from sunday_release.ordering import tag_is_older, tag_key
from sunday_release.policy import DEFAULT_RELEASE_TAGS
from tasks.deploy import refuse_older_version
from tasks.source import clone_repo
from tests.conftest import FIXTURES


def test_release_tags_sort_by_their_numbers() -> None:
    assert tag_key("v1.10.0") > tag_key("v1.9.12") > tag_key("v1.9.2")
    assert tag_is_older("v1.9.2", "v1.10.0", DEFAULT_RELEASE_TAGS)
    assert not tag_is_older("v1.10.0", "v1.9.2", DEFAULT_RELEASE_TAGS)
    assert not tag_is_older("v1.2.3", "v1.2.3", DEFAULT_RELEASE_TAGS)  # the same tag: a redeploy
    assert not tag_is_older("a" * 40, "v1.2.3", DEFAULT_RELEASE_TAGS)  # a commit is ordered by ancestry instead


def live(commit: str, version: str | None = None) -> Release:
    return Release(revision=4, version=version or commit, digests={}, color="blue", started="", commit=commit,
                   outcome="live")


def test_an_ancestor_of_the_live_commit_is_refused_unless_asked_for(
        make_repo: Callable[..., Path], git: Callable[..., str], tmp_path: Path) -> None:
    repo = make_repo(FIXTURES / "other-app")
    old = git(repo, "rev-parse", "HEAD")
    (repo / "NOTE").write_text("newer\n")
    git(repo, "add", "NOTE")
    git(repo, "commit", "-qm", "newer")
    new = git(repo, "rev-parse", "HEAD")

    late = clone_repo.fn(str(repo), old, str(tmp_path / "late"))  # shallow, as CD checks a version out
    with pytest.raises(InputError, match=rf"--version: {old} \({old[:12]}\) is older than the live revision 4"):
        refuse_older_version.fn(late, old, live(new), DEFAULT_RELEASE_TAGS)
    assert "deployed on request" in refuse_older_version.fn(late, old, live(new), DEFAULT_RELEASE_TAGS,
                                                            allow_older=True)
    newer = clone_repo.fn(str(repo), new, str(tmp_path / "newer"))
    assert "is newer" in refuse_older_version.fn(newer, new, live(old), DEFAULT_RELEASE_TAGS)
    assert "redeploy" in refuse_older_version.fn(newer, new, live(new), DEFAULT_RELEASE_TAGS)
    assert "nothing live" in refuse_older_version.fn(newer, new, None, DEFAULT_RELEASE_TAGS)
    # a live commit the repository no longer has (history rewritten): the order cannot be checked, not refused
    assert "is newer" in refuse_older_version.fn(late, old, live("f" * 40), DEFAULT_RELEASE_TAGS)


def test_a_lower_release_tag_is_refused_even_on_a_newer_commit(
        make_repo: Callable[..., Path], git: Callable[..., str], tmp_path: Path) -> None:
    repo = make_repo(FIXTURES / "other-app")
    git(repo, "tag", "v1.10.0")
    (repo / "NOTE").write_text("newer\n")
    git(repo, "add", "NOTE")
    git(repo, "commit", "-qm", "newer")
    git(repo, "tag", "v1.9.0")
    checkout = clone_repo.fn(str(repo), "v1.9.0", str(tmp_path / "ws"))
    with pytest.raises(InputError, match=r"v1\.9\.0 .* is older than the live revision 4 \(v1\.10\.0"):
        refuse_older_version.fn(checkout, "v1.9.0", live("e" * 40, "v1.10.0"), DEFAULT_RELEASE_TAGS)
