"""infra/k8s: every overlay renders, validates strictly, follows the pod/RBAC policy and passes trivy config."""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from sunday_release.targets.kube_decisions import (
    CONFIG_KEY,
    ENV_LABEL,
    PROJECT_LABEL,
    STATE_CONFIGMAP,
    STATE_KEY,
    migration_job,
    start_patch,
    state_patch,
)
from tests.infra_checks import (
    K8S,
    K8S_VERSION,
    TERRAFORM,
    TRIVYIGNORE,
    Manifest,
    admission_request,
    admission_violations,
    find,
    live_color,
    parse_tf,
    policy_violations,
    rbac_allows,
    rbac_violations,
    render_kustomize,
    schema_violations,
    trivy_config,
    trivyignore_violations,
    write_manifests,
)

OVERLAYS = ("staging", "production", "monitoring", "prefect", "preview")
NAMESPACES = {
    "preview": "sunday-preview",  # the placeholder each pull request's copy leaves for sunday-pr-N (kube_preview.py)
    "staging": "sunday-staging",
    "production": "sunday-production",
    "monitoring": "monitoring",
    "prefect": "prefect",
}
APP_OVERLAYS = ("staging", "production")
SERVICES = ("backend", "frontend")
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                            "ValidatingAdmissionPolicyBinding"})


@functools.cache
def _rendered(overlay: str) -> tuple[Manifest, ...]:
    return tuple(render_kustomize(K8S / overlay))


def rendered(overlay: str) -> list[Manifest]:
    """A private copy of an overlay's rendered objects (rendered once per test session)."""
    return copy.deepcopy(list(_rendered(overlay)))


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def _deployment() -> Manifest:
    """A compliant backend Deployment taken from the production render, to break in negative tests."""
    return find(rendered("production"), "Deployment", "backend-blue")


# --- every overlay ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_its_namespace(overlay: str) -> None:
    objects = rendered(overlay)
    assert objects, f"{overlay} rendered nothing"
    for obj in objects:
        if obj["kind"] in CLUSTER_SCOPED:
            continue
        assert obj["metadata"].get("namespace") == NAMESPACES[overlay], f"{obj['kind']}/{obj['metadata']['name']}"
    namespace = find(objects, "Namespace", NAMESPACES[overlay])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str) -> None:
    problems = [msg for obj in rendered(overlay) for msg in schema_violations(obj, K8S_VERSION)]
    assert problems == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_follows_the_pod_policy(overlay: str) -> None:
    objects = rendered(overlay)
    problems = [msg for obj in objects for msg in policy_violations(obj)]
    assert problems == []
    if overlay in APP_OVERLAYS:  # the policy really looked at the workloads
        workloads = {f"{o['kind']}/{o['metadata']['name']}" for o in objects if o["kind"] in ("Deployment", "CronJob")}
        assert {"Deployment/backend-blue", "Deployment/frontend-green", "CronJob/database-backup"} <= workloads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_least_privilege(overlay: str) -> None:
    objects = rendered(overlay)
    assert [msg for obj in objects for msg in rbac_violations(obj)] == []
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trivy_config_finds_no_high_or_critical(overlay: str, tmp_path: Path, trivy: Path) -> None:
    directory = write_manifests(rendered(overlay), tmp_path / overlay)
    assert trivy_config(trivy, directory) == []


def test_trivyignore_entries_are_commented() -> None:
    assert trivyignore_violations(TRIVYIGNORE) == []


# --- blue-green wiring (staging and production) -------------------------------------------------


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_live_service_selects_a_color_and_preview_services_each_color(overlay: str) -> None:
    objects = rendered(overlay)
    for service in SERVICES:
        color = live_color(objects, service)
        assert color in ("blue", "green")
        for each in ("blue", "green"):
            deployment = find(objects, "Deployment", f"{service}-{each}")
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert labels["app"] == service and labels["color"] == each
            assert deployment["spec"]["selector"]["matchLabels"] == {"app": service, "color": each}
            preview = find(objects, "Service", f"{service}-{each}")
            assert preview["spec"]["selector"] == {"app": service, "color": each}
        live = find(objects, "Service", service)
        assert live["spec"]["selector"] == {"app": service, "color": color}
        hpa = find(objects, "HorizontalPodAutoscaler", service)
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"{service}-{color}"


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_ingress_routes_hosts_and_same_origin_api(overlay: str) -> None:
    ingress = find(rendered(overlay), "Ingress", "sunday")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    prefix = "" if overlay == "production" else "staging."
    routes = {
        (rule["host"], path["path"]): path["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert routes == {
        (f"{prefix}sunday.com", "/"): "frontend",
        (f"{prefix}sunday.com", "/api"): "backend",
        (f"api.{prefix}sunday.com", "/"): "backend",
    }


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_default_deny_and_allow_policies(overlay: str) -> None:
    policies = {p["metadata"]["name"]: p for p in of_kind(rendered(overlay), "NetworkPolicy")}
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny
    assert {"allow-dns-egress", "allow-ingress-nginx-to-frontend", "allow-ingress-nginx-to-backend",
            "allow-prometheus-scrape", "allow-backend-to-datastores", "allow-release-smoke-tests"} <= policies.keys()
    ports = {p["port"] for rule in policies["allow-backend-to-datastores"]["spec"]["egress"] for p in rule["ports"]}
    assert ports == {5432, 6379}
    smoke = policies["allow-release-smoke-tests"]["spec"]["ingress"]
    assert smoke == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prefect"}},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "flow-run"}}}],
                      "ports": [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8080}]}]


