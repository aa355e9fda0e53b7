"""A pull request's preview on the kubernetes target: its namespace from the platform's preview overlay, one pod per
service, its Ingress host from the policy, deleted on close.

Real: the Prefect server, the image registry, git, `kubectl kustomize` of infra/k8s/preview. FAKE: the Kubernetes
API server (tests/fake_kube.py: none can run here), reached through `substitute_cluster`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from sunday_release.policy import ProjectPolicy
from sunday_release.preview import PreviewPolicy
from sunday_release.targets.kubernetes import Timing, substitute_cluster
from tests.conftest import Registry
from tests.fake_kube import FakeKubernetesApi
from tests.test_cd_kubernetes import push_image


def test_a_kubernetes_preview_gets_its_own_namespace_and_loses_it_on_close(
        prefect_api: str, registry: Registry, tmp_path: Path, make_repo: Callable[..., Path],
        git: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.projects import remove_policy, save_policy
    from flows.preview import close_preview, preview
    from tasks.preview import read_preview

    monkeypatch.setenv("SUNDAY_HOME", str(tmp_path / "home"))
    project = f"k8p-{secrets.token_hex(3)}"
    source = tmp_path / "source"
    for service in ("backend", "frontend"):
        (source / service).mkdir(parents=True)
        (source / service / "Dockerfile").write_text("FROM scratch\n")
    (source / "sunday-release.yaml").write_text(
        f"project: {project}\nregistry: '{registry.address}'\nservices:\n"
        "  backend: {context: backend, port: 8000, route: /api, migrate: [python3, -m, sunday_api.migrate]}\n"
        "  frontend: {context: frontend, port: 8080, route: /}\n"
        # the commit asks for four replicas and a production cluster: its preview gets one pod each, in the
        # policy's cluster
        "environments:\n  staging: {target: kubernetes, kube_context: prod-cluster, replicas: {backend: 4}, "
        "watch_seconds: 0, drain_seconds: 0}\n")
    repo = make_repo(source)
    save_policy(ProjectPolicy(project=project, repo=str(repo), registry=registry.address, default_branch="main",
                              previews=PreviewPolicy(target="kubernetes", kube_context="previews", e2e=False,
                                                     host="pr-{number}.preview.example.com")))
    git(repo, "checkout", "-q", "-b", "topic")
    git(repo, "commit", "-q", "--allow-empty", "-m", "pull request 7")
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/pull/7/head", sha)
    images = {service: f"{registry.address}/{project}/{service}@"
                       f"{push_image(registry.address, f'{project}/{service}', f'pr-7-{sha}')}"
              for service in ("backend", "frontend")}

    cluster = FakeKubernetesApi(objects=[], namespace="sunday-pr-7")
    try:
        with substitute_cluster(cluster, Timing(poll_interval=2.0, sleep=cluster.sleep, clock=cluster.clock,
                                                job_timeout=60)):
            state = preview(repo=str(repo), ref="refs/pull/7/head", sha=sha, return_state=True)
            assert state.is_completed(), state.result(raise_on_failure=False)
            result = state.result()
            assert (result["env"], result["url"], result["color"]) == ("pr-7", "https://pr-7.preview.example.com",
                                                                      "blue")
            applied = cluster.applied
            assert applied[("Namespace", "sunday-pr-7")]["metadata"]["labels"]["sunday-release/preview"] == "7"
            assert ("StatefulSet", "postgres") in applied  # its own database, as staging's overlay has
            assert ("CronJob", "database-backup") not in applied  # no backups, nor staging's AWS identity
            assert ("ServiceAccount", "database-backup") not in applied
            ingress = applied[("Ingress", "sunday")]["spec"]
            assert [r["host"] for r in ingress["rules"]] == ["pr-7.preview.example.com"]
            state_labels = cluster.obj("ConfigMap", "sunday-release-state")["metadata"]["labels"]
            assert (state_labels["sunday-release/project"], state_labels["sunday-release/env"]) == (project, "pr-7")
            for service in ("backend", "frontend"):
                blue = cluster.obj("Deployment", f"{service}-blue")
                assert blue["spec"]["replicas"] == 1, service
                assert blue["spec"]["template"]["spec"]["containers"][0]["image"] == images[service]
            record = read_preview(project, 7)
            assert record is not None and (record.target, record.state, record.url) == (
                "kubernetes", "live", result["url"])

            closed = close_preview(repo=str(repo), ref="refs/pull/7/head", return_state=True)
            assert closed.is_completed(), closed.result(raise_on_failure=False)
            assert ("delete", "Namespace", "sunday-pr-7", None) in cluster.calls
            assert cluster.store == {} and read_preview(project, 7) is None
    finally:
        remove_policy(project)
