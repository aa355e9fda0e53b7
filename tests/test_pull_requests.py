"""Pull requests in the pipeline's pure parts: which branches run CI, and that a pull request's CI never deploys
and never gets a release tag, whatever the commit's own config says (the receiver's side is tests/test_webhook.py)."""

from __future__ import annotations

import pytest

from flows.ci import deploy_target_of, image_tags_of
from sunday_release.config import PipelineConfig, parse_config
from sunday_release.errors import ConfigError
from sunday_release.refs import pull_ref, pull_request_number

SHA = "0123456789abcdef0123456789abcdef01234567"
SERVICES = {"web": {"context": "web", "port": 8000}}


def config(**extra: object) -> PipelineConfig:
    return parse_config({"project": "shop", "services": SERVICES, **extra})


def test_the_branches_with_ci_default_to_the_default_branch_and_develop() -> None:
    assert config().branches_with_ci() == ("main", "develop")
    assert config(default_branch="trunk").branches_with_ci() == ("trunk", "develop")
    assert config(ci_branches=["release/2.x"]).branches_with_ci() == ("main", "release/2.x")
    assert config(ci_branches=[]).branches_with_ci() == ("main",)


@pytest.mark.parametrize(("branches", "problem"), [
    (["-x"], "ci_branches[0]: not a valid branch name"),
    (["main", "a..b"], "ci_branches[1]: not a valid branch name"),
    (["refs/heads/main"], "ci_branches[0]: a branch name, not a full ref"),
    ("main", "ci_branches: Input should be a valid list"),
])
def test_a_bad_ci_branch_is_named(branches: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        config(ci_branches=branches)


@pytest.mark.parametrize(("ref", "number"), [
    ("refs/pull/7/head", 7), ("refs/pull/123/merge", 123), ("refs/pull/0/head", None), ("refs/pull/7", None),
    ("refs/pull/7/head/x", None), ("pull/7/head", None), ("refs/heads/pull/7/head", None), ("main", None),
])
def test_pull_request_number(ref: str, number: int | None) -> None:
    assert pull_request_number(ref) == number
    if number is not None and ref.endswith("/head"):
        assert pull_ref(number) == ref


@pytest.mark.parametrize("extra", [
    {},
    {"default_branch": "refs/pull/7/head"},  # a pull request's own config trying to deploy itself to staging
    {"release_tags": ".*"},  # ... or to production
])
def test_a_pull_request_never_deploys_and_never_gets_release_tags(extra: dict[str, object]) -> None:
    cfg = config(**extra)
    assert deploy_target_of(cfg, "refs/pull/7/head") == "none"  # a fork's, or one not known to be no fork's
    assert deploy_target_of(cfg, "refs/pull/7/head", fork=True) == "none"
    assert deploy_target_of(cfg, "refs/pull/7/head", fork=False) == "preview"  # its own pr-7, nothing else
    assert image_tags_of(cfg, "refs/pull/7/head", SHA) == [f"pr-7-{SHA}"]


def test_branches_and_tags_keep_their_targets_and_tags() -> None:
    cfg = config()
    assert deploy_target_of(cfg, "main") == "staging"
    assert deploy_target_of(cfg, "v1.2.3") == "production"
    assert deploy_target_of(cfg, "develop") == "none"
    assert image_tags_of(cfg, "main", SHA) == [f"sha-{SHA}"]
    assert image_tags_of(cfg, "v1.2.3", SHA) == [f"sha-{SHA}", "v1.2.3"]