def _peers(policy: Manifest, direction: str) -> list[tuple[dict[str, Any], set[int]]]:
    """(peer, ports) of every from/to entry of a NetworkPolicy's ingress or egress rules."""
    key = "from" if direction == "ingress" else "to"
    return [(peer, {p["port"] for p in rule.get("ports", [])})
            for rule in policy["spec"].get(direction, []) for peer in rule[key]]


def test_prefect_namespace_default_deny_and_allow_policies() -> None:
    policies = {p["metadata"]["name"]: p for p in of_kind(rendered("prefect"), "NetworkPolicy")}
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny
    dns = policies["allow-dns-egress"]["spec"]
    assert dns["podSelector"] == {} and {p["port"] for p in dns["egress"][0]["ports"]} == {53}

    server = {"app.kubernetes.io/name": "prefect-server"}
    worker = {"app.kubernetes.io/name": "prefect-worker"}
    flow_run = {"app.kubernetes.io/component": "flow-run"}
    api = policies["allow-prefect-api-ingress"]
    assert api["spec"]["podSelector"]["matchLabels"] == server and api["spec"]["policyTypes"] == ["Ingress"]
    sources = _peers(api, "ingress")
    assert all(ports == {4200} for _, ports in sources)
    assert {"podSelector": {"matchLabels": worker}} in [peer for peer, _ in sources]
    assert {"podSelector": {"matchLabels": flow_run}} in [peer for peer, _ in sources]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}} in [p for p, _ in sources]
    # Only the API port is open to anyone, and only the server takes ingress.
    ingress = [p for p in policies.values() if "Ingress" in p["spec"]["policyTypes"] and p["spec"].get("ingress")]
    assert [p["metadata"]["name"] for p in ingress] == ["allow-prefect-api-ingress"]

    def egress_of(labels: dict[str, str]) -> set[int]:
        return {port for p in policies.values() if p["spec"]["podSelector"].get("matchLabels") == labels
                for _, ports in _peers(p, "egress") for port in ports}

    # workers: the API, and HTTPS (Kubernetes API, ECR, S3) but not the instance metadata service
    assert egress_of(worker) == {4200, 443}
    # flow runs: the same, plus the preview Services' smoke tests and pg_dump for backups
    assert egress_of(flow_run) == {4200, 443, 8000, 8080, 5432}
    assert egress_of(server) == {5432, 6379}  # PostgreSQL; Redis, which the replicas share (prefect-redis)
    for policy in policies.values():
        for peer, ports in _peers(policy, "egress"):
            if "ipBlock" in peer and ports == {443}:
                assert peer["ipBlock"] == {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}
            elif "ipBlock" in peer:
                assert not ipaddress.IPv4Network(peer["ipBlock"]["cidr"]).is_global, policy["metadata"]["name"]


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_app_pods_do_not_mount_api_tokens_and_have_probes(overlay: str) -> None:
    for obj in of_kind(rendered(overlay), "Deployment"):
        pod = obj["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        main = pod["containers"][0]
        assert {"startupProbe", "livenessProbe", "readinessProbe"} <= main.keys()
        assert any(m["mountPath"] == "/tmp" for m in main["volumeMounts"])
    backend = find(rendered(overlay), "Deployment", "backend-blue")["spec"]["template"]["spec"]
    assert backend["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert backend["initContainers"][0]["command"] == ["python3", "-m", "sunday_api.migrate"]


DEPLOYMENTS = ("backend-blue", "backend-green", "frontend-blue", "frontend-green")


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_pipeline_role_grants_exactly_the_blue_green_operations(overlay: str) -> None:
    objects = rendered(overlay)
    role = find(objects, "Role", "sunday-release")
    grants = {
        (group, resource, verb, tuple(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    live, preview = ("backend", "frontend"), tuple(DEPLOYMENTS)
    assert grants == {
        # the color Deployments: read, and patch (images, replicas) by name; never create/update/delete
        *{("apps", "deployments", verb, ()) for verb in ("get", "list", "watch")},
        ("apps", "deployments", "patch", DEPLOYMENTS),
        # the traffic switch: read the live and preview Services, patch the live ones' selector
        ("", "services", "get", (*live, *preview)),
        ("", "services", "patch", live),
        ("autoscaling", "horizontalpodautoscalers", "get", live),
        ("autoscaling", "horizontalpodautoscalers", "patch", live),
        # rollout health and the migration Job (it deletes itself: ttlSecondsAfterFinished)
        ("", "pods", "list", ()), ("", "events", "list", ()),
        ("batch", "jobs", "create", ()), ("batch", "jobs", "get", ()),
        ("", "pods/log", "get", ()),
        # the release history: its one ConfigMap, read and merge-patched; the overlay creates it
        ("", "configmaps", "get", ("sunday-release-state",)), ("", "configmaps", "patch", ("sunday-release-state",)),
    }
    for verb in ("create", "list", "watch", "delete", "update"):
        assert not rbac_allows(role, "", "configmaps", verb, "sunday-release-state"), verb
    assert not rbac_allows(role, "", "configmaps", "get", "database-backup")
    assert not rbac_allows(role, "apps", "deployments", "create", "backend-blue")
    assert not rbac_allows(role, "apps", "deployments", "patch", "postgres")
    assert not rbac_allows(role, "", "services", "patch", "backend-blue")  # previews are not switches
    for resource in ("secrets", "serviceaccounts", "configmaps", "pods/exec"):
        for verb in ("get", "list", "create", "patch"):
            assert not rbac_allows(role, "", resource, verb, "backend-database"), (resource, verb)
    binding = find(objects, "RoleBinding", "sunday-release")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sunday-release"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sunday-release", "namespace": "prefect"}]
    accounts = {sa["metadata"]["name"]: sa for sa in of_kind(rendered("prefect"), "ServiceAccount")}
    assert accounts.keys() == {"sunday-release", "sunday-ci"}
    assert accounts["sunday-ci"]["automountServiceAccountToken"] is False  # CI never talks to Kubernetes
    assert not [b for b in of_kind(objects, "RoleBinding")
                if any(s["name"] == "sunday-ci" for s in b.get("subjects") or [])]


def test_pipeline_can_replace_the_placeholder_images(tmp_path: Path) -> None:
    """The pipeline's kustomization on top of an overlay sets every app image by digest."""
    digest = "sha256:" + "a" * 64
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "production", tmp_path)],  # kustomize refuses absolute paths
        "images": [
            {"name": f"sunday/{name}", "newName": f"registry.example.com/sunday/{name}", "digest": digest}
            for name in ("backend", "frontend", "db-backup")
        ],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    images = set()
    for obj in render_kustomize(tmp_path):
        pod = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else None
        if obj["kind"] == "CronJob":
            pod = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for container in (pod or {}).get("initContainers", []) + (pod or {}).get("containers", []):
            images.add(container["image"])
    assert images == {f"registry.example.com/sunday/{n}@{digest}" for n in ("backend", "frontend", "db-backup")}
    placeholders = {c["image"] for obj in rendered("production") if obj["kind"] == "Deployment"
                    for c in obj["spec"]["template"]["spec"]["containers"]}
    assert placeholders == {"sunday/backend:placeholder", "sunday/frontend:placeholder"}


# --- production ---------------------------------------------------------------------------------


def test_production_replicas_autoscaling_and_disruption_budgets() -> None:
    objects = rendered("production")
    expected = {"backend": 5, "frontend": 3}
    for service, replicas in expected.items():
        color = live_color(objects, service)
        idle = "green" if color == "blue" else "blue"
        assert find(objects, "Deployment", f"{service}-{color}")["spec"]["replicas"] == replicas
        assert find(objects, "Deployment", f"{service}-{idle}")["spec"]["replicas"] == 0
        hpa = find(objects, "HorizontalPodAutoscaler", service)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["minReplicas"] == replicas and hpa["spec"]["maxReplicas"] > replicas
        pdb = find(objects, "PodDisruptionBudget", service)["spec"]
        assert "maxUnavailable" not in pdb and 0 < pdb["minAvailable"] < replicas
    assert len(of_kind(objects, "HorizontalPodAutoscaler")) == len(SERVICES)


def test_production_spreads_pods_and_runs_no_database() -> None:
    objects = rendered("production")
    assert of_kind(objects, "StatefulSet") == []
    assert of_kind(objects, "PersistentVolumeClaim") == []
    for obj in of_kind(objects, "Deployment"):
        pod = obj["spec"]["template"]["spec"]
        zone = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zone and zone[0]["whenUnsatisfiable"] == "DoNotSchedule"
        assert pod["affinity"]["podAntiAffinity"]


def test_production_limits_are_higher_than_staging() -> None:
    def limits(overlay: str, name: str) -> dict[str, Any]:
        container = find(rendered(overlay), "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        return dict(container["resources"]["limits"])

    assert limits("production", "backend-blue") == {"cpu": "1", "memory": "512Mi"}
    assert limits("staging", "backend-blue") == {"cpu": "250m", "memory": "192Mi"}
    assert limits("production", "frontend-blue") == {"cpu": "500m", "memory": "256Mi"}
    assert limits("staging", "frontend-blue") == {"cpu": "100m", "memory": "64Mi"}


def test_production_datastore_egress_covers_the_terraform_database_subnets() -> None:
    """The NetworkPolicy ipBlock and infra/terraform (vpc_cidr, database subnets x.y.20-22.0/24) agree."""
    tfvars = parse_tf(TERRAFORM / "environments" / "production" / "terraform.tfvars")
    vpc = ipaddress.IPv4Network(str(tfvars["vpc_cidr"]).strip('"'))
    database_subnets = [list(vpc.subnets(new_prefix=24))[20 + i] for i in range(len(tfvars["azs"]))]
    policy = find(rendered("production"), "NetworkPolicy", "allow-backend-to-datastores")
    blocks = [ipaddress.IPv4Network(peer["ipBlock"]["cidr"])
              for rule in policy["spec"]["egress"] for peer in rule["to"]]
    assert blocks and all(not block.is_global for block in blocks)
    for subnet in database_subnets:
        assert any(subnet.subnet_of(block) for block in blocks), subnet


def test_backup_cronjob_is_configured_per_environment() -> None:
    for overlay, bucket in (("staging", "sunday-staging-db-backups"), ("production", "sunday-production-db-backups")):
        objects = rendered(overlay)
        cron = find(objects, "CronJob", "database-backup")
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        config_name = container["envFrom"][0]["configMapRef"]["name"]
        config = find(objects, "ConfigMap", config_name)
        assert config["data"]["BACKUP_BUCKET"] == bucket
        assert "pg_dump" in container["args"][0] and "aws s3 cp" in container["args"][0]
        account = find(objects, "ServiceAccount", "database-backup")
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(
            f"role/sunday-{overlay}-database-backup")
    assert (find(rendered("staging"), "CronJob", "database-backup")["spec"]["schedule"]
            != find(rendered("production"), "CronJob", "database-backup")["spec"]["schedule"])


# --- staging ------------------------------------------------------------------------------------


def test_staging_replicas_datastores_and_basic_auth() -> None:
    objects = rendered("staging")
    assert find(objects, "Deployment", f"backend-{live_color(objects, 'backend')}")["spec"]["replicas"] == 2
    assert find(objects, "Deployment", f"frontend-{live_color(objects, 'frontend')}")["spec"]["replicas"] == 1
    statefulsets = {s["metadata"]["name"]: s for s in of_kind(objects, "StatefulSet")}
    assert statefulsets.keys() == {"postgres", "redis"}
    for name, sts in statefulsets.items():
        assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        assert find(objects, "Service", name)["spec"]["clusterIP"] == "None"
    annotations = find(objects, "Ingress", "sunday")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-type"] == "basic"
    assert annotations["nginx.ingress.kubernetes.io/auth-secret"] == "basic-auth"
    policies = {p["metadata"]["name"] for p in of_kind(objects, "NetworkPolicy")}
    assert {"allow-postgres-ingress", "allow-redis-ingress"} <= policies


# --- monitoring ---------------------------------------------------------------------------------


def test_monitoring_config_alert_rules_and_dashboard() -> None:
    objects = rendered("monitoring")
    prometheus = yaml.safe_load(find(objects, "ConfigMap", "prometheus-config")["data"]["prometheus.yml"])
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert {"ingress-nginx", "kube-state-metrics", "sunday-services"} <= jobs
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]

    rules = yaml.safe_load(find(objects, "ConfigMap", "prometheus-rules")["data"]["sunday.rules.yml"])
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {"SundayHighErrorRate", "SundayHighLatencyP95", "SundayPodRestarting", "SundayDeploymentFailed"} <= (
        alerts.keys())
    for name, rule in alerts.items():
        assert rule["expr"].strip() and rule["for"], name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
    assert "histogram_quantile(0.95" in alerts["SundayHighLatencyP95"]["expr"]
    assert "kube_pod_container_status_restarts_total" in alerts["SundayPodRestarting"]["expr"]

    dashboard_map = find(objects, "ConfigMap", "grafana-dashboard-sunday")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["sunday.json"])
    assert dashboard["uid"] == "sunday-overview"
    assert all(panel["targets"][0]["expr"] for panel in dashboard["panels"])
    assert len(dashboard["panels"]) >= 4


