"""Checks of infra/ (kustomize renders, schema and policy checks, Terraform module wiring, trivy config).

Every check is a pure function returning a list of violation messages that name the object
(`Deployment/backend-blue`, or the file and module for Terraform) and the field path
(`spec.template.spec.containers[0].resources.limits`). An empty list means the input passes.
The two runners (`render_kustomize`, `trivy_config`) call the real kubectl and trivy binaries
(trivy's from the `trivy` fixture of tests/conftest.py, which keeps those tests out of `make test-fast`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import hcl2
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
TERRAFORM = INFRA / "terraform"
TRIVYIGNORE = INFRA / ".trivyignore"
BIN = ROOT / ".venv" / "bin"
KUBECTL = BIN / "kubectl"
TRIVY = BIN / "trivy"
# kept across runs; one per pytest-xdist worker, since trivy holds a lock on its cache for the whole scan
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
TRIVY_CACHE = Path(tempfile.gettempdir()) / ("trivy-infra-cache" + (f"-{_WORKER}" if _WORKER else ""))

# Kubernetes version the manifests are validated against (the EKS version in infra/terraform).
K8S_VERSION = "1.33"
# trivy severities that fail the infra checks.
BLOCKING_SEVERITIES = ("HIGH", "CRITICAL")

Manifest = dict[str, Any]


class CommandError(RuntimeError):
    """A checking tool (kubectl, trivy) exited non-zero; carries the command and its stderr tail."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-20:])
        super().__init__(f"{' '.join(argv)} exited {returncode}:\n{tail}")
        self.argv = argv
        self.returncode = returncode


def _run(argv: list[str], timeout: float = 120) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr)
    return proc.stdout


# --- Kubernetes -------------------------------------------------------------------------------


def render_kustomize(directory: Path) -> list[Manifest]:
    """Render a kustomization with `kubectl kustomize` and return its objects."""
    out = _run([str(KUBECTL), "kustomize", str(directory)])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def write_manifests(objects: Iterable[Manifest], directory: Path) -> Path:
    """Write objects one per file (KIND-NAME.yaml) into directory, for scanners; returns directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for obj in objects:
        name = f"{obj['kind']}-{obj['metadata']['name']}.yaml".lower()
        (directory / name).write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
    return directory


def ref(obj: Mapping[str, Any]) -> str:
    """`Kind/name` of a manifest."""
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def _dotted(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_violations(obj: Manifest, version: str = K8S_VERSION) -> list[str]:
    """Strict schema validation (unknown fields are errors) of one object for a Kubernetes version."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = _dotted(list(exc.absolute_path)) or "(root)"
        return [f"{ref(obj)}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{ref(obj)}: apiVersion {obj.get('apiVersion')}: no schema for this kind in Kubernetes {version}"]
    return []


