"""The `kubernetes` target: two Deployments per service, the live Service's `spec.selector.color` is the switch.

Layout (infra/k8s, see docs/production.md), in namespace `sunday-ENV` unless told otherwise:

    Deployment SERVICE-blue / SERVICE-green   labels app=SERVICE, color=COLOR; the idle color runs 0 pods
    Service    SERVICE-blue / SERVICE-green   preview: smoke tests of one color
    Service    SERVICE                        live: selector {app: SERVICE, color: COLOR} — the traffic switch
    HPA        SERVICE                        scales the live color; retargeted on a switch

It implements `protocol.DeployTarget` (`start_color` → `wait_healthy` → smoke → `switch` → keep the old
color scaled to 0 for rollback). What the pipeline writes on the Deployments:

    spec.template annotation + label `sunday.version`   the release running on that color
    metadata annotation `sunday.replicas`               the replica count before a stop (for restart_color)

Three modules: `kube_decisions` (pure: patch bodies, rollout judgement, error messages), `kube_api`
(the `KubeApi` seam: `KubernetesApi` for a real cluster, a fake in the tests) and this one, which
reads objects, asks the decisions and sends what they say. API errors become `PipelineError`s naming
the object and the HTTP status; 409/429/5xx (and connection failures) are retried with backoff.

The release history lives in the cluster, so every worker sees the same: ConfigMap
`sunday-release-state` of the namespace, key `state.json` (created empty by the overlay, labelled
`sunday-release/project` and `sunday-release/env`; one labelled for another project is refused).
Beside it, key `config.json` holds the environment's last config (the one of the last save), so a
worker with nothing on its disk can rebuild the target (`read_saved_config`). Both keys are written
with one JSON merge patch of those keys only; the history is trimmed to the newest 100 releases (plus the
live one and the rollback target) and 512 KiB (`sunday_release.history`). The local
`SUNDAY_HOME/projects/PROJECT/envs/ENV/state.json` is a copy for people, written after each save and
never read: when the API does not answer, loading fails after three tries.
Capabilities: `database()` is the environment's PostgreSQL named by `environments.ENV.database_url_secret`
(a Prefect Secret block holding its URL), for the backup step; `ports()` is None (no host port);
`traffic_log()` is None (the error rate lives in Prometheus, not wired to the pipeline yet): the watch
window relies on the smoke checks.
"""

from __future__ import annotations

import functools
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import SecretStr

from sunday_release import validate
from sunday_release.bluegreen import Color, EnvState
from sunday_release.config import Environment, PipelineConfig
from sunday_release.errors import InputError, PipelineError, RolloutAborted
from sunday_release.history import encode_state, trim_state
from sunday_release.preview import preview_number
from sunday_release.runner import tail
from sunday_release.targets.kube_api import KubeApi, KubernetesApi
from sunday_release.targets.kube_decisions import (
    RETRYABLE_STATUS,
    STATE_CONFIGMAP,
    Obj,
    api_error_message,
    config_from_configmap,
    deployment_name,
    desired_replicas,
    hpa_patch,
    job_name,
    job_outcome,
    migration_job,
    pod_failure,
    recorded_replicas,
    rollout_status,
    scale_patch,
    selected_color,
    selector_patch,
    start_patch,
    state_from_configmap,
    state_owner_problem,
    state_patch,
    template_version,
    warning_events,
)
from sunday_release.targets.protocol import DatabaseAccess, DatabaseUrl, HostPorts, Replica, TrafficLog

if TYPE_CHECKING:
    from sunday_release.targets.protocol import DeployTarget

__all__ = ["KubernetesTarget", "Timing", "no_secret_reader", "read_saved_config", "substitute_cluster"]

T = TypeVar("T")


@dataclass
class Timing:
    """Injectable time: tests pass a fake clock and sleep so no test really waits."""

    poll_interval: float = 2.0
    retry_delays: Sequence[float] = (0.5, 2.0, 5.0)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    job_timeout: float = 600.0
    job_suffix: Callable[[], str] = field(default=lambda: secrets.token_hex(3))


@dataclass(frozen=True)
class _Substitute:
    api: KubeApi
    timing: Timing | None


