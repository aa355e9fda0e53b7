"""Checking out a push's commit (`--sha`) when its branch has moved on; commits not on the ref are refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sunday_release.errors import InputError
from tasks.source import clone_repo
from tests.conftest import FIXTURES
from tests.test_ci_flow import sunday


@pytest.fixture
def two_pushes(make_repo: Callable[..., Path], git: Callable[..., str]) -> tuple[Path, str, str]:
    """A repository whose main moved from commit A to commit B; returns (repo, A, B)."""
    repo = make_repo(FIXTURES / "other-app")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "NOTE").write_text("second push\n")
    git(repo, "add", "NOTE")
    git(repo, "commit", "-qm", "second")
    return repo, first, git(repo, "rev-parse", "HEAD")


def test_the_pushed_commit_is_built_not_the_branch_tip(two_pushes: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, first, second = two_pushes
    checkout = clone_repo.fn(str(repo), "main", str(tmp_path / "ws"), sha=first)
    assert checkout.commit == first and checkout.ref == "main"
    assert not (Path(checkout.path) / "NOTE").exists()
    assert clone_repo.fn(str(repo), "main", str(tmp_path / "ws2")).commit == second  # no sha: the tip


def test_a_short_sha_is_enough(two_pushes: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, first, _ = two_pushes
    assert clone_repo.fn(str(repo), "main", str(tmp_path / "ws"), sha=first[:12]).commit == first


def test_a_commit_that_is_not_on_the_ref_is_refused(two_pushes: tuple[Path, str, str], tmp_path: Path,
                                                     git: Callable[..., str]) -> None:
    repo, first, _ = two_pushes
    git(repo, "checkout", "-q", "-b", "side", first)
    (repo / "SIDE").write_text("x\n")
    git(repo, "add", "SIDE")
    git(repo, "commit", "-qm", "side")
    side = git(repo, "rev-parse", "HEAD")
    with pytest.raises(InputError, match=rf"--sha: commit '{side}' is not on 'main'"):
        clone_repo.fn(str(repo), "main", str(tmp_path / "ws"), sha=side)
    assert not (tmp_path / "ws").exists()  # nothing half-done is left behind
    with pytest.raises(InputError, match="is not on 'main'"):
        clone_repo.fn(str(repo), "main", str(tmp_path / "ws"), sha="0" * 40)


def test_a_malformed_sha_exits_2_before_anything_runs(two_pushes: tuple[Path, str, str]) -> None:
    done = sunday("ci", "--repo", str(two_pushes[0]), "--ref", "main", "--sha", "HEAD~1",
                  env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert done.returncode == 2 and "--sha: 'HEAD~1' is not a commit SHA" in done.stderr, done.stderr


def test_a_config_error_names_the_repository_and_commit_not_the_workspace(
        make_repo: Callable[..., Path], tmp_path: Path) -> None:
    from sunday_release.errors import ConfigError
    from tasks.source import load_pipeline_config

    def typo(repo: Path) -> None:
        (repo / "sunday-release.yaml").write_text((repo / "sunday-release.yaml").read_text() + "servces: {}\n")

    repo = make_repo(FIXTURES / "other-app", edit=typo)
    checkout = clone_repo.fn(str(repo), "main", str(tmp_path / "ws"))
    with pytest.raises(ConfigError) as caught:
        load_pipeline_config.fn(checkout)
    assert str(caught.value).startswith(f"{repo} at main ({checkout.commit[:12]}): sunday-release.yaml: servces: ")
    assert str(tmp_path / "ws") not in str(caught.value)


EVIL_REF = "refs/heads/--upload-pack=touch${IFS}%s;git-upload-pack"  # ran a command on the CI worker (issue 12)


def test_the_upload_pack_ref_is_refused_by_the_task_itself(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    """A deployment run or a `git.push` event reaches the task without the CLI's checks: it checks itself."""
    repo, marker = str(make_repo(FIXTURES / "other-app")), tmp_path / "pwned"
    for ref in (EVIL_REF % marker, f"--upload-pack=touch {marker}", f"refs/tags/--upload-pack=touch {marker}"):
        with pytest.raises(InputError, match=r"^--ref: .*git would read it as an option"):
            clone_repo.fn(repo, ref, str(tmp_path / "ws"))
    assert not marker.exists() and not (tmp_path / "ws").exists()  # nothing cloned, no workspace


def test_git_itself_never_sees_the_option_even_past_validation(make_repo: Callable[..., Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the ref check switched off, `--end-of-options` still keeps git from running it."""
    import tasks.source

    repo, marker = str(make_repo(FIXTURES / "other-app")), tmp_path / "pwned"
    monkeypatch.setattr(tasks.source.validate, "ref", lambda value, arg="--ref": value)
    for ref in (f"--upload-pack=touch {marker};git-upload-pack", EVIL_REF % marker):
        with pytest.raises(InputError, match="was not found"):
            clone_repo.fn(repo, ref, str(tmp_path / "ws"))
    assert not marker.exists()