# --- the checks catch broken manifests ----------------------------------------------------------


def test_missing_limits_are_reported_with_object_and_field() -> None:
    deployment = _deployment()
    del deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert policy_violations(deployment) == [
        "Deployment/backend-blue: spec.template.spec.containers[0].resources.limits missing"
    ]


def test_wrong_field_name_is_caught_by_strict_schema_validation() -> None:
    deployment = _deployment()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")  # a typo the API server would silently drop
    problems = schema_violations(deployment)
    assert len(problems) == 1
    assert problems[0].startswith("Deployment/backend-blue: spec.template.spec.containers[0]: ")
    assert "'resource'" in problems[0]


def test_wrong_type_is_caught_by_schema_validation() -> None:
    deployment = _deployment()
    deployment["spec"]["replicas"] = "five"
    problems = schema_violations(deployment)
    assert len(problems) == 1 and problems[0].startswith("Deployment/backend-blue: spec.replicas: ")


def test_privileged_container_is_reported() -> None:
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["initContainers"][0]["securityContext"]["privileged"] = True
    assert policy_violations(deployment) == [
        "Deployment/backend-blue: spec.template.spec.initContainers[0].securityContext.privileged must not be true"
    ]


def test_host_access_and_root_are_reported() -> None:
    cron = find(rendered("production"), "CronJob", "database-backup")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}})
    container = pod["containers"][0]
    container["securityContext"].update(runAsUser=0, readOnlyRootFilesystem=False, allowPrivilegeEscalation=True)
    container["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    del container["resources"]["requests"]["memory"]
    base = "CronJob/database-backup: spec.jobTemplate.spec.template.spec"
    assert policy_violations(cron) == [
        f"{base}.hostNetwork must not be true",
        f"{base}.volumes[1].hostPath is not allowed",
        f"{base}.containers[0].resources.requests.memory missing",
        f"{base}.containers[0].securityContext.runAsUser must not be 0",
        f"{base}.containers[0].securityContext.readOnlyRootFilesystem must be true",
        f"{base}.containers[0].securityContext.allowPrivilegeEscalation must be false",
        f"{base}.containers[0].securityContext.capabilities.drop must contain ALL",
        f"{base}.containers[0].securityContext.capabilities.add must be empty",
    ]


def test_missing_probe_and_seccomp_are_reported() -> None:
    statefulset = find(rendered("staging"), "StatefulSet", "postgres")
    pod = statefulset["spec"]["template"]["spec"]
    del pod["containers"][0]["readinessProbe"]
    del pod["securityContext"]["seccompProfile"]
    del pod["containers"][0]["securityContext"]["seccompProfile"]
    assert policy_violations(statefulset) == [
        "StatefulSet/postgres: spec.template.spec.securityContext.seccompProfile.type must be RuntimeDefault",
        "StatefulSet/postgres: spec.template.spec.containers[0].securityContext.seccompProfile.type must be "
        "RuntimeDefault",
        "StatefulSet/postgres: spec.template.spec.containers[0].readinessProbe missing",
    ]


def test_wide_rbac_is_reported() -> None:
    role = find(rendered("production"), "Role", "sunday-release")
    role["rules"].append({"apiGroups": ["*"], "resources": ["secrets"], "verbs": ["get", "delete"]})
    role["rules"].append({"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["patch"]})
    index = len(role["rules"]) - 2
    assert rbac_violations(role) == [
        f"Role/sunday-release: rules[{index}].apiGroups contains the wildcard '*'",
        f"Role/sunday-release: rules[{index}].resources grants access to secrets",
        f"Role/sunday-release: rules[{index}].verbs grants delete",
        f"Role/sunday-release: rules[{index + 1}].resourceNames missing: writes ['ingresses'] without naming them",
    ]
    cluster_role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "sunday-release"}, "rules": []}
    assert rbac_violations(cluster_role) == ["ClusterRole/sunday-release: kind is cluster-wide"]


def test_trivy_reports_a_privileged_container(tmp_path: Path, trivy: Path) -> None:
    deployment = _deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    findings = trivy_config(trivy, write_manifests([deployment], tmp_path))
    assert any("KSV-0017" in finding and "deployment-backend-blue.yaml" in finding for finding in findings), findings


# --- the admission policies guarding the pipeline's identity (infra/k8s/prefect/admission.yaml) -------
# No API server can run here: tests.infra_checks.admission_violations evaluates the policies' CEL
# (matchConstraints, matchConditions, variables, validations) with cel-python, as the API server would.

RELEASE_REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
IMAGE = f"{RELEASE_REGISTRY}/sunday/backend@sha256:{'c' * 64}"
WORKLOADS = "sunday-release-workloads"
TRAFFIC = "sunday-release-traffic"
STATE = "sunday-release-state"
MSG_APP = "sunday-release may only run pods of the apps backend and frontend (label app)"
MSG_IMAGE = "images must come from the release registry (REGISTRY/sunday/NAME@sha256:DIGEST)"
MSG_ACCOUNT = "pods must run as their app's own ServiceAccount (serviceAccountName == label app)"
MSG_TOKEN = "pods must not mount a ServiceAccount token (automountServiceAccountToken: false)"
MSG_SECRET_VOLUME = "volumes may mount only the app's own Secrets and no ServiceAccount token"
MSG_SECRET_ENV = "containers may read only the app's own Secrets"
MSG_VOLUME_TYPE = "volumes may only be emptyDir, configMap, secret or projected (no hostPath, PVC, …)"
MSG_HOST = "pods may not use the host's network, PID or IPC namespace or hostPath volumes"
MSG_PRIVILEGED = "containers may not be privileged or add capabilities"
MSG_SELECTOR = "the pipeline may only change a Service's selector color (blue or green)"
MSG_HPA = "the pipeline may only point an HPA at the blue or green Deployment of its service"


def _policy(name: str) -> Manifest:
    return find(rendered("prefect"), "ValidatingAdmissionPolicy", name)


def _patched(name: str = "backend-green", image: str = IMAGE) -> tuple[Manifest, Manifest]:
    """(old, new) Deployment of a release: the target's own start_patch applied to the production object."""
    from tests.fake_kube import strategic_merge

    old = find(rendered("production"), "Deployment", name)
    new = copy.deepcopy(old)
    strategic_merge(new, start_patch(old, name.split("-")[0], image, "v1.2.0", 5))
    return old, new


def _denied(new: Manifest, old: Manifest | None = None, operation: str = "UPDATE") -> list[str]:
    return admission_violations(_policy(WORKLOADS), admission_request(operation, new, old))


def test_admission_policies_bind_to_the_pipeline_identity_and_deny() -> None:
    objects = rendered("prefect")
    for name in (WORKLOADS, TRAFFIC, STATE):
        policy = find(objects, "ValidatingAdmissionPolicy", name)
        assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert policy["spec"]["matchConditions"] == [{
            "name": "the-release-pipeline",
            "expression": "request.userInfo.username == 'system:serviceaccount:prefect:sunday-release'"}]
        binding = find(objects, "ValidatingAdmissionPolicyBinding", name)
        assert binding["spec"]["policyName"] == name and "Deny" in binding["spec"]["validationActions"]
        assert "namespace" not in policy["metadata"] and "namespace" not in binding["metadata"]
    resources = {(rule["apiGroups"][0], rule["resources"][0], tuple(rule["operations"]))
                 for rule in _policy(WORKLOADS)["spec"]["matchConstraints"]["resourceRules"]}
    assert resources == {("apps", "deployments", ("CREATE", "UPDATE")), ("batch", "jobs", ("CREATE", "UPDATE"))}
    # the allowed registry is the Terraform ECR registry (account of the overlays' IRSA roles, the region)
    tfvars = parse_tf(TERRAFORM / "environments" / "production" / "terraform.tfvars")
    assert RELEASE_REGISTRY.endswith(f".dkr.ecr.{str(tfvars['region']).strip(chr(34))}.amazonaws.com")
    account = find(rendered("production"), "ServiceAccount", "database-backup")["metadata"]["annotations"]
    assert f"::{RELEASE_REGISTRY.split('.')[0]}:" in account["eks.amazonaws.com/role-arn"]
    variables = {v["name"]: v["expression"] for v in _policy(WORKLOADS)["spec"]["variables"]}
    assert variables["allowedRegistries"] == f"['{RELEASE_REGISTRY}']"


def test_a_release_patch_and_the_migration_job_are_admitted() -> None:
    old, new = _patched()
    assert _denied(new, old) == []
    old, new = _patched("frontend-blue", f"{RELEASE_REGISTRY}/sunday/frontend@sha256:{'d' * 64}")
    assert _denied(new, old) == []
    job = migration_job(find(rendered("production"), "Deployment", "backend-blue"), "backend", IMAGE,
                        ["python3", "-m", "migrate"], "v1.2.0", "backend-migrate-v1-2-0-x1y2z3")
    assert _denied(job, None, "CREATE") == []


def test_other_users_and_resources_are_not_judged() -> None:
    old, new = _patched(image="docker.io/evil/miner:latest")
    policy = _policy(WORKLOADS)
    assert admission_violations(policy, admission_request("UPDATE", new, old, user="kubernetes-admin")) == []
    assert admission_violations(policy, admission_request("UPDATE", new, old)) == [MSG_IMAGE]


@pytest.mark.parametrize("image", [
    "docker.io/evil/miner@sha256:" + "e" * 64,                                    # foreign registry
    f"{RELEASE_REGISTRY}.evil.com/sunday/backend@sha256:{'e' * 64}",               # look-alike host
    f"{RELEASE_REGISTRY}/other/backend@sha256:{'e' * 64}",                         # not a sunday repository
    f"{RELEASE_REGISTRY}/sunday/backend:latest",                                   # not pinned by digest
    "localhost:5000/sunday/backend@sha256:" + "e" * 64,                            # a node-local registry
])
def test_images_from_elsewhere_are_denied(image: str) -> None:
    old, new = _patched(image=image)
    assert _denied(new, old) == [MSG_IMAGE]


def test_an_init_or_ephemeral_container_from_elsewhere_is_denied() -> None:
    old, new = _patched()
    new["spec"]["template"]["spec"]["initContainers"][0]["image"] = "busybox:1.36"
    assert _denied(new, old) == [MSG_IMAGE]


def test_a_foreign_service_account_or_token_is_denied() -> None:
    old, new = _patched()
    pod = new["spec"]["template"]["spec"]
    pod["serviceAccountName"] = "database-backup"  # its IRSA role writes the backup bucket
    assert _denied(new, old) == [MSG_ACCOUNT]
    pod["serviceAccountName"] = "backend"
    pod["automountServiceAccountToken"] = True
    assert _denied(new, old) == [MSG_TOKEN]
    pod["automountServiceAccountToken"] = False
    pod["volumes"].append({"name": "token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "audience": "sts.amazonaws.com"}}]}})
    assert _denied(new, old) == [MSG_SECRET_VOLUME]


def test_foreign_secrets_are_denied() -> None:
    old, new = _patched()
    pod = new["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "tls", "secret": {"secretName": "sunday-production-tls"}})
    assert _denied(new, old) == [MSG_SECRET_VOLUME]
    old, new = _patched()
    container = new["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = [{"secretRef": {"name": "postgres"}}]
    assert _denied(new, old) == [MSG_SECRET_ENV]
    old, new = _patched("frontend-green", f"{RELEASE_REGISTRY}/sunday/frontend@sha256:{'d' * 64}")
    container = new["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append(  # the backend's Secret is not the frontend's
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "backend-database", "key": "DATABASE_URL"}}})
    assert _denied(new, old) == [MSG_SECRET_ENV]


def test_host_access_privilege_and_other_volumes_are_denied() -> None:
    old, new = _patched()
    new["spec"]["template"]["spec"]["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run"}})
    assert _denied(new, old) == [MSG_VOLUME_TYPE, MSG_HOST]
    old, new = _patched()
    new["spec"]["template"]["spec"]["hostNetwork"] = True
    assert _denied(new, old) == [MSG_HOST]
    old, new = _patched()
    new["spec"]["template"]["spec"]["volumes"].append({"name": "data", "persistentVolumeClaim": {
        "claimName": "data-postgres-0"}})
    assert _denied(new, old) == [MSG_VOLUME_TYPE]
    old, new = _patched()
    new["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert _denied(new, old) == [MSG_PRIVILEGED]
    new["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
        privileged=False, capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]})
    assert _denied(new, old) == [MSG_PRIVILEGED]