_substitute: _Substitute | None = None
_substitute_lock = threading.Lock()


@contextmanager
def substitute_cluster(api: KubeApi, timing: Timing | None = None) -> Iterator[None]:
    """Inside the block, targets made without `api=` talk to `api` (and wait with `timing`), not to a cluster.

    The seam that runs whole flows (`make_target` builds the target inside them) against a fake API
    server: the tests' `FakeKubernetesApi`. Process-wide, since a flow's tasks may run in other
    threads; one block at a time (PipelineError when nested).
    """
    global _substitute
    with _substitute_lock:
        if _substitute is not None:
            raise PipelineError("substitute_cluster: another block already substitutes the cluster")
        _substitute = _Substitute(api, timing)
    try:
        yield
    finally:
        with _substitute_lock:
            _substitute = None


def no_secret_reader(name: str) -> SecretStr:
    """The secret reader of a target made without one: every read is refused, naming the secret."""
    raise PipelineError(f"the secret {name!r} cannot be read: this target was made without a secret reader "
                        "(the flows pass the Prefect Secret block reader)")


STATE_TRIES = 3  # reads of the state ConfigMap before a load or save gives up


def _call_api(timing: Timing, namespace: str, verb: str, kind: str, name: str, fn: Callable[[], T], *,
              retry: bool = True, tries: int | None = None) -> T:
    """One API call; retried on 409/429/5xx/no answer when `retry` (at most `tries` calls in all when
    given, else one per `timing.retry_delays` and one more); PipelineError naming the object."""
    from kubernetes.client import ApiException

    delays = list(timing.retry_delays) if retry else []
    if tries is not None:
        delays = delays[:max(tries - 1, 0)]
    while True:
        try:
            return fn()
        except ApiException as exc:
            if delays and (exc.status or 0) in RETRYABLE_STATUS:
                delay = delays.pop(0)
                timing.sleep(delay * random.uniform(0.8, 1.2))
                continue
            raise PipelineError(api_error_message(exc, verb, kind, namespace, name)) from exc


def _state_configmap(api: KubeApi, timing: Timing, namespace: str, project: str, env: str, doing: str) -> Obj:
    """The state ConfigMap of `project/env`, checked to be theirs; `STATE_TRIES` tries, then a PipelineError.

    Raises:
        InputError: it does not exist, or its labels name another project or environment.
        PipelineError: the API did not answer (or refused) `STATE_TRIES` times.
    """
    where = f"{project}/{env}"
    try:
        configmap = _call_api(timing, namespace, "read", "ConfigMap", STATE_CONFIGMAP,
                              lambda: api.read_config_map(namespace, STATE_CONFIGMAP), tries=STATE_TRIES)
    except PipelineError as exc:
        status = getattr(exc.__cause__, "status", None) or 0
        if status == 404:
            raise InputError(f"cannot {doing} of {where}: ConfigMap {namespace}/"
                             f"{STATE_CONFIGMAP} does not exist; apply the environment's overlay "
                             f"(infra/k8s/{env}), which creates it") from exc
        tried = f"gave up after {STATE_TRIES} tries; " if status in RETRYABLE_STATUS else ""
        raise PipelineError(f"cannot {doing} of {where} ({tried}the local state.json "
                            f"is only a copy and is not used): {exc}") from exc
    configmap.setdefault("metadata", {}).setdefault("namespace", namespace)
    problem = state_owner_problem(configmap, project, env)
    if problem:
        raise InputError(f"cannot {doing} of {where}: {problem}")
    return configmap


def read_saved_config(project: str, env: str, *, context: str | None = None, namespace: str | None = None,
                      api: KubeApi | None = None, timing: Timing | None = None) -> PipelineConfig | None:
    """The config of the last deploy of `project/env` as the cluster keeps it (key `config.json` of the
    state ConfigMap of namespace `sunday-ENV`), for a worker with nothing on its disk; None if none yet.

    `api` None: the cluster of kube `context` (in a pod without one, its ServiceAccount), or the one
    `substitute_cluster` names.
    """
    project, env = validate.name(project, "--project"), validate.name(env, "--env")
    substitute = _substitute if api is None else None
    if substitute is not None:
        api, timing = substitute.api, timing or substitute.timing
    client: KubeApi = api if api is not None else KubernetesApi.from_context(context)
    try:
        configmap = _state_configmap(client, timing or Timing(), namespace or f"sunday-{env}", project, env,
                                     "read the last config")
        return config_from_configmap(configmap)
    finally:
        if api is None:
            client.close()


