"""deployments/pools.py: the work pools' base job templates, rendered the way their workers render them.

The Kubernetes Job a worker would submit is built by prefect-kubernetes itself
(`KubernetesWorkerJobConfiguration.from_template_and_values` then `prepare_for_flow_run`, what the worker calls
for every flow run) and then checked like the application's manifests: strict schema of the cluster's
Kubernetes version, the pod policy, the namespace's NetworkPolicies and ServiceAccounts.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

from deployments.pools import POOLS, base_job_template, kubernetes_job_template, main
from sunday_release.errors import InputError
from tests.infra_checks import K8S, policy_violations, rbac_allows, rbac_violations, render_kustomize, schema_violations

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sunday/sunday-release@sha256:" + "ab" * 32
CANARY = "admin:canary-5f0c1e9d"


def rendered_job(pool: str, job_variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Job manifest a Kubernetes worker of `pool` submits for a flow run, its own settings holding CANARY."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = kubernetes_job_template(pool, IMAGE)

    async def render() -> dict[str, Any]:
        # client: only used to resolve {{ prefect.blocks… }} references, which the template has none of
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(
            template, job_variables or {}, client=object())  # type: ignore[arg-type]
        config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-fox", flow_id=uuid.uuid4()))
        return config.job_manifest

    with temporary_settings({PREFECT_API_AUTH_STRING: CANARY}):
        return asyncio.run(render())


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _selected(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


@pytest.mark.parametrize("pool", POOLS)
def test_the_job_of_every_kubernetes_pool_passes_the_schema_and_the_pod_policy(pool: str) -> None:
    job = rendered_job(pool)
    assert schema_violations(job) == []
    assert policy_violations(job) == []
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["namespace"] == "prefect"
    assert pod["containers"][0]["image"] == IMAGE
    assert pod["containers"][0]["args"] == ["prefect", "flow-run", "execute"]


def test_a_job_that_breaks_the_policy_or_the_schema_is_caught() -> None:
    """The checks above can fail: one change to a rendered Job trips each."""
    job = rendered_job("sunday-ci")
    pod = job["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["automountServiceAccountToken"] = True
    problems = policy_violations(job)
    assert any("readOnlyRootFilesystem" in p for p in problems)
    assert any("automountServiceAccountToken" in p for p in problems)
    pod["completions"] = 1  # where prefect-kubernetes' own default template puts it: not a pod field
    assert any("completions" in p for p in schema_violations(job))


@pytest.mark.parametrize("pool", POOLS)
def test_the_api_auth_string_comes_from_its_secret_never_as_a_literal(pool: str) -> None:
    # a deployment's own env is merged in, and still cannot bring the worker's auth string back
    job = rendered_job(pool, {"env": {"EXTRA": "1"}})
    assert CANARY not in json.dumps(job)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    auth = [e for e in env if e["name"] == "PREFECT_API_AUTH_STRING"]
    assert auth == [{"name": "PREFECT_API_AUTH_STRING",
                     "valueFrom": {"secretKeyRef": {"name": "prefect-api-auth", "key": "auth-string"}}}]
    assert {"name": "EXTRA", "value": "1"} in env


@pytest.mark.parametrize("pool", POOLS)
def test_each_pool_runs_as_its_own_identity_and_only_cd_reaches_the_kubernetes_api(pool: str) -> None:
    job = rendered_job(pool)
    pod = job["spec"]["template"]["spec"]
    accounts = {a["metadata"]["name"]: a for a in _documents(K8S / "prefect" / "serviceaccount.yaml")}
    account = pod["serviceAccountName"]
    assert account in accounts
    tokens = [v for v in pod["volumes"] if any("serviceAccountToken" in s
                                               for s in v.get("projected", {}).get("sources", []))]
    assert pod["automountServiceAccountToken"] is False
    if pool == "sunday-deploy":
        assert account == "sunday-release"
        (token,) = tokens
        assert token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] <= 3600
        mount = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == token["name"]]
        assert mount == [{"name": token["name"], "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                          "readOnly": True}]
    else:
        assert account == "sunday-ci" and accounts[account]["automountServiceAccountToken"] is False
        assert tokens == []


def test_the_namespace_policies_let_a_flow_run_reach_the_api_and_nothing_else_in() -> None:
    job = rendered_job("sunday-ci")
    labels = job["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in _documents(K8S / "prefect" / "networkpolicies.yaml") if p["kind"] == "NetworkPolicy"]
    selecting = {p["metadata"]["name"] for p in policies if _selected(p, labels)}
    assert {"default-deny-all", "allow-dns-egress", "allow-flow-runs-to-prefect-api"} <= selecting
    assert not any("Ingress" in p["spec"]["policyTypes"] and p["spec"].get("ingress")
                   for p in policies if p["metadata"]["name"] in selecting)


def test_the_docker_pool_mounts_what_a_run_needs_at_the_hosts_paths() -> None:
    template = base_job_template("docker", "sunday-ci", IMAGE, sunday_home="/srv/sunday", trivy_cache="/srv/trivy",
                                 mounts=["/srv/app-repo"])
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    assert defaults["image"] == IMAGE and defaults["network_mode"] == "host"
    assert set(defaults["volumes"]) == {"/var/run/docker.sock:/var/run/docker.sock", "/srv/sunday:/srv/sunday",
                                        "/srv/trivy:/srv/trivy", "/srv/app-repo:/srv/app-repo:ro"}
    assert defaults["env"]["SUNDAY_HOME"] == "/srv/sunday" and defaults["env"]["SUNDAY_TRIVY_CACHE"] == "/srv/trivy"
    # every placeholder of the job configuration is a declared variable (what the server checks on create)
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name="sunday-ci", type="docker", base_job_template=template)


@pytest.mark.parametrize(("args", "message"), [
    (["kubernetes", "sunday-ci", "--image", "registry.example/sunday/sunday-release:1.2"], "not pinned by digest"),
    (["kubernetes", "sunday-ci", "--image", "Bad Image@sha256:00"], "not a valid image reference"),
    (["kubernetes", "sunday-ci"], "--image"),
    (["docker", "sunday-ci", "--image", IMAGE], "--sunday-home"),
    (["docker", "sunday-ci", "--image", IMAGE, "--sunday-home", "/srv/x", "--mount", "/a:/etc"], "'/a:/etc'"),
    (["docker", "sunday-ci", "--image", IMAGE, "--sunday-home", "relative"], "'relative'"),
    (["kubernetes", "sunday-nightly", "--image", IMAGE], "sunday-nightly"),
])
def test_a_bad_template_request_exits_2_naming_what_was_wrong(args: list[str], message: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and message in err and out == ""


def test_the_command_prints_a_template_prefect_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    main(["kubernetes", "sunday-deploy", "--image", IMAGE])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(kubernetes_job_template("sunday-deploy", IMAGE)))
    # the server validates a pool's template on create (its WorkPoolCreate): every placeholder is a declared variable
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name="sunday-deploy", type="kubernetes", base_job_template=printed)
    with pytest.raises(InputError):
        kubernetes_job_template("sunday-deploy", IMAGE.split("@")[0])


def _workers(tmp_path: Path) -> list[dict[str, Any]]:
    """infra/k8s/prefect/workers with the pipeline's image set by digest, as docs/production.md §5 does it."""
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [os.path.relpath(K8S / "prefect" / "workers", tmp_path)],
                     "images": [{"name": "sunday/sunday-release", "newName": IMAGE.split("@")[0],
                                 "digest": IMAGE.split("@")[1]}]}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return render_kustomize(tmp_path)