def test_a_job_of_another_app_is_denied() -> None:
    job = migration_job(find(rendered("staging"), "StatefulSet", "postgres"), "postgres", IMAGE,
                        ["sh"], "v1", "postgres-migrate-v1-x1y2z3")
    # label app=postgres, its own ServiceAccount and Secret (the database password): not a Sunday app
    assert _denied(job, None, "CREATE") == [MSG_APP, MSG_SECRET_ENV]


def test_the_switch_may_only_move_colors() -> None:
    policy = _policy(TRAFFIC)
    service = find(rendered("production"), "Service", "backend")
    switched = copy.deepcopy(service)
    switched["spec"]["selector"]["color"] = "green" if service["spec"]["selector"]["color"] == "blue" else "blue"
    assert admission_violations(policy, admission_request("UPDATE", switched, service)) == []
    for change in ({"selector": {"app": "postgres", "color": "blue"}},
                   {"selector": {"app": "backend", "color": "red"}},
                   {"selector": {"app": "backend", "color": "blue", "role": "x"}},
                   {"type": "LoadBalancer"}):
        bad = copy.deepcopy(service)
        bad["spec"].update(change)
        assert admission_violations(policy, admission_request("UPDATE", bad, service)) == [MSG_SELECTOR], change
    hpa = find(rendered("production"), "HorizontalPodAutoscaler", "backend")
    retargeted = copy.deepcopy(hpa)
    retargeted["spec"]["scaleTargetRef"]["name"] = "backend-green"
    assert admission_violations(policy, admission_request("UPDATE", retargeted, hpa)) == []
    retargeted["spec"]["scaleTargetRef"]["name"] = "frontend-green"
    assert admission_violations(policy, admission_request("UPDATE", retargeted, hpa)) == [MSG_HPA]
    retargeted["spec"]["scaleTargetRef"]["name"] = "backend-green"
    retargeted["spec"]["maxReplicas"] = 500
    assert admission_violations(policy, admission_request("UPDATE", retargeted, hpa)) == [MSG_HPA]


