"""Pure decisions of the kubernetes target: patch bodies, rollout and Job judgement, error messages.

Objects are plain API JSON dicts (camelCase), as the API server sends them. Nothing here calls the
API or imports the Kubernetes client: `kubernetes.py` reads objects through `kube_api.KubeApi`, asks
these functions what they mean or what to send, and sends it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, Literal

from sunday_release.bluegreen import Color, EnvState
from sunday_release.config import Environment, PipelineConfig
from sunday_release.errors import PipelineError

__all__ = [
    "CONFIG_KEY",
    "ENV_LABEL",
    "FATAL_WAITING",
    "PROJECT_LABEL",
    "REPLICAS_KEY",
    "RETRYABLE_STATUS",
    "STATE_CONFIGMAP",
    "STATE_KEY",
    "VERSION_KEY",
    "Obj",
    "RolloutStatus",
    "api_error_message",
    "config_from_configmap",
    "deployment_name",
    "desired_replicas",
    "hpa_patch",
    "job_name",
    "job_outcome",
    "migration_job",
    "pod_failure",
    "recorded_replicas",
    "rollout_status",
    "scale_patch",
    "selected_color",
    "selector_patch",
    "start_patch",
    "state_from_configmap",
    "state_owner_problem",
    "state_patch",
    "template_version",
    "version_label",
    "warning_events",
]

VERSION_KEY = "sunday.version"
REPLICAS_KEY = "sunday.replicas"
# Waiting reasons a pod does not recover from without a new release.
FATAL_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                           "CreateContainerConfigError", "CreateContainerError"})
# API answers worth another try: no answer (0), a conflict, throttling, a server error.
RETRYABLE_STATUS = frozenset({0, 409, 429, 500, 502, 503, 504})
Obj = dict[str, Any]  # an API object as JSON
# The environment's release history: ConfigMap STATE_CONFIGMAP of its namespace, key STATE_KEY (the
# overlay creates it empty and labels it with the project and environment it belongs to).
STATE_CONFIGMAP = "sunday-release-state"
STATE_KEY = "state.json"
CONFIG_KEY = "config.json"  # beside it: the environment's last config
PROJECT_LABEL = "sunday-release/project"
ENV_LABEL = "sunday-release/env"


@dataclass(frozen=True)
class RolloutStatus:
    """A Deployment's rollout judged from its status: `health` and why."""

    health: Literal["healthy", "starting", "failed", "exited"]
    reason: str
    desired: int
    ready: int


def deployment_name(service: str, color: Color) -> str:
    """SERVICE-COLOR: the Deployment (and preview Service) of one color of a service."""
    return f"{service}-{color}"


def version_label(version: str) -> str:
    """`version` as a label value (≤63 of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", version)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def template_version(deployment: Obj) -> str:
    """The release (`sunday.version`) the Deployment's pod template carries; "" if the pipeline never set it."""
    annotations = deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
    return str(annotations.get(VERSION_KEY, ""))


def recorded_replicas(deployment: Obj) -> int | None:
    """The replica count `stop_color` recorded before scaling to 0, if any."""
    value = (deployment.get("metadata", {}).get("annotations") or {}).get(REPLICAS_KEY)
    return int(value) if value is not None and str(value).isdigit() and int(value) > 0 else None


def desired_replicas(service: str, state: EnvState | None, env: Environment, running: int) -> int:
    """Pods for `service` on a color being started: the scale flow's count, then the config's, then
    `running` (the larger count either color runs now: the live one's, set by the HPA), then 1.

    Falling back to what runs means the switch never moves production traffic from 5 pods to 1.
    """
    if state is not None and service in state.replicas:
        return state.replicas[service]
    if service in env.replicas:
        return env.replicas[service]
    return running if running > 0 else 1


