"""FakeKubernetesApi: an in-process FAKE of the Kubernetes API for the kubernetes target's tests.

No API server (kind, k3s, envtest) can run on these machines, so this stands in for one at the level
of the target's `KubeApi` seam. It holds the real objects of a rendered overlay as dicts and
simulates what the controllers would do: a Deployment whose spec changes rolls out over a few
`tick()`s (the target's injected `sleep` ticks), pods and their Warning events are derived from
that, Jobs finish after a few reads. ConfigMaps (the release history `sunday-release-state`) are
read and JSON-merge-patched; a patch that would make one larger than 1 MiB is refused with 422, as
the API server does. Faults are switched on per test.
"""

from __future__ import annotations

import json
import subprocess
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiException

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"
CONFIGMAP_LIMIT = 1024 * 1024  # bytes of the object as JSON (UTF-8): the API server refuses larger ConfigMaps (422)


def render_overlay(overlay: str = "production") -> list[Obj]:
    """The objects of `infra/k8s/OVERLAY`, rendered by `kubectl kustomize`."""
    out = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "infra" / "k8s" / overlay)], check=True,
                         capture_output=True, text=True, timeout=60)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def api_error(status: int, reason: str, message: str) -> ApiException:
    """An ApiException as the client raises it: status, reason and a Status body."""
    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return exc