class KubernetesTarget:
    """Blue-green on a Kubernetes namespace; the live Services' selectors say which color is live.

    `url` is the entry point the watch window probes: the in-cluster DNS name of the live Service of
    the service routed at `/` (`http://frontend.sunday-ENV.svc`), or `url=` (e.g. the Ingress's
    host). Replica endpoints are the preview Services (`SERVICE-COLOR.NAMESPACE.svc:PORT`), so smoke
    tests must run inside the cluster (the k8s work pool), with a NetworkPolicy that lets them in.
    """

    def __init__(self, config: PipelineConfig, env_name: str, env: Environment, home: Path,
                 api: KubeApi | None = None, namespace: str | None = None, *, url: str | None = None,
                 timing: Timing | None = None, read_secret: Callable[[str], SecretStr] = no_secret_reader,
                 root: Path | None = None) -> None:
        """`api` None: the cluster of `env.kube_context` (or the one `substitute_cluster` names).

        `root` is the environment's local directory (Settings.env_dir: ENV_ROOT/PROJECT/ENV) for the copies
        of the state and config; default HOME/projects/PROJECT/envs/ENV.

        `read_secret` reads a secret by name (the flows pass the Prefect Secret block reader), for `database()`.
        """
        self.config, self.env_name, self.env = config, validate.name(env_name, "--env"), env
        self.project = validate.name(config.project, "project")
        self.namespace = namespace or f"sunday-{env_name}"
        self.root = root or home / "projects" / self.project / "envs" / env_name
        self.state_path = self.root / "state.json"
        substitute = _substitute if api is None else None
        if substitute is not None:
            api, timing = substitute.api, timing or substitute.timing
        self.api: KubeApi = api if api is not None else KubernetesApi.from_context(env.kube_context)
        self.timing = timing or Timing()
        self._url = url
        self._ports: dict[str, int] = {}
        self._read_secret = read_secret

    @property
    def key(self) -> str:
        """`project/env`: what the environment's lock, local state and artifacts derive from."""
        return f"{self.project}/{self.env_name}"

    @property
    def services(self) -> list[str]:
        """The services of the config: each has two Deployments, two preview Services and a live Service."""
        return list(self.config.services)

    # ---------------------------------------------------------------- state
    def _state_configmap(self, doing: str) -> Obj:
        return _state_configmap(self.api, self.timing, self.namespace, self.project, self.env_name, doing)

    def load_state(self) -> EnvState:
        """The release history from the cluster (the state ConfigMap); never the local copy."""
        return state_from_configmap(self._state_configmap("load the release history"), self.env_name)

    def saved_config(self) -> PipelineConfig | None:
        """The config the last `save_state` stored beside the history; None before the first."""
        return config_from_configmap(self._state_configmap("read the last config"))

    def load_config(self) -> PipelineConfig | None:
        """The environment's last config as the cluster keeps it (the state ConfigMap)."""
        return self.saved_config()

    def save_config(self) -> None:
        """The cluster's copy is written with every `save_state`; here the cache file ROOT/config.json."""
        path = self.root / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.config.model_dump_json())
        tmp.replace(path)

    def save_state(self, state: EnvState) -> None:
        """Store `state` (trimmed) and the target's config (the environment's last config) in the state
        ConfigMap with one merge patch of their two keys, then the local copy of the state."""
        self._state_configmap("save the release history")
        trimmed = trim_state(state)
        body = state_patch(encode_state(trimmed), self.config.model_dump_json())
        self._call("patch", "ConfigMap", STATE_CONFIGMAP,
                   lambda: self.api.patch_config_map(self.namespace, STATE_CONFIGMAP, body))
        trimmed.save(self.state_path)

    @property
    def url(self) -> str:
        if self._url:
            return self._url
        routed = [name for name, spec in self.config.services.items() if spec.route == "/"]
        return f"http://{(routed or self.services)[0]}.{self.namespace}.svc"

    # ---------------------------------------------------------------- API calls
    def _call(self, verb: str, kind: str, name: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """One API call; retried on 409/429/5xx/no answer when `retry`; PipelineError naming the object."""
        return _call_api(self.timing, self.namespace, verb, kind, name, fn, retry=retry)

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
            spec = self.config.services[service]
            metrics = (spec.metrics_path, spec.port) if spec.metrics_path else None
            self._patch_deployment(deployment_name(service, color), start_patch(current, service, image, version,
                                                                                count, metrics))

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

    # ---------------------------------------------------------------- database and traffic
    def use_secrets(self, values: Mapping[str, Mapping[str, SecretStr]]) -> None:
        """Refused when there are any: the kubernetes target does not hand a service's `secrets:` to its pods yet
        (docs/secrets.md: the External Secrets Operator's ExternalSecret does it in the cluster)."""
        named = sorted(f"{service}.{name}" for service, found in values.items() for name in found)
        if named:
            raise PipelineError(f"{self.key}: services' `secrets:` ({', '.join(named)}) are not handed to pods by the "
                                "kubernetes target yet: sync them into the namespace with the External Secrets "
                                "Operator (docs/secrets.md) and leave them out of `secrets:`")

    def ensure_database(self) -> None:
        """Nothing to do: the database is outside the cluster (RDS) or a StatefulSet of the overlay."""

    def database(self) -> DatabaseAccess | None:
        """The environment's PostgreSQL, reached by the URL in the Secret `environments.ENV.database_url_secret`.

        None when the config names no such secret (a deploy that requires a backup then stops before
        anything starts). The URL is read only when the backup connects, and never logged.
        """
        block = self.env.database_url_secret
        if block is None:
            return None
        read = self._read_secret
        return DatabaseUrl(f"the database of {self.env_name} (URL in the Secret block {block!r})",
                           lambda: read(block))

    def ports(self) -> HostPorts | None:
        """None: the cluster's Services listen, no port of this machine."""
        return None

    def traffic_log(self) -> TrafficLog | None:
        """None: no router log here; the watch window relies on its smoke checks (error rates are in Prometheus)."""
        return None

    def restorable(self) -> None:
        """None: the services' database URL is the environment's Secret, which a restore on the cluster changes
        (docs/backups.md); the pipeline does not point pods at another database."""
        return None

    def teardown(self) -> None:
        """Close the API connection. Nothing in the cluster is deleted (the overlay owns the objects)."""
        self.api.close()

    # ---------------------------------------------------------------- previews (flows/preview.py)
    def provision(self, objects: list[Obj]) -> int:
        """Apply a pull request's preview objects (`kube_preview.preview_manifests`, the Namespace first); the
        number applied. Only into this target's own namespace, and only for a preview environment."""
        self._only_a_preview("provision")
        for obj in objects:
            where = obj["metadata"]["name"] if obj["kind"] == "Namespace" else obj["metadata"].get("namespace")
            if where != self.namespace:
                raise PipelineError(f"refusing to apply {obj['kind']}/{obj['metadata']['name']} into {where!r}: "
                                    f"the preview's namespace is {self.namespace}")
            self._call("apply", obj["kind"], obj["metadata"]["name"], functools.partial(self.api.apply, obj))
        return len(objects)

    def destroy(self) -> None:
        """Delete the preview's namespace and everything in it (its database included)."""
        self._only_a_preview("destroy")
        self._call("delete", "Namespace", self.namespace, lambda: self.api.delete_namespace(self.namespace))

    def _only_a_preview(self, doing: str) -> None:
        if preview_number(self.env_name) is None or self.namespace != f"sunday-{self.env_name}":
            raise PipelineError(f"{doing}: {self.key} (namespace {self.namespace}) is not a pull request's preview; "
                                "the pipeline creates and deletes only those namespaces")


if TYPE_CHECKING:
    def _implements_the_protocol(target: KubernetesTarget) -> DeployTarget:
        return target  # mypy: KubernetesTarget is a DeployTarget
