"""The `kubernetes` target: two Deployments per service, the live Service's `spec.selector.color` is the switch.

Layout (infra/k8s, see docs/production.md), in namespace `sunday-ENV` unless told otherwise:

    Deployment SERVICE-blue / SERVICE-green   labels app=SERVICE, color=COLOR; the idle color runs 0 pods
    Service    SERVICE-blue / SERVICE-green   preview: smoke tests of one color
    Service    SERVICE                        live: selector {app: SERVICE, color: COLOR} — the traffic switch
    HPA        SERVICE                        scales the live color; retargeted on a switch

The protocol is the docker target's (`start_color` → `wait_healthy` → smoke → `switch` → keep the old
color scaled to 0 for rollback). What the pipeline writes on the Deployments:

    spec.template annotation + label `sunday.version`   the release running on that color
    metadata annotation `sunday.replicas`               the replica count before a stop (for restart_color)

Pure decisions (patch bodies, rollout judgement, error messages) are module-level functions; every
API call goes through the `KubeApi` seam (`KubernetesApi` for a real cluster, a fake in the tests).
API errors become `PipelineError`s naming the object and the HTTP status; 409/429/5xx (and
connection failures) are retried with backoff.

Local state (release history) is `SUNDAY_HOME/envs/ENV/state.json`, as for docker. The watch
window relies on the smoke checks: `access_log_size` / `statuses_since` return nothing here (the
error rate lives in Prometheus, not wired to the pipeline yet).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from sunday_release import validate
from sunday_release.bluegreen import Color, EnvState
from sunday_release.config import Environment, PipelineConfig
from sunday_release.errors import PipelineError, RolloutAborted
from sunday_release.runner import tail

__all__ = [
    "KubeApi",
    "KubernetesApi",
    "KubernetesTarget",
    "Replica",
    "RolloutStatus",
    "Timing",
    "api_error_message",
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
    "template_version",
    "version_label",
    "warning_events",
]

VERSION_KEY = "sunday.version"
REPLICAS_KEY = "sunday.replicas"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
# Waiting reasons a pod does not recover from without a new release.
FATAL_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                           "CreateContainerConfigError", "CreateContainerError"})
RETRYABLE_STATUS = frozenset({0, 409, 429, 500, 502, 503, 504})
Obj = dict[str, Any]
T = TypeVar("T")


# ==================================================================== the API seam
class KubeApi(Protocol):
    """The few Kubernetes API calls the target makes; objects are plain API JSON dicts (camelCase).

    Every method raises `kubernetes.client.ApiException` on a non-2xx answer (status 0: no answer).
    """

    def read_deployment(self, namespace: str, name: str) -> Obj: ...
    def patch_deployment(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def read_service(self, namespace: str, name: str) -> Obj: ...
    def patch_service(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def read_hpa(self, namespace: str, name: str) -> Obj: ...
    def patch_hpa(self, namespace: str, name: str, body: Obj) -> Obj: ...
    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]: ...
    def list_events(self, namespace: str, field_selector: str) -> list[Obj]: ...
    def create_job(self, namespace: str, body: Obj) -> Obj: ...
    def read_job(self, namespace: str, name: str) -> Obj: ...
    def read_pod_log(self, namespace: str, name: str, tail_lines: int) -> str: ...
    def close(self) -> None: ...


class KubernetesApi:
    """`KubeApi` over the official client (AppsV1, CoreV1, BatchV1, AutoscalingV2).

    Answers are read raw (`_preload_content=False`) and parsed as JSON, so the target sees exactly
    what the API server sent. Deployment and Service patches are strategic-merge patches, HPA
    patches JSON merge patches (the client would otherwise send a dict as a JSON Patch).
    """

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.autoscaling = client.AutoscalingV2Api(api_client)

    @classmethod
    def from_context(cls, context: str | None) -> KubernetesApi:
        """A client for `context` of the kubeconfig; in a pod without a context, the pod's ServiceAccount."""
        from kubernetes import client, config

        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return cls(client.ApiClient())
        return cls(config.new_client_from_config(context=context))

    def _json(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import urllib3
        from kubernetes.client import ApiException

        try:
            response = call(*args, _preload_content=False, _request_timeout=30, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiException(status=0, reason=f"no answer from the API server: {exc}") from exc
        return json.loads(response.data or b"null")

    def read_deployment(self, namespace: str, name: str) -> Obj:
        return self._json(self.apps.read_namespaced_deployment, name, namespace)  # type: ignore[no-any-return]

    def patch_deployment(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.apps.patch_namespaced_deployment, name, namespace,  # type: ignore[no-any-return]
                          body, _content_type=STRATEGIC)

    def read_service(self, namespace: str, name: str) -> Obj:
        return self._json(self.core.read_namespaced_service, name, namespace)  # type: ignore[no-any-return]

    def patch_service(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.core.patch_namespaced_service, name, namespace,  # type: ignore[no-any-return]
                          body, _content_type=STRATEGIC)

    def read_hpa(self, namespace: str, name: str) -> Obj:
        return self._json(self.autoscaling.read_namespaced_horizontal_pod_autoscaler,  # type: ignore[no-any-return]
                          name, namespace)

    def patch_hpa(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._json(self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,  # type: ignore[no-any-return]
                          name, namespace, body, _content_type=MERGE)

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        out = self._json(self.core.list_namespaced_pod, namespace, label_selector=label_selector)
        return list(out.get("items") or [])

    def list_events(self, namespace: str, field_selector: str) -> list[Obj]:
        out = self._json(self.core.list_namespaced_event, namespace, field_selector=field_selector)
        return list(out.get("items") or [])

    def create_job(self, namespace: str, body: Obj) -> Obj:
        return self._json(self.batch.create_namespaced_job, namespace, body)  # type: ignore[no-any-return]

    def read_job(self, namespace: str, name: str) -> Obj:
        return self._json(self.batch.read_namespaced_job, name, namespace)  # type: ignore[no-any-return]

    def read_pod_log(self, namespace: str, name: str, tail_lines: int) -> str:
        import urllib3
        from kubernetes.client import ApiException

        try:
            response: Any = self.core.read_namespaced_pod_log(name, namespace, tail_lines=tail_lines,
                                                              _preload_content=False, _request_timeout=30)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiException(status=0, reason=f"no answer from the API server: {exc}") from exc
        return bytes(response.data or b"").decode(errors="replace")

    def close(self) -> None:
        self.api_client.close()


# ==================================================================== pure decisions
@dataclass(frozen=True)
class Replica:
    """One Deployment of a color (its pods are reached through the color's preview Service)."""

    service: str
    name: str  # the Deployment: SERVICE-COLOR
    endpoint: str  # HOST:PORT of the preview Service, e.g. backend-green.sunday-production.svc:80
    health: str  # healthy, starting, failed, exited (scaled to 0)
    ready: int = 0
    desired: int = 0
    version: str = ""


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


def start_patch(deployment: Obj, service: str, image: str, version: str, replicas: int) -> Obj:
    """The strategic-merge patch that runs `image` (release `version`) with `replicas` pods.

    Sets the image of the service's container (named after the service, else the first) and of
    every init container that ran the same image (the migrate init container), APP_VERSION, and
    the `sunday.version` annotation and label of the pod template.
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
    return {
        "metadata": {"annotations": {REPLICAS_KEY: str(replicas)}},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"annotations": {VERSION_KEY: version}, "labels": {VERSION_KEY: version_label(version)}},
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


# ==================================================================== the target
@dataclass
class Timing:
    """Injectable time: tests pass a fake clock and sleep so no test really waits."""

    poll_interval: float = 2.0
    retry_delays: Sequence[float] = (0.5, 2.0, 5.0)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    job_timeout: float = 600.0
    job_suffix: Callable[[], str] = field(default=lambda: secrets.token_hex(3))


class KubernetesTarget:
    """Blue-green on a Kubernetes namespace; the live Services' selectors say which color is live.

    `url` is the entry point the watch window probes: the in-cluster DNS name of the live Service of
    the service routed at `/` (`http://frontend.sunday-ENV.svc`), or `url=` (e.g. the Ingress's
    host). Replica endpoints are the preview Services (`SERVICE-COLOR.NAMESPACE.svc:PORT`), so smoke
    tests must run inside the cluster (the k8s work pool), with a NetworkPolicy that lets them in.
    """

    def __init__(self, config: PipelineConfig, env_name: str, env: Environment, home: Path,
                 api: KubeApi | None = None, namespace: str | None = None, *, url: str | None = None,
                 timing: Timing | None = None) -> None:
        self.config, self.env_name, self.env = config, validate.name(env_name, "--env"), env
        self.namespace = namespace or f"sunday-{env_name}"
        self.root = home / "envs" / env_name
        self.state_path = self.root / "state.json"
        self.api: KubeApi = api if api is not None else KubernetesApi.from_context(env.kube_context)
        self.timing = timing or Timing()
        self._url = url
        self._ports: dict[str, int] = {}

    @property
    def services(self) -> list[str]:
        """The services of the config: each has two Deployments, two preview Services and a live Service."""
        return list(self.config.services)

    # ---------------------------------------------------------------- state
    def load_state(self) -> EnvState:
        return EnvState.load(self.state_path, self.env_name)

    def save_state(self, state: EnvState) -> None:
        state.save(self.state_path)

    @property
    def url(self) -> str:
        if self._url:
            return self._url
        routed = [name for name, spec in self.config.services.items() if spec.route == "/"]
        return f"http://{(routed or self.services)[0]}.{self.namespace}.svc"

    # ---------------------------------------------------------------- API calls
    def _call(self, verb: str, kind: str, name: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """One API call; retried on 409/429/5xx/no answer when `retry`; PipelineError naming the object."""
        from kubernetes.client import ApiException

        delays = list(self.timing.retry_delays) if retry else []
        while True:
            try:
                return fn()
            except ApiException as exc:
                if delays and (exc.status or 0) in RETRYABLE_STATUS:
                    delay = delays.pop(0)
                    self.timing.sleep(delay * random.uniform(0.8, 1.2))
                    continue
                raise PipelineError(api_error_message(exc, verb, kind, self.namespace, name)) from exc

    def _is_missing(self, exc: PipelineError) -> bool:
        cause = exc.__cause__
        return getattr(cause, "status", None) == 404

    def _deployment(self, service: str, color: Color) -> Obj:
        name = deployment_name(service, color)
        return self._call("read", "Deployment", name, lambda: self.api.read_deployment(self.namespace, name))

    def _patch_deployment(self, name: str, body: Obj) -> Obj:
        return self._call("patch", "Deployment", name, lambda: self.api.patch_deployment(self.namespace, name, body))

    def _live_service(self, service: str) -> Obj:
        return self._call("read", "Service", service, lambda: self.api.read_service(self.namespace, service))

    def _patch_selector(self, service: str, color: Color) -> None:
        body = selector_patch(color)
        self._call("patch", "Service", service, lambda: self.api.patch_service(self.namespace, service, body))

    def _pods(self, selector: str) -> list[Obj]:
        return self._call("list", "Pods", selector, lambda: self.api.list_pods(self.namespace, selector))

    def _preview_port(self, service: str, color: Color) -> int:
        name = deployment_name(service, color)
        if name not in self._ports:
            svc = self._call("read", "Service", name, lambda: self.api.read_service(self.namespace, name))
            ports = svc.get("spec", {}).get("ports") or [{}]
            self._ports[name] = int(ports[0].get("port") or self.config.services[service].port)
        return self._ports[name]

    # ---------------------------------------------------------------- colors
    def live_color(self) -> Color | None:
        """The color the live Services select (the truth); None before the pipeline's first release.

        A color whose Deployments never got a release from the pipeline (no `sunday.version`: the
        overlay's placeholder images) does not count as live: the first release goes to it.
        Services that disagree (a switch cut short by a dead process) are a PipelineError.
        """
        colors = {service: selected_color(self._live_service(service)) for service in self.services}
        if len(set(colors.values())) > 1:
            split = ", ".join(f"{s} → {c}" for s, c in colors.items())
            raise PipelineError(f"the live Services of {self.namespace} disagree ({split}): a switch was cut "
                                "short; patch their spec.selector.color to one color, then deploy again")
        color = next(iter(colors.values()), None)
        if color is None:
            return None
        if not any(template_version(self._deployment(s, color)) for s in self.services):
            return None
        return color

    def version_of(self, color: Color) -> str:
        """The release the Deployments of `color` run (or were stopped with); "" if none."""
        versions = [template_version(self._deployment(s, color)) for s in self.services]
        return next((v for v in versions if v), "")

    def start_color(self, color: Color, images: Mapping[str, str], version: str, state: EnvState) -> None:
        """Roll the Deployments of `color` to `images` (service → image ref) at release `version`."""
        for service, image in images.items():
            current = self._deployment(service, color)
            other: Color = "green" if color == "blue" else "blue"
            running = max(int(current.get("spec", {}).get("replicas") or 0),
                          int(self._deployment(service, other).get("spec", {}).get("replicas") or 0))
            count = desired_replicas(service, state, self.env, running)
            self._patch_deployment(deployment_name(service, color), start_patch(current, service, image, version,
                                                                                count))

    def scale_service(self, color: Color, service: str, image: str, version: str, replicas: int) -> None:
        """Run `replicas` pods of `service` in `color` (image unchanged unless it differs: no new rollout)."""
        current = self._deployment(service, color)
        self._patch_deployment(deployment_name(service, color),
                               start_patch(current, service, image, version, replicas))

    def replicas(self, color: Color, include_stopped: bool = False) -> list[Replica]:
        """One Replica per Deployment of `color` (scaled-to-0 ones only with `include_stopped`)."""
        out = []
        for service in self.services:
            deployment = self._deployment(service, color)
            status = rollout_status(deployment)
            if status.health == "exited" and not include_stopped:
                continue
            endpoint = f"{deployment_name(service, color)}.{self.namespace}.svc:{self._preview_port(service, color)}"
            out.append(Replica(service, deployment_name(service, color), endpoint, status.health, status.ready,
                               status.desired, template_version(deployment)))
        return out

    def _abort(self, service: str, color: Color, why: str) -> RolloutAborted:
        name = deployment_name(service, color)
        try:
            events = self._call("list", "Events", name, lambda: self.api.list_events(self.namespace, "type=Warning"))
            lines = warning_events(events, name)
        except PipelineError as exc:
            lines = [f"(events not readable: {exc})"]
        detail = "".join(f"\n  {line}" for line in lines) or "\n  (no warning events)"
        return RolloutAborted(f"Deployment {self.namespace}/{name} did not become ready: {why}{detail}")

    def wait_healthy(self, color: Color, timeout: float) -> list[Replica]:
        """Wait until every Deployment of `color` that runs pods is rolled out and ready.

        RolloutAborted naming the Deployment and its latest warning events on a pod that will not
        recover (CrashLoopBackOff, ImagePullBackOff…), ProgressDeadlineExceeded, or the timeout.
        """
        deadline = self.timing.clock() + timeout
        while True:
            deployments = {s: self._deployment(s, color) for s in self.services}
            statuses = {s: rollout_status(d) for s, d in deployments.items()}
            active = [s for s, st in statuses.items() if st.health != "exited"]
            if not active:
                raise RolloutAborted(f"no Deployment of {color} in {self.namespace} runs pods: start it first")
            waiting = [s for s in active if statuses[s].health != "healthy"]
            if not waiting:
                return self.replicas(color)
            for service in waiting:
                if statuses[service].health == "failed":
                    raise self._abort(service, color, statuses[service].reason)
                pods = self._pods(f"app={service},color={color}")
                why = pod_failure(pods, template_version(deployments[service]))
                if why:
                    raise self._abort(service, color, why)
            if self.timing.clock() >= deadline:
                service = waiting[0]
                raise self._abort(service, color, f"{statuses[service].reason} after {timeout:.0f}s")
            self.timing.sleep(self.timing.poll_interval)

    def switch(self, color: Color) -> None:
        """Move traffic to `color`: one selector patch per live Service, then each HPA retargeted.

        Refused (RolloutAborted) unless every Deployment of `color` has a ready pod. All or nothing:
        if a patch fails for good, what was already patched is put back and the error is raised.
        """
        for service in self.services:
            status = rollout_status(self._deployment(service, color))
            if status.ready < 1:
                raise RolloutAborted(f"refusing to switch to {color}: Deployment {self.namespace}/"
                                     f"{deployment_name(service, color)} has no ready pod ({status.reason})")
        undo: list[Callable[[], None]] = []
        try:
            for service in self.services:
                before = selected_color(self._live_service(service))
                if before == color:
                    continue
                self._patch_selector(service, color)
                if before is not None:
                    undo.append(lambda s=service, c=before: self._patch_selector(s, c))  # type: ignore[misc]
            for service in self.services:
                self._retarget_hpa(service, color, undo)
        except PipelineError as exc:
            failures = []
            for step in reversed(undo):
                try:
                    step()
                except PipelineError as again:
                    failures.append(str(again))
            where = "traffic put back" if not failures else "COULD NOT put traffic back: " + "; ".join(failures)
            raise PipelineError(f"switch to {color} failed ({where}): {exc}") from exc

    def _retarget_hpa(self, service: str, color: Color, undo: list[Callable[[], None]]) -> None:
        try:
            hpa = self._call("read", "HorizontalPodAutoscaler", service,
                             lambda: self.api.read_hpa(self.namespace, service))
        except PipelineError as exc:
            if self._is_missing(exc):
                return  # no autoscaler for this service
            raise
        before = hpa.get("spec", {}).get("scaleTargetRef", {}).get("name")
        if before == deployment_name(service, color):
            return

        def patch(target: Color) -> None:
            body = hpa_patch(service, target)
            self._call("patch", "HorizontalPodAutoscaler", service,
                       lambda: self.api.patch_hpa(self.namespace, service, body))

        patch(color)
        if before in (deployment_name(service, "blue"), deployment_name(service, "green")):
            previous: Color = "blue" if before == deployment_name(service, "blue") else "green"
            undo.append(lambda: patch(previous))

    def stop_color(self, color: Color) -> None:
        """Scale the Deployments of `color` to 0; spec and image stay (rollback = restart_color)."""
        for service in self.services:
            current = self._deployment(service, color)
            count = int(current.get("spec", {}).get("replicas") or 0)
            if count > 0:
                self._patch_deployment(deployment_name(service, color), scale_patch(0, record=count))

    def restart_color(self, color: Color) -> None:
        """Scale the kept Deployments of `color` back to the count they had when stopped."""
        state = self.load_state()
        if not self.version_of(color):
            raise RolloutAborted(f"no kept release on {color} in {self.namespace}: nothing to restart")
        for service in self.services:
            current = self._deployment(service, color)
            count = recorded_replicas(current) or desired_replicas(service, state, self.env, 0)
            if int(current.get("spec", {}).get("replicas") or 0) != count:
                self._patch_deployment(deployment_name(service, color), scale_patch(count))

    def remove_color(self, color: Color) -> None:
        """Scale `color` to 0. Nothing is deleted: the objects belong to the kustomize overlay."""
        self.stop_color(color)

    # ---------------------------------------------------------------- one-off jobs
    def run_once(self, image: str, argv: list[str], service: str, version: str) -> str:
        """Run `argv` (migrations) as a Job of `image` with the service's pod settings; return its log.

        RolloutAborted naming the Job with the tail of its pod's log if it fails or outlives
        `timing.job_timeout`.
        """
        name = job_name(service, version, self.timing.job_suffix())
        body = migration_job(self._deployment(service, "blue"), service, image, argv, version, name,
                             deadline_seconds=int(self.timing.job_timeout))
        self._call("create", "Job", name, lambda: self.api.create_job(self.namespace, body), retry=False)
        deadline = self.timing.clock() + self.timing.job_timeout
        while True:
            job = self._call("read", "Job", name, lambda: self.api.read_job(self.namespace, name))
            outcome, reason = job_outcome(job)
            if outcome == "succeeded":
                return self._job_log(name, 200)
            if outcome == "failed" or self.timing.clock() >= deadline:
                why = reason if outcome == "failed" else f"still running after {self.timing.job_timeout:.0f}s"
                raise RolloutAborted(f"migration Job {self.namespace}/{name} failed: {why}\n"
                                     f"{tail(self._job_log(name, 20), 8) or '(no log)'}")
            self.timing.sleep(self.timing.poll_interval)

    def _job_log(self, job: str, lines: int) -> str:
        try:
            pods = self._pods(f"job-name={job}")
            if not pods:
                return ""
            pod = sorted(pods, key=lambda p: str(p.get("metadata", {}).get("creationTimestamp", "")))[-1]
            pod_name = pod["metadata"]["name"]
            return self._call("read", "Pod log", pod_name,
                              lambda: self.api.read_pod_log(self.namespace, pod_name, lines))
        except PipelineError as exc:
            return f"(log not readable: {exc})"

    # ---------------------------------------------------------------- the docker target's other duties
    def ensure_database(self) -> None:
        """Nothing to do: the database is outside the cluster (RDS) or a StatefulSet of the overlay."""

    def access_log_size(self) -> int:
        """0: no router log here; the watch window relies on its smoke checks (error rates are in Prometheus)."""
        return 0

    def statuses_since(self, offset: int, color: Color) -> list[int]:
        """[]: see `access_log_size`."""
        return []

    def teardown(self) -> None:
        """Close the API connection. Nothing in the cluster is deleted (the overlay owns the objects)."""
        self.api.close()