def start_patch(deployment: Obj, service: str, image: str, version: str, replicas: int,
                metrics: tuple[str, int] | None = None) -> Obj:
    """The strategic-merge patch that runs `image` (release `version`) with `replicas` pods.

    Sets the image of the service's container (named after the service, else the first) and of
    every init container that ran the same image (the migrate init container), APP_VERSION, and
    the `sunday.version` annotation and label of the pod template. `metrics` (path, port): the service serves
    Prometheus metrics there, and its pods get the prometheus.io/* annotations the monitoring overlay's
    `sunday-services` job scrapes.
    """
    pod = deployment["spec"]["template"]["spec"]
    containers = pod.get("containers") or []
    main = next((c for c in containers if c.get("name") == service), containers[0] if containers else None)
    if main is None:
        raise PipelineError(f"Deployment {deployment['metadata']['name']} has no container to run {image}")
    old_image = main.get("image")
    patched_init = [{"name": c["name"], "image": image} for c in pod.get("initContainers") or []
                    if c.get("image") == old_image]
    spec: Obj = {"containers": [{"name": main["name"], "image": image,
                                 "env": [{"name": "APP_VERSION", "value": version}]}]}
    if patched_init:
        spec["initContainers"] = patched_init
    annotations = {VERSION_KEY: version}
    if metrics is not None:
        annotations |= {"prometheus.io/scrape": "true", "prometheus.io/path": metrics[0],
                        "prometheus.io/port": str(metrics[1])}
    return {
        "metadata": {"annotations": {REPLICAS_KEY: str(replicas)}},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"annotations": annotations, "labels": {VERSION_KEY: version_label(version)}},
                "spec": spec,
            },
        },
    }


def scale_patch(replicas: int, record: int | None = None) -> Obj:
    """Scale a Deployment; `record` keeps the count to restart with (stop_color) in an annotation."""
    body: Obj = {"spec": {"replicas": replicas}}
    if record is not None:
        body["metadata"] = {"annotations": {REPLICAS_KEY: str(record)}}
    return body


def selector_patch(color: Color) -> Obj:
    """The traffic switch: only the `color` key of a live Service's selector changes."""
    return {"spec": {"selector": {"color": color}}}


def hpa_patch(service: str, color: Color) -> Obj:
    """Point the service's HPA at the Deployment of `color` (it scales the live color)."""
    return {"spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": deployment_name(service, color)}}}


def selected_color(service: Obj) -> Color | None:
    """The color a live Service sends traffic to (its selector), None if it selects none."""
    value = (service.get("spec", {}).get("selector") or {}).get("color")
    return value if value in ("blue", "green") else None


def rollout_status(deployment: Obj) -> RolloutStatus:
    """Judge a Deployment like `kubectl rollout status`, from its spec and status only.

    healthy: the controller saw the latest spec (observedGeneration ≥ generation) and every desired
    pod is updated and ready, none of an older template left; exited: scaled to 0; failed: its
    Progressing condition is False (ProgressDeadlineExceeded); starting otherwise.
    """
    meta, spec, status = deployment.get("metadata", {}), deployment.get("spec", {}), deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if desired == 0:
        return RolloutStatus("exited", "scaled to 0", 0, ready)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("status") == "False":
            why = condition.get("reason") or "not progressing"
            return RolloutStatus("failed", f"{why}: {condition.get('message', '')}".rstrip(": "), desired, ready)
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return RolloutStatus("starting", "the controller has not seen the latest spec yet", desired, ready)
    if updated < desired:
        return RolloutStatus("starting", f"{updated} of {desired} pods updated", desired, ready)
    if total > updated:
        return RolloutStatus("starting", f"{total - updated} old pods terminating", desired, ready)
    if ready < desired:
        return RolloutStatus("starting", f"{ready} of {desired} pods ready", desired, ready)
    return RolloutStatus("healthy", f"{ready} of {desired} pods ready", desired, ready)