def test_a_worker_per_pool_runs_the_pinned_image_under_the_pod_policy(tmp_path: Path) -> None:
    objects = _workers(tmp_path)
    workers = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    assert set(workers) == {f"prefect-worker-{p.removeprefix('sunday-')}" for p in POOLS}
    for name, worker in workers.items():
        assert schema_violations(worker) == [] and policy_violations(worker) == []
        pod = worker["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        pool = "sunday-" + name.removeprefix("prefect-worker-")
        assert container["image"] == IMAGE
        assert container["args"][:5] == ["prefect", "worker", "start", "--pool", "$(SUNDAY_POOL)"]
        assert {"name": "SUNDAY_POOL", "value": pool} in container["env"]  # what $(SUNDAY_POOL) expands to
        assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "prefect-worker"  # the NetworkPolicies'
        assert pod["spec"]["serviceAccountName"] == "prefect-worker"


def test_the_worker_may_run_and_cancel_jobs_and_nothing_more(tmp_path: Path) -> None:
    objects = _workers(tmp_path)
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert all(schema_violations(o) == [] for o in objects)
    for verb in ("create", "get", "watch", "delete"):
        assert rbac_allows(role, "batch", "jobs", verb)
    assert rbac_allows(role, "", "pods/log", "get") and rbac_allows(role, "", "pods", "watch")
    for group, resource, verb in [("", "secrets", "get"), ("", "pods", "create"), ("", "pods/exec", "create"),
                                  ("batch", "jobs", "patch"), ("apps", "deployments", "create"),
                                  ("", "serviceaccounts", "create")]:
        assert not rbac_allows(role, group, resource, verb), (group, resource, verb)
    # the only exception to the pipeline's RBAC policy is the delete of Jobs (cancellation)
    assert rbac_violations(role) == ["Role/prefect-worker: rules[0].verbs grants delete"]


# ============================================================== a real cluster (opt-in)
_CLUSTER = {
    "KUBECONFIG": "a cluster where infra/k8s/prefect is applied (namespace prefect, its ServiceAccounts and policies)",
    "SUNDAY_PIPELINE_IMAGE": "the pipeline's image pinned by digest, pullable by the cluster",
    "SUNDAY_K8S_PREFECT_API_URL": "a Prefect API this machine and the cluster's pods both reach",
    "SUNDAY_K8S_PREFECT_AUTH_STRING": "its auth string, also in the Secret prefect/prefect-api-auth "
                                      "(the tests' conftest sets PREFECT_API_AUTH_STRING for their own server)",
    "SUNDAY_K8S_TEST_REPO": "a git URL of the sample app that the pods can clone",
}
_MISSING = "; ".join(f"{name} ({why})" for name, why in _CLUSTER.items() if not os.environ.get(name))


@pytest.mark.skipif(bool(_MISSING), reason=f"needs a real cluster: {_MISSING}")
def test_a_ci_flow_run_goes_through_the_kubernetes_pool_of_a_real_cluster(tmp_path: Path) -> None:
    """Opt-in (nothing here fakes it): a pool of kind kubernetes with sunday-ci's template, a worker on this machine,
    a CI flow run of the sample app: the worker submits a Job in namespace prefect under ServiceAccount sunday-ci,
    the run completes in the pipeline's image, and the pool and deployment are removed afterwards."""
    from kubernetes import client as kube
    from kubernetes import config as kube_config
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    from tests.deployed_ci import ProcessWorker, wait_for_flow_run

    api, auth = os.environ["SUNDAY_K8S_PREFECT_API_URL"], os.environ["SUNDAY_K8S_PREFECT_AUTH_STRING"]
    pool = f"sunday-ci-test-{uuid.uuid4().hex[:6]}"
    template = kubernetes_job_template("sunday-ci", os.environ["SUNDAY_PIPELINE_IMAGE"])
    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth}), \
            get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes", base_job_template=template))
        deployment = None
        try:
            flow_id = prefect.create_flow_from_name("ci")
            deployment = prefect.create_deployment(flow_id, pool, work_pool_name=pool, entrypoint="flows/ci.py:ci",
                                                   pull_steps=[{"deployments.steps.enter_release_dir": {}}])
            with ProcessWorker(pool, tmp_path, kind="kubernetes",
                               env={"PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": auth}) as worker:
                worker.wait_online()
                run = prefect.create_flow_run_from_deployment(
                    deployment, parameters={"repo": os.environ["SUNDAY_K8S_TEST_REPO"], "ref": "main"})
                done = wait_for_flow_run(run.id, worker, timeout=1800)
            assert done.state.is_completed(), f"{done.state!r}\n{worker.log_tail()}"
            kube_config.load_kube_config()
            jobs = kube.BatchV1Api().list_namespaced_job("prefect", label_selector=f"prefect.io/flow-run-id={run.id}")
            assert [j.spec.template.spec.service_account_name for j in jobs.items] == ["sunday-ci"]
        finally:
            if deployment is not None:
                prefect.delete_deployment(deployment)
            prefect.delete_work_pool(pool)