def pod_template(obj: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """(field path, pod spec) of a workload's pods, or None for objects that run no pods."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return "spec.template.spec", (spec.get("template") or {}).get("spec") or {}
    if kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        return "spec.jobTemplate.spec.template.spec", (job.get("template") or {}).get("spec") or {}
    if kind == "Pod":
        return "spec", spec
    return None


def _containers(pod_path: str, pod: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    for field in ("initContainers", "containers"):
        for index, container in enumerate(pod.get(field) or []):
            yield field, f"{pod_path}.{field}[{index}]", container


def policy_violations(obj: Mapping[str, Any]) -> list[str]:
    """Security and operability policy of a workload's pods and containers (empty: compliant).

    Pod: runAsNonRoot, seccomp RuntimeDefault, no hostNetwork/hostPID/hostIPC, no hostPath volumes,
    automountServiceAccountToken false. Every container: requests and limits for cpu and memory,
    runAsNonRoot (own or pod's), readOnlyRootFilesystem, allowPrivilegeEscalation false, not privileged,
    capabilities drop ALL, seccomp RuntimeDefault (own or pod's). Long-running containers (not of a
    CronJob/Job, not init containers) need liveness and readiness probes.
    """
    found = pod_template(obj)
    if found is None:
        return []
    pod_path, pod = found
    who = ref(obj)
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}

    def bad(path: str, what: str) -> None:
        problems.append(f"{who}: {path} {what}")

    if pod_sc.get("runAsNonRoot") is not True:
        bad(f"{pod_path}.securityContext.runAsNonRoot", "must be true")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        bad(f"{pod_path}.securityContext.seccompProfile.type", "must be RuntimeDefault")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            bad(f"{pod_path}.{flag}", "must not be true")
    if pod.get("automountServiceAccountToken") is not False:
        bad(f"{pod_path}.automountServiceAccountToken", "must be false")
    for index, volume in enumerate(pod.get("volumes") or []):
        if "hostPath" in volume:
            bad(f"{pod_path}.volumes[{index}].hostPath", "is not allowed")
    if not pod.get("containers"):
        bad(f"{pod_path}.containers", "missing")

    long_running = obj.get("kind") not in ("CronJob", "Job")
    for field, path, container in _containers(pod_path, pod):
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            values = resources.get(section)
            if not values:
                bad(f"{path}.resources.{section}", "missing")
                continue
            for resource in ("cpu", "memory"):
                if resource not in values:
                    bad(f"{path}.resources.{section}.{resource}", "missing")
        sc = container.get("securityContext") or {}
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            bad(f"{path}.securityContext.runAsNonRoot", "must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            bad(f"{path}.securityContext.runAsUser", "must not be 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad(f"{path}.securityContext.readOnlyRootFilesystem", "must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad(f"{path}.securityContext.allowPrivilegeEscalation", "must be false")
        if sc.get("privileged"):
            bad(f"{path}.securityContext.privileged", "must not be true")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            bad(f"{path}.securityContext.capabilities.drop", "must contain ALL")
        if capabilities.get("add"):
            bad(f"{path}.securityContext.capabilities.add", "must be empty")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            bad(f"{path}.securityContext.seccompProfile.type", "must be RuntimeDefault")
        if long_running and field == "containers":
            for probe in ("livenessProbe", "readinessProbe"):
                if not container.get(probe):
                    bad(f"{path}.{probe}", "missing")
    return problems


NETWORKING_RESOURCES = frozenset({"services", "endpoints", "endpointslices", "ingresses", "networkpolicies"})
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def rbac_violations(obj: Mapping[str, Any]) -> list[str]:
    """Least privilege: nothing cluster-wide, no `*`, no secrets, no delete/escalate/bind/impersonate,
    and writes to networking resources (services, ingresses, …) only on named objects."""
    kind = obj.get("kind")
    who = ref(obj)
    if kind in ("ClusterRole", "ClusterRoleBinding"):
        return [f"{who}: kind is cluster-wide"]
    problems: list[str] = []
    if kind == "RoleBinding" and (obj.get("roleRef") or {}).get("kind") == "ClusterRole":
        problems.append(f"{who}: roleRef.kind binds a ClusterRole")
    if kind != "Role":
        return problems
    for index, rule in enumerate(obj.get("rules") or []):
        path = f"rules[{index}]"
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            if "*" in (rule.get(field) or []):
                problems.append(f"{who}: {path}.{field} contains the wildcard '*'")
        if rule.get("nonResourceURLs"):
            problems.append(f"{who}: {path}.nonResourceURLs grants non-resource (cluster) URLs")
        if "secrets" in (rule.get("resources") or []):
            problems.append(f"{who}: {path}.resources grants access to secrets")
        verbs = set(rule.get("verbs") or [])
        for verb in ("escalate", "bind", "impersonate", "delete", "deletecollection"):
            if verb in verbs:
                problems.append(f"{who}: {path}.verbs grants {verb}")
        networking = NETWORKING_RESOURCES.intersection(rule.get("resources") or [])
        if networking and verbs & WRITE_VERBS and not rule.get("resourceNames"):
            # The one accepted trivy finding (KSV-0056 in infra/.trivyignore) relies on this limit.
            problems.append(f"{who}: {path}.resourceNames missing: writes {sorted(networking)} without naming them")
    return problems


# The kind (as the kubernetes target's FakeKubernetesApi records it) → (API group, resource).
RESOURCES = {
    "Deployment": ("apps", "deployments"),
    "Service": ("", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "Pod": ("", "pods"),
    "Event": ("", "events"),
    "Job": ("batch", "jobs"),
    "Pod log": ("", "pods/log"),
    "ConfigMap": ("", "configmaps"),
}
# Verbs Kubernetes never narrows by resourceNames (the name is unknown when it authorizes them).
UNNAMED_VERBS = frozenset({"create", "list", "watch", "deletecollection"})


def rbac_allows(role: Mapping[str, Any], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    """Whether `role` lets a subject do `verb` on `resource` of `group` (object `name`), as the RBAC
    authorizer decides: a rule with resourceNames only matches requests for one of those names, and
    never create/list/watch/deletecollection."""
    for rule in role.get("rules") or []:
        if group not in (rule.get("apiGroups") or []) or resource not in (rule.get("resources") or []):
            continue
        if verb not in (rule.get("verbs") or []):
            continue
        names = rule.get("resourceNames") or []
        if not names or (name is not None and verb not in UNNAMED_VERBS and name in names):
            return True
    return False


def live_color(objects: Iterable[Manifest], service: str) -> str | None:
    """The color the live Service `service` selects (spec.selector.color), if any."""
    for obj in objects:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == service:
            color = (obj.get("spec", {}).get("selector") or {}).get("color")
            return str(color) if color else None
    return None


def find(objects: Iterable[Manifest], kind: str, name: str) -> Manifest:
    """The object kind/name (KeyError naming it if absent)."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name} not rendered")


# --- trivy ------------------------------------------------------------------------------------


def trivy_config(trivy: Path, path: Path, ignorefile: Path | None = TRIVYIGNORE) -> list[str]:
    """`trivy config` (offline, embedded checks) of path; one message per HIGH/CRITICAL failure.

    `trivy` is the binary, from the `trivy` fixture: a test that runs it is then marked `services`.
    """
    argv = [
        str(trivy), "config", "--quiet", "--skip-check-update", "--cache-dir", str(TRIVY_CACHE),
        "--format", "json", "--severity", ",".join(BLOCKING_SEVERITIES), "--exit-code", "0",
    ]
    if ignorefile is not None:
        argv += ["--ignorefile", str(ignorefile)]
    report = json.loads(_run([*argv, str(path)], timeout=300))
    return [
        f"{result['Target']}: {finding['ID']} ({finding['Severity']}) {finding['Title']}"
        f" at {(finding.get('CauseMetadata') or {}).get('Resource', '?')}"
        for result in report.get("Results") or []
        for finding in result.get("Misconfigurations") or []
        if finding.get("Status") == "FAIL" and finding.get("Severity") in BLOCKING_SEVERITIES
    ]


def trivyignore_violations(path: Path = TRIVYIGNORE) -> list[str]:
    """Every ignored ID in the ignore file has a `#` comment (the reason) right above it."""
    problems: list[str] = []
    previous = ""
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#") and not previous.startswith("#"):
            problems.append(f"{path.name}:{number}: {line} has no comment giving the reason")
        previous = line
    return problems


# --- Terraform --------------------------------------------------------------------------------


def parse_tf(path: Path) -> dict[str, Any]:
    """One .tf file parsed with python-hcl2."""
    with path.open(encoding="utf-8") as handle:
        parsed: dict[str, Any] = hcl2.load(handle)
    return parsed


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def module_variables(module_dir: Path) -> dict[str, dict[str, Any]]:
    """Variables declared by a module directory: name → {type, description, default, …}."""
    declared: dict[str, dict[str, Any]] = {}
    for tf in sorted(module_dir.glob("*.tf")):
        for block in parse_tf(tf).get("variable") or []:
            for name, body in block.items():
                declared[_unquote(name)] = body
    return declared


# Meta-arguments of a module block: not module variables.
MODULE_META_ARGUMENTS = frozenset({"source", "version", "providers", "count", "for_each", "depends_on"})


def module_call_violations(tf_file: Path) -> list[str]:
    """Every local `module` block of tf_file: the source exists, every argument is a variable the module
    declares, every variable of the module without a default is passed."""
    problems: list[str] = []
    for block in parse_tf(tf_file).get("module") or []:
        for raw_name, body in block.items():
            name = _unquote(raw_name)
            source = str(_unquote(body.get("source", "")))
            where = f"{tf_file}: module.{name}"
            if not source.startswith("."):
                problems.append(f"{where}: source {source!r} is not a local module of this repository")
                continue
            module_dir = (tf_file.parent / source).resolve()
            if not (module_dir.is_dir() and list(module_dir.glob("*.tf"))):
                problems.append(f"{where}: source {source!r} does not exist ({module_dir})")
                continue
            declared = module_variables(module_dir)
            passed = {key for key in body if key not in MODULE_META_ARGUMENTS and not key.startswith("__")}
            for key in sorted(passed - declared.keys()):
                problems.append(f"{where}: argument {key!r} is not a variable of {source}")
            for key in sorted(declared.keys() - passed):
                if "default" not in declared[key]:
                    problems.append(f"{where}: required variable {key!r} of {source} is not passed")
    return problems


def variable_violations(tf_file: Path) -> list[str]:
    """Every `variable` block of tf_file has a type and a non-empty description."""
    problems: list[str] = []
    for block in parse_tf(tf_file).get("variable") or []:
        for raw_name, body in block.items():
            name = _unquote(raw_name)
            if "type" not in body:
                problems.append(f"{tf_file}: variable.{name}.type missing")
            if not str(_unquote(body.get("description", ""))).strip():
                problems.append(f"{tf_file}: variable.{name}.description missing")
    return problems


# --- admission policies (ValidatingAdmissionPolicy, CEL) --------------------------------------


PIPELINE_USER = "system:serviceaccount:prefect:sunday-release"


def admission_request(operation: str, obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None = None,
                      user: str = PIPELINE_USER) -> dict[str, Any]:
    """The CEL `request` (plus `object`/`oldObject`) an API server would hand a ValidatingAdmissionPolicy.

    The resource (group, version, plural) is derived from the object's apiVersion and kind.
    """
    subject = obj if obj is not None else old or {}
    group, _, version = str(subject.get("apiVersion", "")).rpartition("/")
    plural = {"Deployment": "deployments", "Job": "jobs", "Service": "services",
              "HorizontalPodAutoscaler": "horizontalpodautoscalers", "Pod": "pods",
              "ConfigMap": "configmaps"}.get(str(subject.get("kind")), "")
    return {
        "request": {
            "operation": operation,
            "userInfo": {"username": user},
            "resource": {"group": group, "version": version, "resource": plural},
            "name": subject.get("metadata", {}).get("name", ""),
            "namespace": subject.get("metadata", {}).get("namespace", ""),
        },
        "object": obj,
        "oldObject": old,
    }


def _rule_matches(rule: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    resource = request["resource"]

    def has(field: str, value: str) -> bool:
        values = rule.get(field) or []
        return "*" in values or value in values

    return (has("apiGroups", resource["group"]) and has("apiVersions", resource["version"])
            and has("resources", resource["resource"]) and has("operations", request["operation"]))


def admission_violations(policy: Mapping[str, Any], review: Mapping[str, Any]) -> list[str]:
    """Evaluate a ValidatingAdmissionPolicy (CEL, with cel-python) against one admission request.

    `review` is what `admission_request` builds. Returns the messages of the failing validations, as
    the API server would deny with them: [] when the request is allowed or the policy does not
    apply (matchConstraints, matchConditions). An expression that cannot be evaluated counts as a
    failure (the policies use failurePolicy: Fail). This stands in for an API server, which cannot
    run here; the CEL dialect is cel-python's (no Kubernetes CEL extensions such as `.split`).
    """
    import celpy  # lazily: only the admission tests need it

    spec = policy["spec"]
    request = review["request"]
    rules = (spec.get("matchConstraints") or {}).get("resourceRules") or []
    if not any(_rule_matches(rule, request) for rule in rules):
        return []
    env = celpy.Environment()
    base = {key: review[key] for key in ("request", "object", "oldObject")}
    values: dict[str, Any] = {}

    def evaluate(expression: str) -> Any:
        activation = dict(cast(Mapping[str, Any], celpy.json_to_cel(base)))
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in values.items()})
        try:
            result = env.program(env.compile(expression)).evaluate(activation)
        except celpy.CELEvalError as exc:
            return exc
        return result

    for condition in spec.get("matchConditions") or []:
        if evaluate(condition["expression"]) != celpy.celtypes.BoolType(True):
            return []  # not a request of the identity the policy guards
    for variable in spec.get("variables") or []:
        values[variable["name"]] = evaluate(variable["expression"])
    problems = []
    for validation in spec.get("validations") or []:
        result = evaluate(validation["expression"])
        if isinstance(result, celpy.CELEvalError):
            problems.append(f"{validation['message']} (not evaluable: {result})")
        elif result != celpy.celtypes.BoolType(True):
            problems.append(str(validation["message"]))
    return problems