def test_admission_policy_typo_is_caught_by_strict_schema_validation() -> None:
    """kubernetes-validate knows ValidatingAdmissionPolicy v1 for this Kubernetes version: the schema check is real."""
    policy = _policy(WORKLOADS)
    policy["spec"]["validations"][0]["mesage"] = policy["spec"]["validations"][0].pop("message")
    problems = schema_violations(policy)
    assert len(problems) == 1 and "'mesage'" in problems[0]
    assert problems[0].startswith("ValidatingAdmissionPolicy/sunday-release-workloads: spec.validations[0]")


# --- the release history ConfigMap (base/release-state.yaml) and its admission policy ---------------
MSG_STATE_OBJECT = "the pipeline may only update the ConfigMap sunday-release-state (no other, no create or delete)"
MSG_STATE_KEYS = "the pipeline may only change data.state.json and data.config.json of the release state ConfigMap"
MSG_STATE_META = ("the pipeline may not relabel or annotate the release state ConfigMap, nor change its binaryData "
                  "or immutable")


@pytest.mark.parametrize("overlay", APP_OVERLAYS)
def test_each_overlay_creates_its_empty_labelled_state_configmap(overlay: str) -> None:
    """Created without `data` (re-applying the overlay keeps the history), labelled with project and env."""
    state = find(rendered(overlay), "ConfigMap", STATE_CONFIGMAP)
    assert state["metadata"]["namespace"] == NAMESPACES[overlay]
    assert state["metadata"]["labels"][PROJECT_LABEL] == "sunday"
    assert state["metadata"]["labels"][ENV_LABEL] == overlay
    assert "data" not in state and "binaryData" not in state and "immutable" not in state