def pod_failure(pods: Sequence[Obj], version: str = "") -> str | None:
    """Why the pods of a rollout will not become ready on their own (CrashLoopBackOff, ImagePullBackOff…).

    Only pods of release `version` count when it is given (older pods may be on their way out).
    """
    for pod in pods:
        labels = pod.get("metadata", {}).get("labels") or {}
        if version and labels.get(VERSION_KEY) not in (None, version_label(version)):
            continue
        status = pod.get("status") or {}
        for kind, key in (("init container", "initContainerStatuses"), ("container", "containerStatuses")):
            for cs in status.get(key) or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in FATAL_WAITING:
                    message = f": {waiting['message']}" if waiting.get("message") else ""
                    return (f"pod {pod['metadata']['name']}: {kind} {cs.get('name')} is "
                            f"{waiting['reason']}{message}")
    return None


def _event_time(event: Obj) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or
               event.get("metadata", {}).get("creationTimestamp") or "")


def warning_events(events: Sequence[Obj], owner: str, limit: int = 3) -> list[str]:
    """The latest Warning events of `owner` (a Deployment) and its ReplicaSets and pods, newest last."""
    mine = [e for e in events if e.get("type") == "Warning" and (
        (name := str(e.get("involvedObject", {}).get("name", ""))) == owner or name.startswith(f"{owner}-"))]
    mine.sort(key=_event_time)
    lines = []
    for e in mine[-limit:]:
        obj = e.get("involvedObject", {})
        count = f" (x{e['count']})" if int(e.get("count") or 1) > 1 else ""
        lines.append(f"{obj.get('kind', '?')}/{obj.get('name', '?')}: {e.get('reason', '')}: "
                     f"{str(e.get('message', '')).strip()}{count}")
    return lines


