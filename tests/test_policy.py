"""Release policy owned by the server: a commit's config may tighten it, never loosen it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from sunday_release.config import parse_config
from sunday_release.errors import ConfigError, InputError
from sunday_release.policy import EnvPolicy, GatePolicy, ProjectPolicy, default_policy, enforce, parse_policy
from tests.conftest import APP, FIXTURES
from tests.test_ci_flow import sunday

TODAY = date(2026, 12, 3)


def config(**extra: Any) -> Any:
    data: dict[str, Any] = {"project": "shop", "services": {"web": {"context": "web", "port": 8000}}, **extra}
    return parse_config(data)


def refused(cfg: Any, policy: ProjectPolicy, key: str) -> str:
    with pytest.raises(ConfigError) as caught:
        enforce(cfg, policy, today=TODAY)
    assert caught.value.path == key, str(caught.value)
    return str(caught.value)


def test_the_defaults_need_production_approval_a_backup_and_the_gates() -> None:
    effective = enforce(config(environments={"staging": {}, "production": {}}), default_policy("shop"), today=TODAY)
    production = effective.environments["production"]
    assert production.approval and production.needs_backup("production") and production.max_error_rate == 0.01
    assert production.analysis.enabled and production.analysis.max_error_ratio == 0.02
    assert not effective.environments["staging"].approval
    assert effective.scan.fail_on == ["HIGH", "CRITICAL"] and effective.scan.misconfig_fail_on == ["CRITICAL"]
    assert effective.release_tags == r"^v\d+\.\d+\.\d+$"


@pytest.mark.parametrize(("extra", "key"), [
    ({"environments": {"production": {"approval": False}}}, "environments.production.approval"),
    ({"environments": {"production": {"backup": False}}}, "environments.production.backup"),
    ({"environments": {"production": {"max_error_rate": 0.5}}}, "environments.production.max_error_rate"),
    ({"environments": {"production": {"analysis": {"enabled": False}}}}, "environments.production.analysis.enabled"),
    ({"environments": {"production": {"analysis": {"max_error_ratio": 0.5}}}},
     "environments.production.analysis.max_error_ratio"),
    ({"environments": {"production": {"analysis": {"failure_limit": 50}}}},
     "environments.production.analysis.failure_limit"),
    ({"environments": {"production": {"analysis": {"min_requests": 1000000}}}},
     "environments.production.analysis.min_requests"),
    ({"scan": {"fail_on": []}}, "scan.fail_on"),
    ({"scan": {"fail_on": ["CRITICAL"]}}, "scan.fail_on"),
    ({"scan": {"misconfig_fail_on": []}}, "scan.misconfig_fail_on"),
    ({"scan": {"ignore_unfixed": True}}, "scan.ignore_unfixed"),
    ({"scan": {"db_max_age_days": 30}}, "scan.db_max_age_days"),
    ({"release_tags": ".*"}, "release_tags"),
    ({"scan": {"allow": [{"id": "CVE-1", "reason": "r", "expires": "2099-01-01"}]}}, "scan.allow[0].expires"),
])
def test_a_commit_cannot_loosen_the_default_policy(extra: dict[str, Any], key: str) -> None:
    message = refused(config(**extra), default_policy("shop"), key)
    assert "never loosen" in message and "default policy" in message


def test_every_loosened_key_is_listed_and_the_first_is_named() -> None:
    message = refused(config(release_tags=".*", environments={"production": {"approval": False}},
                             scan={"fail_on": []}), default_policy("shop"), "release_tags")
    assert "3 keys" in message
    assert all(k in message for k in ("environments.production.approval", "scan.fail_on", "release_tags"))


def test_a_commit_may_tighten() -> None:
    tight = config(environments={"staging": {"approval": True, "max_error_rate": 0.001}, "production": {}},
                   scan={"fail_on": ["MEDIUM", "HIGH", "CRITICAL"], "misconfig_fail_on": ["HIGH", "CRITICAL"],
                         "allow": [{"id": "CVE-1", "reason": "no fix yet",
                                    "expires": str(TODAY + timedelta(days=30))}]})
    effective = enforce(tight, default_policy("shop"), today=TODAY)
    assert effective.environments["staging"].approval  # more approvals: honoured
    assert effective.environments["staging"].max_error_rate == 0.001
    stricter = enforce(config(environments={"production": {"analysis": {"max_error_ratio": 0.005, "failure_limit": 1}},
                                            "staging": {"analysis": {"enabled": False}}}), default_policy("shop"),
                       today=TODAY)
    assert stricter.environments["production"].analysis.max_error_ratio == 0.005
    assert stricter.environments["production"].analysis.failure_limit == 1
    assert not stricter.environments["staging"].analysis.enabled  # staging requires none by default
    assert effective.scan.fail_on == ["MEDIUM", "HIGH", "CRITICAL"]
    assert len(effective.scan.allow) == 1


def registered(**extra: Any) -> ProjectPolicy:
    return ProjectPolicy(project="shop", repo="https://git.example/acme/shop.git", registry="ecr.example/acme",
                         default_branch="trunk", release_tags=r"^release-\d+$",
                         environments={"staging": EnvPolicy(approval=True), "production": EnvPolicy(approval=True)},
                         **extra)


def test_a_registered_policy_pins_registry_branch_tags_and_fills_what_the_commit_left_out() -> None:
    effective = enforce(config(environments={"staging": {}, "production": {}}), registered(), today=TODAY)
    assert (effective.registry, effective.default_branch, effective.release_tags) == (
        "ecr.example/acme", "trunk", r"^release-\d+$")
    assert effective.environments["staging"].approval  # the server asked for it; the commit said nothing
    refused(config(registry="evil.example"), registered(), "registry")
    refused(config(default_branch="feature"), registered(), "default_branch")
    refused(config(project="other"), registered(), "project")
    refused(config(environments={"staging": {"approval": False}}), registered(), "environments.staging.approval")


def test_a_registered_policy_can_refuse_invented_environments_and_commit_allow_lists() -> None:
    strict = registered(only_registered_environments=True, scan=GatePolicy(allow_from_commit=False))
    refused(config(environments={"yolo": {}}), strict, "environments.yolo")
    refused(config(scan={"allow": [{"id": "CVE-1", "reason": "r", "expires": str(TODAY)}]}), strict, "scan.allow")


def test_a_bad_stored_policy_names_the_key() -> None:
    with pytest.raises(InputError, match=r"policy.yaml: environments.Prod: String should match pattern"):
        parse_policy({"project": "shop", "environments": {"Prod": {}}}, "policy.yaml")
    with pytest.raises(InputError, match="release_tags"):
        parse_policy({"project": "shop", "release_tags": "v("}, "policy.yaml")


def _yaml_edit(repo: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = repo / "sunday-release.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_validate_reports_a_loosening_with_exit_2(make_repo: Callable[..., Path]) -> None:
    repo = make_repo(APP, edit=lambda r: _yaml_edit(r, lambda d: d["environments"]["production"].update(
        approval=False)))
    done = sunday("validate", "--repo", str(repo), env={"PREFECT_API_URL": ""})
    assert done.returncode == 2, done.stderr
    assert "environments.production.approval: a commit may tighten the default policy" in done.stderr

    def tighten(data: dict[str, Any]) -> None:
        data["environments"]["production"].pop("approval")
        data["environments"]["staging"]["approval"] = True

    tight = make_repo(APP, edit=lambda r: _yaml_edit(r, tighten), name="tight")
    done = sunday("validate", "--repo", str(tight), "--json", env={"PREFECT_API_URL": ""})
    assert done.returncode == 0, done.stderr
    effective = json.loads(done.stdout)
    assert effective["environments"]["staging"]["approval"] is True
    assert effective["environments"]["production"]["approval"] is True  # left out: the policy's value


@pytest.fixture
def project_cleanup(prefect_api: str) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    from deployments.projects import remove_policy

    for name in names:
        remove_policy(name)


def test_ci_of_a_commit_that_turns_the_gate_off_builds_nothing(
        prefect_api: str, make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(FIXTURES / "other-app", edit=lambda r: _yaml_edit(r, lambda d: d.update(scan={"fail_on": []})))
    done = sunday("ci", "--repo", str(repo), "--ref", "main", api=prefect_api)
    assert done.returncode == 2, done.stderr
    assert "scan.fail_on: a commit may tighten the default policy (the project is not registered), never loosen " \
           "it: must include CRITICAL, HIGH" in done.stderr
    assert "build" not in done.stderr.split("load-config")[-1]  # nothing after the config was run


def test_a_registered_project_is_built_only_from_its_repository_and_by_its_own_name(
        prefect_api: str, make_repo: Callable[..., Path], project_cleanup: list[str], tmp_path: Path) -> None:
    trusted = make_repo(FIXTURES / "other-app", name="trusted")
    project = yaml.safe_load((trusted / "sunday-release.yaml").read_text())["project"]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"environments": {"production": {"approval": True, "backup": True}},
                                           "only_registered_environments": True}))
    project_cleanup.append(project)
    added = sunday("project", "add", project, "--repo", str(trusted), "--policy", str(policy_file), api=prefect_api)
    assert added.returncode == 0, added.stderr
    shown = json.loads(sunday("project", "show", project, "--json", api=prefect_api).stdout)
    assert shown["repo"] == str(trusted) and shown["only_registered_environments"] is True

    from deployments.projects import find_policy

    assert find_policy(str(trusted), project).registered
    with pytest.raises(InputError, match="registered for the repository"):
        find_policy(str(tmp_path / "fork"), project)  # another repository claiming the project
    with pytest.raises(InputError, match="a commit cannot choose another project's policy"):
        find_policy(str(trusted), "someone-else")  # the trusted repository renaming itself

    fork = make_repo(FIXTURES / "other-app", name="fork")
    done = sunday("ci", "--repo", str(fork), "--ref", "main", api=prefect_api)
    assert done.returncode == 2 and f"is registered for the repository {trusted}" in done.stderr, done.stderr

    bad = sunday("project", "add", "Bad_Name", "--repo", str(trusted), api=prefect_api)
    assert bad.returncode == 2 and "project NAME" in bad.stderr, bad.stderr


def test_a_commit_names_only_its_own_projects_database_secret() -> None:
    own = enforce(config(environments={"production": {"target": "kubernetes", "database_url_secret": "shop-db"}}),
                  default_policy("shop"), today=TODAY)
    assert own.environments["production"].database_url_secret == "shop-db"
    for env in ("production", "preview"):  # registered by the policy or not
        message = refused(config(environments={env: {"target": "kubernetes", "database_url_secret": "bank-db"}}),
                          default_policy("shop"), f"environments.{env}.database_url_secret")
        assert "'bank-db' is not a Secret block of project 'shop'" in message


def test_the_policy_may_pin_a_database_secret_of_another_name() -> None:
    policy = ProjectPolicy(project="shop", environments={
        "production": EnvPolicy(approval=True, backup=True, database_url_secret="rds-shop-production")})
    pinned = enforce(config(environments={"production": {"target": "kubernetes"}}), policy, today=TODAY)
    assert pinned.environments["production"].database_url_secret == "rds-shop-production"
    named = enforce(config(environments={"production": {"target": "kubernetes",
                                                          "database_url_secret": "rds-shop-production"}}),
                    policy, today=TODAY)
    assert named.environments["production"].database_url_secret == "rds-shop-production"
    message = refused(config(environments={"production": {"target": "kubernetes", "database_url_secret": "rds-bank"}}),
                      policy, "environments.production.database_url_secret")
    assert "rds-shop-production" in message