def _state_update(patch: dict[str, Any], old_data: dict[str, str] | None = None) -> tuple[Manifest, Manifest]:
    """(old, new) state ConfigMap of production: `patch` (a JSON merge patch) applied to it."""
    from tests.fake_kube import json_merge_patch

    old = find(rendered("production"), "ConfigMap", STATE_CONFIGMAP)
    if old_data is not None:
        old["data"] = old_data
    new = copy.deepcopy(old)
    json_merge_patch(new, patch)
    return old, new


def _state_denied(new: Manifest | None, old: Manifest | None, operation: str = "UPDATE",
                  user: str | None = None) -> list[str]:
    review = admission_request(operation, new, old) if user is None else admission_request(operation, new, old, user)
    return admission_violations(_policy(STATE), review)


def test_the_state_policy_admits_the_pipelines_history_writes() -> None:
    old, new = _state_update(state_patch('{"env":"production","history":[]}'))
    assert _state_denied(new, old) == []
    old, new = _state_update(state_patch('{"env":"production","history":[]}', '{"project":"sunday"}'))
    assert _state_denied(new, old) == [] and set(new["data"]) == {STATE_KEY, CONFIG_KEY}
    old, new = _state_update(state_patch('{"env":"production","live":"blue"}'),
                             {STATE_KEY: '{"env":"production"}', "notes": "kept by people"})
    assert _state_denied(new, old) == []  # a key people added stays as it is: allowed
    # people (kubectl apply of the overlay) are not judged
    old, new = _state_update({"metadata": {"labels": {PROJECT_LABEL: "other"}}})
    assert _state_denied(new, old, user="kubernetes-admin") == []