def strategic_merge(target: Obj, patch: Obj) -> None:
    """Strategic merge as the API server does it for what the target patches: maps merge, lists of
    named items (containers, env) merge by name, other lists are replaced, null deletes a key."""
    for key, value in patch.items():
        current = target.get(key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            strategic_merge(current, value)
        elif (isinstance(value, list) and isinstance(current, list)
              and all(isinstance(v, dict) and "name" in v for v in [*value, *current])):
            by_name = {item["name"]: item for item in current}
            for item in value:
                if item["name"] in by_name:
                    strategic_merge(by_name[item["name"]], item)
                else:
                    current.append(deepcopy(item))
        else:
            target[key] = deepcopy(value)


def json_merge_patch(target: Obj, patch: Obj) -> None:
    """RFC 7386 JSON merge patch, in place: maps merge, null deletes a key, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            current = target.get(key)
            if not isinstance(current, dict):
                current = target[key] = {}
            json_merge_patch(current, value)
        else:
            target[key] = deepcopy(value)


def match_labels(labels: dict[str, str], selector: str) -> bool:
    """`k=v,k2=v2` label selectors (equality only)."""
    wanted = [part.split("=", 1) for part in selector.split(",") if part]
    return all(labels.get(k) == v for k, v in wanted)


@dataclass
class _Rollout:
    ticks_left: int  # ticks until the new pods are ready (good image)
    age: int = 0  # ticks since the spec changed


@dataclass
class FakeKubernetesApi:
    """A FAKE Kubernetes API (no API server can be installed here); see the module docstring.

    Faults:
        crashing_images: pods of these images crash (CrashLoopBackOff, "Back-off restarting failed container").
        unpullable_images: pods of these images cannot pull (ImagePullBackOff).
        stuck_images: pods never become ready; after `progress_deadline_ticks` the Deployment's
            Progressing condition turns False with ProgressDeadlineExceeded.
        fail_next(verb, kind, status, times, name): the next `times` matching calls answer `status`.
        failing_jobs: image → log: a Job of that image fails and its pod logged that text.
    """

    objects: list[Obj]
    namespace: str = "sunday-production"
    ticks_to_ready: int = 3
    progress_deadline_ticks: int | None = None
    job_ticks: int = 2
    crashing_images: set[str] = field(default_factory=set)
    unpullable_images: set[str] = field(default_factory=set)
    stuck_images: set[str] = field(default_factory=set)
    failing_jobs: dict[str, str] = field(default_factory=dict)
    now: float = 0.0
    calls: list[tuple[str, str, str, Any]] = field(default_factory=list)  # (verb, kind, name, body)
    jobs: dict[str, Obj] = field(default_factory=dict)
    closed: bool = False

    def __post_init__(self) -> None:
        self.store: dict[tuple[str, str], Obj] = {}
        self._rollouts: dict[str, _Rollout] = {}
        self._faults: list[list[Any]] = []
        self._job_reads: dict[str, int] = {}
        self.applied: dict[tuple[str, str], Obj] = {}
        for obj in deepcopy(self.objects):
            if obj["kind"] not in ("Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"):
                continue
            self._seed(obj)
            self.store[(obj["kind"], obj["metadata"]["name"])] = obj

    def _seed(self, obj: Obj) -> None:
        """An object as the API server keeps it: in the namespace, version 1, a Deployment rolled out."""
        obj["metadata"].setdefault("namespace", self.namespace)
        obj["metadata"]["resourceVersion"] = "1"
        if obj["kind"] == "Deployment":
            obj["metadata"]["generation"] = 1
            n = obj["spec"].get("replicas", 1)
            obj["status"] = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                             "availableReplicas": n, "conditions": [self._progressing(True, "NewReplicaSetAvailable")]}

    @classmethod
    def from_overlay(cls, overlay: str = "production", **kwargs: Any) -> FakeKubernetesApi:
        """Seeded from the rendered overlay: the real Deployments, Services and HPAs."""
        return cls(render_overlay(overlay), namespace=f"sunday-{overlay}", **kwargs)

    # ------------------------------------------------------------ test controls
    def fail_next(self, verb: str, kind: str, status: int, times: int = 1, name: str | None = None) -> None:
        """Answer the next `times` calls `verb` on `kind` (and `name`) with HTTP `status`."""
        self._faults.append([verb, kind, name, status, times])

    def sleep(self, seconds: float) -> None:
        """The target's injected sleep: simulated time passes and the controllers tick."""
        self.now += seconds
        self.tick()

    def clock(self) -> float:
        return self.now

    def obj(self, kind: str, name: str) -> Obj:
        return self.store[(kind, name)]

    def patches(self, kind: str | None = None) -> list[tuple[str, Obj]]:
        """(name, body) of every successful patch, in order."""
        return [(name, body) for verb, k, name, body in self.calls if verb == "patch" and kind in (None, k)]

    def tick(self) -> None:
        """One step of the Deployment controller for every Deployment with a rollout in flight."""
        for name, rollout in list(self._rollouts.items()):
            dep = self.store[("Deployment", name)]
            desired = dep["spec"].get("replicas", 1)
            image = self._image(dep)
            status = dep["status"]
            status["observedGeneration"] = dep["metadata"]["generation"]
            rollout.age += 1
            status["replicas"] = desired
            status["updatedReplicas"] = desired
            if image in self.crashing_images | self.unpullable_images | self.stuck_images:
                status["readyReplicas"] = status["availableReplicas"] = 0
                if self.progress_deadline_ticks is not None and rollout.age >= self.progress_deadline_ticks:
                    status["conditions"] = [self._progressing(
                        False, "ProgressDeadlineExceeded", f'ReplicaSet "{name}-7d4b9" has timed out progressing.')]
                    del self._rollouts[name]
                continue
            rollout.ticks_left -= 1
            if rollout.ticks_left <= 0 or desired == 0:
                status["readyReplicas"] = status["availableReplicas"] = desired
                status["conditions"] = [self._progressing(True, "NewReplicaSetAvailable")]
                del self._rollouts[name]
            else:
                status["readyReplicas"] = status["availableReplicas"] = desired // 2

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _progressing(ok: bool, reason: str, message: str = "") -> Obj:
        return {"type": "Progressing", "status": "True" if ok else "False", "reason": reason, "message": message}

    @staticmethod
    def _image(dep: Obj) -> str:
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

    def _record(self, verb: str, kind: str, name: str, body: Any = None) -> None:
        for fault in self._faults:
            f_verb, f_kind, f_name, status, times = fault
            if times > 0 and f_verb == verb and f_kind == kind and f_name in (None, name):
                fault[4] -= 1
                reason = {409: "Conflict", 500: "Internal Server Error", 503: "Service Unavailable",
                          403: "Forbidden"}.get(status, "Error")
                raise api_error(status, reason, f"{kind.lower()} {name!r}: simulated {status}")
        self.calls.append((verb, kind, name, deepcopy(body)))

    def _get(self, kind: str, namespace: str, name: str) -> Obj:
        obj = self.store.get((kind, name))
        if obj is None or namespace != obj["metadata"]["namespace"]:
            raise api_error(404, "Not Found", f'{kind.lower()}s "{name}" not found')
        return obj

    @staticmethod
    def merge(kind: str, obj: Obj, body: Obj) -> None:
        """Apply a patch of `kind` as the API server would: ConfigMaps get JSON merge patches (what the
        target sends them), the other kinds strategic-merge patches."""
        (json_merge_patch if kind == "ConfigMap" else strategic_merge)(obj, body)

    def _patch(self, kind: str, namespace: str, name: str, body: Obj) -> Obj:
        self._record("patch", kind, name, body)
        obj = self._get(kind, namespace, name)
        before = deepcopy(obj.get("spec"))
        if kind == "ConfigMap":
            patched = deepcopy(obj)
            json_merge_patch(patched, body)
            size = len(json.dumps(patched, ensure_ascii=False).encode())
            if size > CONFIGMAP_LIMIT:
                self.calls.pop()  # refused: not a successful patch
                raise api_error(422, "Unprocessable Entity", f'ConfigMap "{name}" is invalid: []: Too long: '
                                                             f"must have at most {CONFIGMAP_LIMIT} bytes")
        self.merge(kind, obj, body)
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        if kind == "Deployment" and obj["spec"] != before:
            obj["metadata"]["generation"] += 1
            template_changed = obj["spec"]["template"] != before["template"]
            if template_changed or obj["spec"].get("replicas", 1) > obj["status"].get("readyReplicas", 0):
                if template_changed:
                    obj["status"]["updatedReplicas"] = 0
                    obj["status"]["readyReplicas"] = obj["status"]["availableReplicas"] = 0
                self._rollouts[name] = _Rollout(self.ticks_to_ready)
            else:  # scale down: immediate on the next read
                self._rollouts[name] = _Rollout(0)
        return deepcopy(obj)

    # ------------------------------------------------------------ KubeApi
    def read_deployment(self, namespace: str, name: str) -> Obj:
        self._record("read", "Deployment", name)
        return deepcopy(self._get("Deployment", namespace, name))

    def patch_deployment(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._patch("Deployment", namespace, name, body)

    def read_service(self, namespace: str, name: str) -> Obj:
        self._record("read", "Service", name)
        return deepcopy(self._get("Service", namespace, name))

    def patch_service(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._patch("Service", namespace, name, body)

    def read_hpa(self, namespace: str, name: str) -> Obj:
        self._record("read", "HorizontalPodAutoscaler", name)
        return deepcopy(self._get("HorizontalPodAutoscaler", namespace, name))

    def patch_hpa(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._patch("HorizontalPodAutoscaler", namespace, name, body)

    def _deployment_pods(self, dep: Obj) -> list[Obj]:
        name, image = dep["metadata"]["name"], self._image(dep)
        labels = dict(dep["spec"]["template"]["metadata"].get("labels") or {})
        ready = dep["status"].get("readyReplicas", 0)
        pods = []
        for i in range(dep["spec"].get("replicas", 1)):
            container: Obj = {"name": dep["spec"]["template"]["spec"]["containers"][0]["name"], "image": image,
                              "ready": i < ready, "restartCount": 0}
            if image in self.crashing_images:
                container.update(restartCount=4, state={"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off 40s restarting failed container={container['name']}"}})
            elif image in self.unpullable_images:
                container["state"] = {"waiting": {"reason": "ImagePullBackOff",
                                                  "message": f'Back-off pulling image "{image}"'}}
            elif i < ready:
                container["state"] = {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
            else:
                container["state"] = {"waiting": {"reason": "ContainerCreating"}}
            pods.append({"metadata": {"name": f"{name}-7d4b9-{i:05d}", "namespace": self.namespace,
                                      "labels": {**labels, "pod-template-hash": "7d4b9"},
                                      "creationTimestamp": f"2025-01-01T00:00:{i:02d}Z"},
                         "status": {"phase": "Running", "containerStatuses": [container]}})
        return pods

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        self._record("list", "Pod", label_selector)
        pods = [p for (kind, _), dep in self.store.items() if kind == "Deployment"
                for p in self._deployment_pods(dep)]
        pods += [p for job in self.jobs.values() for p in job["_pods"]]
        return [deepcopy({k: v for k, v in p.items()}) for p in pods
                if p["metadata"]["namespace"] == namespace and match_labels(p["metadata"]["labels"], label_selector)]

    def list_events(self, namespace: str, field_selector: str) -> list[Obj]:
        self._record("list", "Event", field_selector)
        events = []
        for (kind, _), dep in self.store.items():
            if kind != "Deployment":
                continue
            image = self._image(dep)
            for i, pod in enumerate(self._deployment_pods(dep)):
                pod_name = pod["metadata"]["name"]
                if image in self.crashing_images:
                    events.append(self._event(pod_name, "BackOff", "Back-off restarting failed container "
                                              f"{pod['status']['containerStatuses'][0]['name']} in pod {pod_name}", i))
                elif image in self.unpullable_images:
                    events.append(self._event(pod_name, "Failed", f'Failed to pull image "{image}": not found', i))
                    events.append(self._event(pod_name, "Failed", "Error: ImagePullBackOff", i, second=30))
        wanted = dict(part.split("=", 1) for part in field_selector.split(",") if part)
        return [e for e in events if all(
            (e["type"] if key == "type" else e["involvedObject"].get(key.removeprefix("involvedObject."))) == value
            for key, value in wanted.items())]

    def _event(self, pod: str, reason: str, message: str, i: int, second: int = 10) -> Obj:
        return {"type": "Warning", "reason": reason, "message": message, "count": 3,
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": self.namespace},
                "lastTimestamp": f"2025-01-01T00:{i:02d}:{second:02d}Z",
                "metadata": {"name": f"{pod}.{reason}", "namespace": self.namespace}}

    def create_job(self, namespace: str, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        self._record("create", "Job", name, body)
        if name in self.jobs:
            raise api_error(409, "Conflict", f'jobs.batch "{name}" already exists')
        job = deepcopy(body)
        job["metadata"]["namespace"] = namespace
        job["status"] = {"active": 1}
        job["_pods"] = [{"metadata": {"name": f"{name}-x7k2p", "namespace": namespace,
                                      "labels": {"job-name": name, **job["spec"]["template"]["metadata"]["labels"]},
                                      "creationTimestamp": "2025-01-01T00:00:00Z"},
                         "status": {"phase": "Running"}}]
        self.jobs[name] = job
        self._job_reads[name] = 0
        return {k: v for k, v in job.items() if k != "_pods"}

    def read_job(self, namespace: str, name: str) -> Obj:
        self._record("read", "Job", name)
        job = self.jobs.get(name)
        if job is None:
            raise api_error(404, "Not Found", f'jobs.batch "{name}" not found')
        self._job_reads[name] += 1
        if self._job_reads[name] >= self.job_ticks and job["status"].get("active"):
            image = job["spec"]["template"]["spec"]["containers"][0]["image"]
            if image in self.failing_jobs:
                failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                          "message": "Job has reached the specified backoff limit"}
                job["status"] = {"failed": 1, "conditions": [failed]}
                job["_pods"][0]["status"]["phase"] = "Failed"
            else:
                job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
                job["_pods"][0]["status"]["phase"] = "Succeeded"
        return {k: deepcopy(v) for k, v in job.items() if k != "_pods"}

    def read_pod_log(self, namespace: str, name: str, tail_lines: int) -> str:
        self._record("read", "Pod log", name)
        for job in self.jobs.values():
            if job["_pods"][0]["metadata"]["name"] == name:
                image = job["spec"]["template"]["spec"]["containers"][0]["image"]
                text = self.failing_jobs.get(image, "applying 0007_add_boards... ok\nmigrations: 1 applied\n")
                return "\n".join(text.splitlines()[-tail_lines:]) + "\n"
        raise api_error(404, "Not Found", f'pods "{name}" not found')

    def read_config_map(self, namespace: str, name: str) -> Obj:
        self._record("read", "ConfigMap", name)
        return deepcopy(self._get("ConfigMap", namespace, name))

    def patch_config_map(self, namespace: str, name: str, body: Obj) -> Obj:
        return self._patch("ConfigMap", namespace, name, body)

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply: kinds the target reads are stored (a new Deployment is at once as ready as its
        replicas); every object is recorded in `applied`. Objects of another namespace than the fake's are
        refused (one namespace per fake)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        self._record("apply", kind, name, obj)
        namespace = obj["metadata"].get("namespace", self.namespace)
        if kind != "Namespace" and namespace != self.namespace:
            raise api_error(403, "Forbidden", f"{kind.lower()} {name!r} in namespace {namespace!r}: this fake "
                                              f"serves {self.namespace!r}")
        self.applied[(kind, name)] = deepcopy(obj)
        if kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"):
            existing = self.store.get((kind, name))
            if existing is not None:
                self.merge(kind, existing, {k: v for k, v in obj.items() if k not in ("metadata", "status")})
                return deepcopy(existing)
            stored = deepcopy(obj)
            self._seed(stored)
            self.store[(kind, name)] = stored
        return deepcopy(obj)

    def delete_namespace(self, name: str) -> bool:
        self._record("delete", "Namespace", name)
        if name != self.namespace or not (self.store or self.applied):
            return False
        self.store.clear()
        self.applied.clear()
        self._rollouts.clear()
        return True

    def close(self) -> None:
        self.closed = True