def api_error_message(exc: Any, verb: str, kind: str, namespace: str, name: str) -> str:
    """One line for a failed API call: what, on which object, the HTTP status and the server's message."""
    status = getattr(exc, "status", None) or 0
    detail = str(getattr(exc, "reason", "") or "")
    try:
        message = json.loads(getattr(exc, "body", None) or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    if message:
        detail = f"{detail}: {message}" if detail else str(message)
    code = f"HTTP {status}" if status else "no answer"
    return f"Kubernetes API: {verb} {kind} {namespace}/{name} failed ({code}): {detail}".rstrip(": ")


def state_owner_problem(configmap: Obj, project: str, env: str) -> str | None:
    """Why the state ConfigMap is not environment `project/env`'s (its labels say another owner), or None."""
    meta = configmap.get("metadata") or {}
    where = f"ConfigMap {meta.get('namespace', '?')}/{meta.get('name', STATE_CONFIGMAP)}"
    labels = meta.get("labels") or {}
    owner, owner_env = labels.get(PROJECT_LABEL), labels.get(ENV_LABEL)
    if owner is None or owner_env is None:
        return (f"{where} has no labels {PROJECT_LABEL} and {ENV_LABEL}: label it {PROJECT_LABEL}={project}, "
                f"{ENV_LABEL}={env} (as the overlays in infra/k8s do) before deploying {project}/{env} there")
    if owner != project:
        return (f"{where} holds the release history of project {owner!r}, not of project {project!r}: "
                f"its namespace belongs to {owner!r}; deploy {project!r} to another cluster "
                f"(environments.{env}.kube_context)")
    if owner_env != env:
        return (f"{where} holds the release history of environment {owner}/{owner_env}, "
                f"not of {project}/{env}")
    return None


def state_from_configmap(configmap: Obj, env: str) -> EnvState:
    """The release history the state ConfigMap holds; empty when it holds none yet.

    Raises:
        PipelineError: the key holds something that is not an environment state.
    """
    text = (configmap.get("data") or {}).get(STATE_KEY)
    if not text:
        return EnvState(env=env)
    meta = configmap.get("metadata") or {}
    try:
        return EnvState.model_validate_json(text)
    except ValueError as exc:
        raise PipelineError(f"ConfigMap {meta.get('namespace', '?')}/{meta.get('name', STATE_CONFIGMAP)}: "
                            f"data.{STATE_KEY} is not a release history: {str(exc).splitlines()[0]}") from None


def state_patch(text: str, config: str | None = None) -> Obj:
    """The JSON merge patch that stores `text` as the release history (and `config` as the last config)
    and touches nothing else."""
    data = {STATE_KEY: text} if config is None else {STATE_KEY: text, CONFIG_KEY: config}
    return {"data": data}


def config_from_configmap(configmap: Obj) -> PipelineConfig | None:
    """The environment's last config the state ConfigMap holds; None when it holds none yet.

    Raises:
        PipelineError: the key holds something that is not a valid config.
    """
    text = (configmap.get("data") or {}).get(CONFIG_KEY)
    if not text:
        return None
    meta = configmap.get("metadata") or {}
    try:
        return PipelineConfig.model_validate_json(text)
    except ValueError as exc:
        raise PipelineError(f"ConfigMap {meta.get('namespace', '?')}/{meta.get('name', STATE_CONFIGMAP)}: "
                            f"data.{CONFIG_KEY} is not a valid config: {str(exc).splitlines()[0]}") from None


def job_name(service: str, version: str, suffix: str) -> str:
    """SERVICE-migrate-VERSION-SUFFIX as a DNS-1123 name of at most 63 characters."""
    slug = re.sub(r"[^a-z0-9-]", "-", version.lower())[:12].strip("-") or "release"
    head = re.sub(r"[^a-z0-9-]", "-", f"{service}-migrate-{slug}".lower())[: 62 - len(suffix)].strip("-")
    return f"{head}-{suffix}"


def migration_job(deployment: Obj, service: str, image: str, argv: Sequence[str], version: str,
                  name: str, deadline_seconds: int = 600) -> Obj:
    """A Job running `argv` in `image` with the pod settings of the service's Deployment.

    It keeps the ServiceAccount, security contexts, volumes and the service container's environment
    (DATABASE_URL from its Secret); drops probes, ports, init containers and scheduling spread. Its
    pod is labelled app=SERVICE (NetworkPolicies let it reach the database) but carries no color,
    so no Service sends it traffic. It never retries and removes itself an hour after it ends.
    """
    template = deepcopy(deployment["spec"]["template"])
    pod = template["spec"]
    containers = pod.get("containers") or []
    main = next((c for c in containers if c.get("name") == service), containers[0] if containers else {})
    env = [e for e in main.get("env") or [] if e.get("name") != "APP_VERSION"]
    container = {"name": "migrate", "image": image, "command": list(argv),
                 "env": [*env, {"name": "APP_VERSION", "value": version}]}
    for key in ("envFrom", "resources", "securityContext", "volumeMounts", "imagePullPolicy"):
        if key in main:
            container[key] = main[key]
    for key in ("initContainers", "affinity", "topologySpreadConstraints"):
        pod.pop(key, None)
    pod["containers"] = [container]
    pod["restartPolicy"] = "Never"
    labels = {"app": service, "sunday.job": "migrate", VERSION_KEY: version_label(version)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels, "annotations": {VERSION_KEY: version}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": labels, "annotations": {VERSION_KEY: version}}, "spec": pod},
        },
    }


def job_outcome(job: Obj) -> tuple[Literal["running", "succeeded", "failed"], str]:
    """A Job's state from its status: running, succeeded, or failed with the condition's reason."""
    status = job.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", ""
        if condition.get("status") == "True" and condition.get("type") in ("Failed", "FailureTarget"):
            return "failed", f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".rstrip(": ")
    if int(status.get("succeeded") or 0) > 0:
        return "succeeded", ""
    if int(status.get("failed") or 0) > 0:
        return "failed", f"{status['failed']} pod(s) failed"
    return "running", ""