def test_the_state_policy_refuses_other_keys_relabelling_and_other_configmaps() -> None:
    old, new = _state_update({"data": {"notes": "{}"}})
    assert _state_denied(new, old) == [MSG_STATE_KEYS]  # exactly the two keys: no third one
    old, new = _state_update({"data": {"STATE.JSON": "{}", CONFIG_KEY: "{}"}})
    assert _state_denied(new, old) == [MSG_STATE_KEYS]
    old, new = _state_update({"data": {"notes": None}}, {STATE_KEY: "{}", "notes": "kept by people"})
    assert _state_denied(new, old) == [MSG_STATE_KEYS]  # removing another key is a change too
    old, new = _state_update({"data": {"notes": "x"}}, {STATE_KEY: "{}", "notes": "kept by people"})
    assert _state_denied(new, old) == [MSG_STATE_KEYS]
    old, new = _state_update({"metadata": {"labels": {PROJECT_LABEL: "other"}}})
    assert _state_denied(new, old) == [MSG_STATE_META]  # no taking over another project's history
    old, new = _state_update({"metadata": {"labels": {ENV_LABEL: None}}})
    assert _state_denied(new, old) == [MSG_STATE_META]
    old, new = _state_update({"metadata": {"annotations": {"x": "y"}}, "binaryData": {"a": "AA=="}})
    assert _state_denied(new, old) == [MSG_STATE_META]
    old, new = _state_update({"immutable": True})
    assert _state_denied(new, old) == [MSG_STATE_META]
    other = find(rendered("production"), "ConfigMap", STATE_CONFIGMAP)
    other["metadata"]["name"] = "database-backup-abc"
    changed = copy.deepcopy(other)
    changed["data"] = {STATE_KEY: "{}"}
    assert _state_denied(changed, other) == [MSG_STATE_OBJECT]
    assert _state_denied(changed, None, "CREATE") == [MSG_STATE_OBJECT]
    old = find(rendered("production"), "ConfigMap", STATE_CONFIGMAP)
    assert _state_denied(None, old, "DELETE") == [MSG_STATE_OBJECT]
