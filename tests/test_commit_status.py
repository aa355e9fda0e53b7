"""Commit statuses on the git host: the pure rules (sunday_release/commit_status.py) and their delivery
(tasks/commit_status.py) against a FAKE git host that checks GitHub's documented request shape
(tests/fake_git_host.py; GitHub itself cannot run here)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sunday_release.commit_status import (
    GitRepository,
    api_base,
    newer_status_exists,
    parse_repository,
    status_body,
    status_url,
)
from tasks.commit_status import StatusTarget, post_status, status_target
from tests.fake_git_host import FakeGitHost

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "ghs_FAKEinstallationTOKEN0123456789"
CI = "sunday-release/ci"


@pytest.mark.parametrize(("url", "repository"), [
    ("https://github.com/acme/shop.git", GitRepository("github.com", "acme", "shop")),
    ("https://GitHub.com/acme/shop", GitRepository("github.com", "acme", "shop")),
    ("git@github.com:acme/shop.git", GitRepository("github.com", "acme", "shop")),
    ("ssh://git@gitea.example.com:2222/acme/shop.git", GitRepository("gitea.example.com", "acme", "shop")),
    ("/srv/git/shop", None),
    ("file:///srv/git/shop", None),
    ("https://github.com/acme", None),
    ("https://github.com/acme/shop/extra", None),
    ("https://github.com/../shop", None),
])
def test_parse_repository(url: str, repository: GitRepository | None) -> None:
    assert parse_repository(url) == repository


def test_the_api_of_a_host() -> None:
    github, gitea = GitRepository("github.com", "acme", "shop"), GitRepository("gitea.example.com", "acme", "shop")
    assert api_base(github) == "https://api.github.com"
    assert api_base(gitea) is None  # unknown: nothing is reported unless SUNDAY_GIT_API names it
    assert api_base(gitea, "https://gitea.example.com/api/v1/") == "https://gitea.example.com/api/v1"
    assert status_url("https://api.github.com", github, SHA) == f"https://api.github.com/repos/acme/shop/statuses/{SHA}"
    with pytest.raises(ValueError, match="sha"):
        status_url("https://api.github.com", github, "main")


def test_a_status_body_is_what_github_takes() -> None:
    body = status_body("failure", CI, "backend: test failed:\n test_board_names_are_trimmed" + " x" * 100,
                       "http://127.0.0.1:4200/runs/flow-run/1")
    assert set(body) == {"state", "context", "description", "target_url"}
    assert len(body["description"]) == 140 and "\n" not in body["description"] and body["description"].endswith("…")
    assert "target_url" not in status_body("pending", CI, "running", None)
    for bad in ({"state": "ok"}, {"context": "ci"}, {"target_url": "javascript:alert(1)"}):
        args = {"state": "success", "context": CI, "description": "d", "target_url": None, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            status_body(**args)  # type: ignore[arg-type]


def test_a_newer_run_of_the_same_commit_is_told_apart() -> None:
    listed = [{"context": CI, "target_url": "u/B", "created_at": "2026-12-01T00:00:05Z"},
              {"context": CI, "target_url": "u/A", "created_at": "2026-12-01T00:00:02Z"},
              {"context": "sunday-release/e2e", "target_url": "u/C", "created_at": "2026-12-01T00:00:09Z"}]
    assert newer_status_exists(listed, CI, "u/A", "2026-12-01T00:00:02Z")  # B started after A
    assert not newer_status_exists(listed, CI, "u/B", "2026-12-01T00:00:05Z")  # B is the newest
    assert not newer_status_exists(listed, "sunday-release/e2e", "u/C", "2026-12-01T00:00:09Z")
    assert not newer_status_exists(listed, CI, "u/A", "not a time")  # unknown: sent, as if no guard
    assert newer_status_exists(listed, CI, "u/A", "2026-12-01T00:00:02+00:00")  # Gitea writes offsets


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeGitHost, StatusTarget]]:
    fake = FakeGitHost(TOKEN)
    api = fake.start()
    monkeypatch.setenv("SUNDAY_GIT_TOKEN", TOKEN)
    monkeypatch.setenv("SUNDAY_GIT_API", api)
    target = status_target("https://gitea.example.com/acme/shop.git", SHA)
    assert target is not None and target.api == api
    try:
        yield fake, target
    finally:
        fake.stop()


def test_pending_then_success_in_the_documented_shape(host: tuple[FakeGitHost, StatusTarget],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fake, target = host
    caplog.set_level(logging.DEBUG)
    pending_at = post_status.fn(target, "pending", CI, "CI of main is running", "http://ui/runs/flow-run/A")
    assert pending_at == "2026-12-01T00:00:01Z"
    post_status.fn(target, "success", CI, "CI passed: backend, frontend", "http://ui/runs/flow-run/A", pending_at)
    assert fake.problems == []
    assert [(m, p) for m, p, _ in fake.calls] == [("POST", f"/repos/acme/shop/statuses/{SHA}"),
                                                  ("GET", f"/repos/acme/shop/commits/{SHA}/statuses"),
                                                  ("POST", f"/repos/acme/shop/statuses/{SHA}")]
    latest = fake.latest(SHA, CI)
    assert latest is not None and (latest["state"], latest["target_url"]) == ("success", "http://ui/runs/flow-run/A")
    assert TOKEN not in caplog.text


def test_an_older_run_finishing_last_never_overwrites_the_newer(host: tuple[FakeGitHost, StatusTarget]) -> None:
    fake, target = host
    a = post_status.fn(target, "pending", CI, "run A", "http://ui/runs/flow-run/A")
    b = post_status.fn(target, "pending", CI, "run B", "http://ui/runs/flow-run/B")
    assert post_status.fn(target, "success", CI, "B passed", "http://ui/runs/flow-run/B", b) is not None
    assert post_status.fn(target, "failure", CI, "A failed", "http://ui/runs/flow-run/A", a) is None  # not sent
    latest = fake.latest(SHA, CI)
    assert latest is not None and (latest["state"], latest["target_url"]) == ("success", "http://ui/runs/flow-run/B")


def test_without_a_token_nothing_is_sent(host: tuple[FakeGitHost, StatusTarget],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake, target = host
    monkeypatch.delenv("SUNDAY_GIT_TOKEN")
    assert post_status.fn(target, "pending", CI, "running", None) is None
    assert fake.calls == []


def test_a_local_repository_or_an_unknown_host_has_no_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUNDAY_GIT_API", raising=False)
    assert status_target("/srv/git/shop", SHA) is None
    assert status_target("https://gitea.example.com/acme/shop.git", SHA) is None
    target = status_target("git@github.com:acme/shop.git", SHA)
    assert target is not None and target.api == "https://api.github.com"


def test_a_host_error_is_retryable_and_a_refusal_is_named(host: tuple[FakeGitHost, StatusTarget],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake, target = host
    fake.fail_next = 1
    with pytest.raises(RuntimeError, match="502"):  # the task's retries take it from here
        post_status.fn(target, "pending", CI, "running", None)
    assert post_status.fn(target, "pending", CI, "running", None) is not None  # the retry goes through
    monkeypatch.setenv("SUNDAY_GIT_TOKEN", "wrong-token")
    with pytest.raises(ValueError, match="HTTP 401") as refused:
        post_status.fn(target, "pending", CI, "running", None)
    assert "wrong-token" not in str(refused.value)
