"""Preview environments' pure decisions (sunday_release/preview.py): the policy, the environment a preview gets,
its ports, the TTL and the cap, and which registry images a closed pull request takes with it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from sunday_release.config import parse_config
from sunday_release.errors import InputError
from sunday_release.policy import parse_policy
from sunday_release.preview import (
    PreviewPolicy,
    PreviewRecord,
    choose_ports,
    expired,
    images_to_delete,
    over_cap,
    preview_config,
    preview_env,
    preview_number,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SERVICES = {"web": {"context": "web", "port": 8000}, "api": {"context": "api", "port": 9000}}


def record(number: int, hours_ago: float, state: str = "live") -> PreviewRecord:
    at = NOW - timedelta(hours=hours_ago)
    return PreviewRecord.model_validate({"project": "shop", "number": number, "sha": SHA, "ports": [18500, 18501],
                                         "state": state, "created": at, "pushed": at})


def test_a_policy_without_previews_gets_the_defaults() -> None:
    policy = parse_policy({"project": "shop"}, "test").previews
    assert (policy.enabled, policy.max_active, policy.ttl_hours, policy.ports, policy.base) == (
        True, 5, 72, (18500, 18599), "staging")


@pytest.mark.parametrize(("previews", "problem"), [
    ({"ports": [80, 200]}, "unprivileged"),
    ({"ports": [19000, 18000]}, "first <= last"),
    ({"ports": [18500, 18505], "max_active": 5}, "holds 3 previews, fewer than max_active 5"),
    ({"max_active": 0}, "greater than or equal to 1"),
    ({"ttl_hours": 0}, "greater than 0"),
    ({"e2e_duration": "10 minutes"}, "should match pattern"),
    ({"target": "swarm"}, "'docker' or 'kubernetes'"),
    ({"host": "preview.example.com"}, "must contain {number}"),
    ({"surprise": 1}, "Extra inputs are not permitted"),
])
def test_a_bad_preview_policy_is_named(previews: dict[str, object], problem: str) -> None:
    with pytest.raises(InputError, match=r"policy\.yaml: previews") as caught:
        parse_policy({"project": "shop", "previews": previews}, "policy.yaml")
    assert problem in str(caught.value)


def test_a_preview_is_shaped_after_the_base_environment_with_the_policys_bounds() -> None:
    config = parse_config({"project": "shop", "services": SERVICES, "environments": {
        "staging": {"port": 8081, "health_timeout": 45, "watch_seconds": 3, "replicas": {"web": 4}, "backup": True},
        "production": {"port": 8082, "approval": True}}})
    out = preview_config(config, PreviewPolicy(), 12, (18510, 18511))
    assert list(out.environments) == ["pr-12"]  # a preview run cannot reach staging or production
    env = out.environments["pr-12"]
    assert (env.port, env.db_port, env.health_timeout, env.watch_seconds) == (18510, 18511, 45, 3)
    assert (env.approval, env.backup, env.replicas, env.target) == (False, False, {"web": 1, "api": 1}, "docker")


def test_a_commit_without_the_base_environment_gets_the_defaults() -> None:
    config = parse_config({"project": "shop", "services": SERVICES, "environments": {}})
    env = preview_config(config, PreviewPolicy(), 3, (18500, 18501)).environments["pr-3"]
    assert (env.port, env.health_timeout, env.approval) == (18500, 120, False)


def test_the_commit_cannot_point_its_preview_at_a_cluster_or_another_database() -> None:
    config = parse_config({"project": "shop", "services": SERVICES, "environments": {"staging": {
        "target": "kubernetes", "kube_context": "prod-cluster", "database_url_secret": "shop-prod-db"}}})
    env = preview_config(config, PreviewPolicy(), 3, (18500, 18501)).environments["pr-3"]
    assert (env.target, env.kube_context, env.database_url_secret) == ("docker", None, None)


def test_names_of_preview_environments() -> None:
    assert preview_env(7) == "pr-7" and preview_number("pr-7") == 7
    assert [preview_number(e) for e in ("staging", "pr-0", "pr-07", "pr-", "pr-1x", "xpr-1")] == [None] * 6
    with pytest.raises(InputError, match="pull request number: 0"):
        preview_env(0)


def test_ports_come_in_pairs_from_the_range_skipping_taken_ones() -> None:
    policy = PreviewPolicy(ports=(18500, 18509), max_active=5)
    assert choose_ports(policy, set()) == (18500, 18501)
    assert choose_ports(policy, {18500}) == (18502, 18503)
    assert choose_ports(policy, {18501, 18502}) == (18504, 18505)
    with pytest.raises(InputError, match=r"previews\.ports: every port of \[18500, 18509\] is taken"):
        choose_ports(policy, set(range(18500, 18510)))


def test_the_ttl_counts_from_the_last_push() -> None:
    records = [record(1, 80), record(2, 71), record(3, 100, state="stopped"), record(4, 73)]
    assert [r.number for r in expired(records, 72, NOW)] == [1, 4]  # oldest first; a stopped one stays stopped


def test_the_cap_stops_the_least_recently_pushed_first() -> None:
    records = [record(n, hours) for n, hours in ((1, 5), (2, 50), (3, 1), (4, 20), (5, 2))]
    assert [r.number for r in over_cap(records, 5, incoming=6)] == [2]
    assert over_cap(records, 5, incoming=3) == []  # a redeploy of a running preview takes no second place
    assert [r.number for r in over_cap(records, 3, incoming=6)] == [2, 4, 1]
    assert over_cap([*records[:4], record(5, 2, state="stopped")], 5, incoming=6) == []


def test_a_record_checks_what_it_holds() -> None:
    with pytest.raises(ValidationError):
        PreviewRecord.model_validate({"project": "shop", "number": 1, "sha": "HEAD", "created": NOW, "pushed": NOW})


def test_a_closed_pull_request_takes_only_the_images_nothing_else_refers_to() -> None:
    tags = {f"pr-7-{SHA}": "sha256:a", "ck-1": "sha256:a",  # only pr-7's (and its build cache): deleted
            f"pr-7-{'1' * 40}": "sha256:b", f"sha-{'1' * 40}": "sha256:b",  # the same image was released: kept
            f"pr-7-{'2' * 40}": "sha256:c", f"pr-8-{'2' * 40}": "sha256:c",  # pr-8 runs it too: kept
            f"pr-70-{'3' * 40}": "sha256:d",  # another pull request whose number starts the same: kept
            "ck-2": "sha256:e", "v1.2.3": "sha256:f"}
    assert images_to_delete(tags, 7) == {"sha256:a"}


def test_cd_refuses_a_preview_environment() -> None:
    """Only the preview flow deploys pr-N (with the pull request's own images): `cd --env pr-7` is bad input."""
    from flows.cd import cd

    with pytest.raises(InputError, match="--env: 'pr-7' is a pull request's preview"):
        cd.fn(env="pr-7", version=SHA, repo="https://git.example.com/acme/shop.git")


def test_a_kubernetes_preview_is_the_preview_overlay_moved_to_its_own_namespace_and_host() -> None:
    from sunday_release.errors import PipelineError
    from sunday_release.targets.kube_preview import preview_manifests
    from tests.infra_checks import K8S, render_kustomize

    rendered = render_kustomize(K8S / "preview")
    objects = preview_manifests(rendered, "shop", 12, "pr-12.preview.example.com")
    assert (objects[0]["kind"], objects[0]["metadata"]["name"]) == ("Namespace", "sunday-pr-12")
    assert objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"]["namespace"] for o in objects[1:]} == {"sunday-pr-12"}
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("StatefulSet", "postgres"), ("Deployment", "backend-blue"), ("Ingress", "sunday")} <= kinds
    assert not {k for k in kinds if "database-backup" in k[1]}  # no backups, no AWS identity of staging's
    ingress = next(o for o in objects if o["kind"] == "Ingress")
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["pr-12.preview.example.com"]
    assert ingress["spec"]["tls"][0]["hosts"] == ["pr-12.preview.example.com"]
    blue = {o["metadata"]["name"]: o["spec"].get("replicas") for o in objects if o["kind"] == "Deployment"}
    assert blue == {"backend-blue": 1, "frontend-blue": 1, "backend-green": 0, "frontend-green": 0}
    assert {o["spec"]["maxReplicas"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"} == {1}
    state = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "sunday-release-state")
    assert state["metadata"]["labels"]["sunday-release/env"] == "pr-12"
    assert state["metadata"]["labels"]["sunday-release/project"] == "shop"
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "prefect"  # the pipeline's own, untouched

    stray = [*rendered, {"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "x", "namespace": "kube-system"}}]
    with pytest.raises(PipelineError, match="into namespace 'kube-system'"):
        preview_manifests(stray, "shop", 12, "pr-12.preview.example.com")


def test_the_kubernetes_target_creates_and_deletes_only_a_previews_namespace(tmp_path: Path) -> None:
    from sunday_release.errors import PipelineError
    from sunday_release.targets.kubernetes import KubernetesTarget
    from tests.fake_kube import FakeKubernetesApi

    config = parse_config({"project": "shop", "services": SERVICES, "environments": {
        "staging": {"target": "kubernetes"}, "pr-3": {"target": "kubernetes"}}})
    staging = KubernetesTarget(config, "staging", config.environments["staging"], tmp_path,
                               api=FakeKubernetesApi(objects=[], namespace="sunday-staging"))
    with pytest.raises(PipelineError, match=r"destroy: shop/staging .* is not a pull request's preview"):
        staging.destroy()
    cluster = FakeKubernetesApi(objects=[], namespace="sunday-pr-3")
    preview = KubernetesTarget(config, "pr-3", config.environments["pr-3"], tmp_path, api=cluster)
    elsewhere = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "sunday-staging"}}
    with pytest.raises(PipelineError, match="refusing to apply ConfigMap/x into 'sunday-staging'"):
        preview.provision([elsewhere])
    assert cluster.applied == {}
