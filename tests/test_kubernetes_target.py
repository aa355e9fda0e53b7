"""The kubernetes target: pure decisions, the blue-green protocol against FakeKubernetesApi, one opt-in real read."""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Iterator
from copy import deepcopy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import SecretStr, ValidationError

from sunday_release.bluegreen import EnvState, Release
from sunday_release.config import Environment, PipelineConfig, Service
from sunday_release.errors import InputError, PipelineError, RolloutAborted
from sunday_release.history import MAX_BYTES, MAX_RELEASES, encode_state, rollback_target, trim_state
from sunday_release.settings import Settings
from sunday_release.targets import make_target
from sunday_release.targets.kube_api import KubernetesApi
from sunday_release.targets.kube_decisions import (
    api_error_message,
    config_from_configmap,
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
    version_label,
    warning_events,
)
from sunday_release.targets.kubernetes import KubernetesTarget, Timing, read_saved_config, substitute_cluster
from sunday_release.targets.protocol import DeployTarget
from tests.fake_kube import CONFIGMAP_LIMIT, FakeKubernetesApi, Obj, api_error, render_overlay, strategic_merge
from tests.infra_checks import (
    K8S,
    RESOURCES,
    admission_request,
    admission_violations,
    find,
    rbac_allows,
    render_kustomize,
)

REG = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/sunday"
V1 = {"backend": f"{REG}/backend@sha256:{'1' * 64}", "frontend": f"{REG}/frontend@sha256:{'a' * 64}"}
V2 = {"backend": f"{REG}/backend@sha256:{'2' * 64}", "frontend": f"{REG}/frontend@sha256:{'b' * 64}"}


@pytest.fixture(scope="module")
def overlay() -> list[dict]:
    return render_overlay("production")


def deployment(overlay: list[dict], name: str) -> dict:
    return next(o for o in overlay if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


def make_config(**env: object) -> PipelineConfig:
    return PipelineConfig(
        project="sunday",
        services={"backend": Service(context="backend", port=8000, route="/api", migrate=["python3", "-m", "migrate"]),
                  "frontend": Service(context="frontend", port=8080, route="/")},
        environments={"production": Environment(target="kubernetes", kube_context="sunday-production", **env)},
    )


class Harness:
    """A target wired to a fake API whose simulated time the target's sleeps advance."""

    fake_class: ClassVar[type[FakeKubernetesApi]] = FakeKubernetesApi

    def __init__(self, overlay: list[dict], home: Path, **fake: object) -> None:
        self.api = self.fake_class(overlay, namespace="sunday-production", **fake)  # type: ignore[arg-type]
        self.sleeps: list[float] = []
        config = make_config()

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.api.sleep(seconds)

        self.target = KubernetesTarget(config, "production", config.environments["production"], home, api=self.api,
                                       timing=Timing(poll_interval=2.0, sleep=sleep, clock=self.api.clock,
                                                     job_timeout=60, job_suffix=lambda: "x1y2z3"))

    def selectors(self) -> dict[str, dict]:
        return {s: self.api.obj("Service", s)["spec"]["selector"] for s in ("backend", "frontend")}

    def release(self, color: str, images: dict[str, str], version: str) -> None:
        t = self.target
        t.start_color(color, images, version, t.load_state())  # type: ignore[arg-type]
        t.wait_healthy(color, 120)  # type: ignore[arg-type]
        t.switch(color)  # type: ignore[arg-type]


@pytest.fixture
def h(overlay: list[dict], tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(overlay, tmp_path)
    yield harness
    harness.target.teardown()
    assert harness.api.closed


# ============================================================== pure decisions
def dep(desired: int = 3, generation: int = 2, **status: object) -> dict:
    return {"metadata": {"name": "backend-green", "generation": generation}, "spec": {"replicas": desired},
            "status": status}


def test_rollout_status_judges_like_kubectl() -> None:
    ok = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}
    assert rollout_status(dep(**ok)).health == "healthy"
    assert rollout_status(dep(**{**ok, "observedGeneration": 1})).reason == \
        "the controller has not seen the latest spec yet"
    assert rollout_status(dep(**{**ok, "updatedReplicas": 1})).reason == "1 of 3 pods updated"
    assert rollout_status(dep(**{**ok, "replicas": 5})).reason == "2 old pods terminating"
    assert rollout_status(dep(**{**ok, "readyReplicas": 2})).health == "starting"
    assert rollout_status(dep(desired=0)).health == "exited"
    stalled = dep(**ok, conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                     "message": 'ReplicaSet "backend-green-1" has timed out progressing.'}])
    status = rollout_status(stalled)
    assert status.health == "failed" and status.reason.startswith("ProgressDeadlineExceeded: ReplicaSet")
    assert rollout_status({"metadata": {}, "spec": {}, "status": None}).health == "starting"  # fresh object


def test_start_patch_sets_image_of_container_and_migrate_init_container(overlay: list[dict]) -> None:
    green = deployment(overlay, "backend-green")
    body = start_patch(green, "backend", V2["backend"], "v1.4.0", 5)
    assert body == {
        "metadata": {"annotations": {"sunday.replicas": "5"}},
        "spec": {"replicas": 5, "template": {
            "metadata": {"annotations": {"sunday.version": "v1.4.0"}, "labels": {"sunday.version": "v1.4.0"}},
            "spec": {"containers": [{"name": "backend", "image": V2["backend"],
                                     "env": [{"name": "APP_VERSION", "value": "v1.4.0"}]}],
                     "initContainers": [{"name": "migrate", "image": V2["backend"]}]}}},
    }
    merged = json.loads(json.dumps(green))
    strategic_merge(merged, body)  # what the API server makes of it: nothing else of the spec changes
    pod = merged["spec"]["template"]["spec"]
    assert [e for e in pod["containers"][0]["env"] if e["name"] == "APP_VERSION"] == \
        [{"name": "APP_VERSION", "value": "v1.4.0"}]
    assert any(e["name"] == "DATABASE_URL" for e in pod["containers"][0]["env"])
    probe = green["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert pod["containers"][0]["readinessProbe"] == probe
    assert merged["spec"]["selector"] == green["spec"]["selector"]
    assert template_version(merged) == "v1.4.0"
    frontend = start_patch(deployment(overlay, "frontend-green"), "frontend", V2["frontend"], "v1.4.0", 3)
    assert "initContainers" not in frontend["spec"]["template"]["spec"]
    scraped = start_patch(green, "backend", V2["backend"], "v1.4.0", 5, ("/metrics", 8000))
    assert scraped["spec"]["template"]["metadata"]["annotations"] == {
        "sunday.version": "v1.4.0", "prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
        "prometheus.io/port": "8000"}


def test_small_pure_helpers() -> None:
    assert version_label("v1.2.3") == "v1.2.3"
    assert version_label("release/2025 01+hotfix") == "release-2025-01-hotfix"
    assert len(version_label("x" * 80)) == 63
    assert selector_patch("green") == {"spec": {"selector": {"color": "green"}}}
    assert hpa_patch("backend", "green")["spec"]["scaleTargetRef"]["name"] == "backend-green"
    assert selected_color({"spec": {"selector": {"app": "backend", "color": "green"}}}) == "green"
    assert selected_color({"spec": {"selector": {"app": "backend"}}}) is None
    assert scale_patch(0, record=5) == {"spec": {"replicas": 0}, "metadata": {"annotations": {"sunday.replicas": "5"}}}
    assert recorded_replicas({"metadata": {"annotations": {"sunday.replicas": "5"}}}) == 5
    assert recorded_replicas({"metadata": {}}) is None


def test_desired_replicas_precedence() -> None:
    env = Environment(target="kubernetes", replicas={"backend": 4})
    state = EnvState(env="production", replicas={"backend": 7})
    assert desired_replicas("backend", state, env, 5) == 7  # the scale flow's count
    assert desired_replicas("backend", None, env, 5) == 4  # the config's
    assert desired_replicas("frontend", state, env, 3) == 3  # the live color's: no 5 → 1 pod switch
    assert desired_replicas("frontend", state, env, 0) == 1


def pod(name: str, version: str, reason: str, where: str = "containerStatuses") -> dict:
    return {"metadata": {"name": name, "labels": {"sunday.version": version}},
            "status": {where: [{"name": "migrate" if where.startswith("init") else "backend",
                                "state": {"waiting": {"reason": reason, "message": "back-off 40s"}}}]}}


def test_pod_failure_names_pod_container_and_reason() -> None:
    assert pod_failure([pod("b-1", "v2", "ContainerCreating")], "v2") is None
    assert pod_failure([pod("b-1", "v2", "CrashLoopBackOff", "initContainerStatuses")], "v2") == \
        "pod b-1: init container migrate is CrashLoopBackOff: back-off 40s"
    assert pod_failure([pod("old", "v1", "ImagePullBackOff")], "v2") is None  # an older release's pod
    assert "ImagePullBackOff" in (pod_failure([pod("b-2", "v2", "ImagePullBackOff")]) or "")


def event(name: str, reason: str, at: str, kind: str = "Pod", type_: str = "Warning") -> dict:
    return {"type": type_, "reason": reason, "message": f"{reason} on {name}", "count": 1, "lastTimestamp": at,
            "involvedObject": {"kind": kind, "name": name}}


def test_warning_events_keep_the_latest_of_the_deployment() -> None:
    events = [event("backend-green-7d-1", "BackOff", "2025-01-01T00:00:03Z"),
              event("backend-green-7d-2", "Failed", "2025-01-01T00:00:01Z"),
              event("backend-green-7d", "FailedCreate", "2025-01-01T00:00:02Z", kind="ReplicaSet"),
              event("backend-blue-7d-1", "BackOff", "2025-01-01T00:00:09Z"),
              event("backend-green-7d-3", "Pulled", "2025-01-01T00:00:09Z", type_="Normal")]
    assert warning_events(events, "backend-green", limit=2) == [
        "ReplicaSet/backend-green-7d: FailedCreate: FailedCreate on backend-green-7d",
        "Pod/backend-green-7d-1: BackOff: BackOff on backend-green-7d-1",
    ]


def test_api_error_message_names_object_and_status() -> None:
    exc = api_error(403, "Forbidden", 'services "backend" is forbidden: User cannot patch')
    assert api_error_message(exc, "patch", "Service", "sunday-production", "backend") == (
        "Kubernetes API: patch Service sunday-production/backend failed (HTTP 403): Forbidden: "
        'services "backend" is forbidden: User cannot patch')
    assert "(no answer)" in api_error_message(api_error(0, "connection refused", ""), "read", "Service", "ns", "x")


def test_migration_job_reuses_pod_settings_without_traffic(overlay: list[dict]) -> None:
    name = job_name("backend", "0123456789abcdef0123456789abcdef01234567", "x1y2z3")
    assert name == "backend-migrate-0123456789ab-x1y2z3"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job_name("Back_end" * 9, "v1.2.3", "abc"))
    assert len(job_name("b" * 80, "v1.2.3", "abc")) <= 63
    job = migration_job(deployment(overlay, "backend-blue"), "backend", V2["backend"], ["python3", "-m", "migrate"],
                        "v1.4.0", name)
    spec = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == 0 and spec["restartPolicy"] == "Never"
    assert "color" not in job["spec"]["template"]["metadata"]["labels"]  # no Service selects it
    assert job["spec"]["template"]["metadata"]["labels"]["app"] == "backend"  # NetworkPolicy: may reach the DB
    (container,) = spec["containers"]
    assert container["command"] == ["python3", "-m", "migrate"] and container["image"] == V2["backend"]
    assert "readinessProbe" not in container and "initContainers" not in spec and "affinity" not in spec
    assert {"name": "APP_VERSION", "value": "v1.4.0"} in container["env"]
    assert any(e["name"] == "DATABASE_URL" and "secretKeyRef" in e["valueFrom"] for e in container["env"])
    assert spec["serviceAccountName"] == "backend" and spec["securityContext"]["runAsNonRoot"] is True


def test_job_outcome() -> None:
    assert job_outcome({"status": {"active": 1}}) == ("running", "")
    assert job_outcome({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == ("succeeded", "")
    assert job_outcome({"status": {"failed": 1, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "limit"}]}}) == \
        ("failed", "BackoffLimitExceeded: limit")


# ============================================================== the protocol against the fake
def test_blue_green_release_switch_stop_and_rollback(h: Harness) -> None:
    t, api = h.target, h.api
    assert t.namespace == "sunday-production" and t.url == "http://frontend.sunday-production.svc"
    assert t.live_color() is None  # the overlay's placeholder blue: no release yet

    # first release goes to blue (what the overlay selects): no selector patch needed
    h.release("blue", V1, "v1.3.0")
    assert api.patches("Service") == [] and t.live_color() == "blue"
    assert api.obj("Deployment", "backend-blue")["spec"]["replicas"] == 5  # the overlay's count, kept

    # v1.4.0 on the idle green
    api.calls.clear()
    t.start_color("green", V2, "v1.4.0", t.load_state())
    assert [name for name, _ in api.patches("Deployment")] == ["backend-green", "frontend-green"]
    green = api.obj("Deployment", "backend-green")
    assert green["spec"]["replicas"] == 5 and api.obj("Deployment", "frontend-green")["spec"]["replicas"] == 3
    assert green["spec"]["template"]["spec"]["containers"][0]["image"] == V2["backend"]
    assert green["spec"]["template"]["metadata"]["labels"]["sunday.version"] == "v1.4.0"
    assert rollout_status(green).health == "starting"
    before = api.now
    replicas = t.wait_healthy("green", 120)
    assert api.now - before == 3 * 2.0  # three controller ticks of 2 s: simulated, nobody slept
    assert [(r.name, r.endpoint, r.health, r.ready, r.version) for r in replicas] == [
        ("backend-green", "backend-green.sunday-production.svc:80", "healthy", 5, "v1.4.0"),
        ("frontend-green", "frontend-green.sunday-production.svc:80", "healthy", 3, "v1.4.0")]
    assert h.selectors()["backend"]["color"] == "blue"  # nothing moved before the switch

    api.calls.clear()
    t.switch("green")
    assert api.patches("Service") == [("backend", {"spec": {"selector": {"color": "green"}}}),
                                      ("frontend", {"spec": {"selector": {"color": "green"}}})]
    assert h.selectors() == {"backend": {"app": "backend", "color": "green"},
                             "frontend": {"app": "frontend", "color": "green"}}
    assert [n for n, _ in api.patches("HorizontalPodAutoscaler")] == ["backend", "frontend"]
    assert api.obj("HorizontalPodAutoscaler", "backend")["spec"]["scaleTargetRef"]["name"] == "backend-green"
    assert t.live_color() == "green"

    # the old color is kept: 0 pods, same image, its count recorded
    t.stop_color("blue")
    blue = api.obj("Deployment", "backend-blue")
    assert blue["spec"]["replicas"] == 0 and recorded_replicas(blue) == 5
    assert blue["spec"]["template"]["spec"]["containers"][0]["image"] == V1["backend"]
    assert t.replicas("blue") == [] and [r.health for r in t.replicas("blue", include_stopped=True)] == ["exited"] * 2
    assert t.version_of("blue") == "v1.3.0"

    # rollback: restart the kept blue, switch back, stop green
    t.restart_color("blue")
    assert api.obj("Deployment", "backend-blue")["spec"]["replicas"] == 5
    assert api.obj("Deployment", "frontend-blue")["spec"]["replicas"] == 3
    t.wait_healthy("blue", 60)
    t.switch("blue")
    t.stop_color("green")
    assert {s["color"] for s in h.selectors().values()} == {"blue"} and t.live_color() == "blue"
    assert api.obj("HorizontalPodAutoscaler", "frontend")["spec"]["scaleTargetRef"]["name"] == "frontend-blue"
    assert api.obj("Deployment", "backend-blue")["spec"]["template"]["spec"]["containers"][0]["image"] == V1["backend"]


def test_state_file_and_docker_duties(h: Harness, tmp_path: Path) -> None:
    t = h.target
    state = t.load_state()
    state.live, state.replicas = "green", {"backend": 2}
    t.save_state(state)
    assert t.root == tmp_path / "projects" / "sunday" / "envs" / "production" and (t.root / "state.json").is_file()
    assert t.load_state().replicas == {"backend": 2}
    (t.root / "state.json").unlink()  # the local file is a copy for people: the cluster's history counts
    assert t.load_state().replicas == {"backend": 2}
    t.ensure_database()
    assert t.traffic_log() is None and t.ports() is None and t.restorable() is None  # capabilities it lacks
    t.start_color("green", {"backend": V2["backend"]}, "v1.4.0", t.load_state())
    assert h.api.obj("Deployment", "backend-green")["spec"]["replicas"] == 2  # the scale flow's count wins
    t.scale_service("green", "backend", V2["backend"], "v1.4.0", 4)
    assert h.api.obj("Deployment", "backend-green")["spec"]["replicas"] == 4
    assert rollout_status(h.api.obj("Deployment", "backend-green")).health == "starting"


def test_capabilities_are_explicit(overlay: list[dict], tmp_path: Path) -> None:
    """What the kubernetes target lacks answers None; its database is the URL in a named secret, read late."""
    h = Harness(overlay, tmp_path)
    t: DeployTarget = h.target  # mypy checks the same in kubernetes.py (tests are not type-checked)
    assert t.key == "sunday/production" and t.ports() is None and t.traffic_log() is None
    assert t.database() is None  # the config names no database: a required backup stops the deploy

    read: list[str] = []

    def read_secret(name: str) -> SecretStr:
        read.append(name)
        return SecretStr("postgresql://app:pa55@db.internal:5432/sunday")

    config = make_config(database_url_secret="sunday-production-db")
    target = KubernetesTarget(config, "production", config.environments["production"], tmp_path, api=h.api,
                              read_secret=read_secret)
    database = target.database()
    assert database is not None and read == []  # nothing read until the backup connects
    assert database.name == "the database of production (URL in the Secret block 'sunday-production-db')"
    assert database.dsn().get_secret_value().endswith("@db.internal:5432/sunday") and read == ["sunday-production-db"]
    assert "pa55" not in repr(database.dsn())
    with pytest.raises(ValidationError, match="database_url_secret"):
        Environment(target="kubernetes", database_url_secret="Not A Block Name")


def test_flows_reach_a_substituted_cluster(overlay: list[dict], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`make_target` (what the flows call) builds a target on the substituted API, with its clock."""
    api = FakeKubernetesApi(overlay, namespace="sunday-production")
    timing = Timing(sleep=api.sleep, clock=api.clock)
    config = make_config()
    with substitute_cluster(api, timing):
        target = make_target(config, "production", Settings.from_env())
        assert isinstance(target, KubernetesTarget) and target.api is api and target.timing is timing
        target.start_color("green", V2, "v1.4.0", target.load_state())
        assert [r.health for r in target.wait_healthy("green", 60)] == ["healthy", "healthy"]
        with pytest.raises(PipelineError, match="another block already substitutes the cluster"):
            with substitute_cluster(api):
                pass
    contexts: list[str | None] = []

    def from_context(context: str | None) -> FakeKubernetesApi:
        contexts.append(context)
        return FakeKubernetesApi(overlay, namespace="sunday-production")

    monkeypatch.setattr(KubernetesApi, "from_context", staticmethod(from_context))
    after = make_target(config, "production", Settings.from_env())  # after the block: the config's context again
    assert isinstance(after, KubernetesTarget) and after.api is not api and contexts == ["sunday-production"]


@pytest.mark.parametrize(("fault", "expected"), [
    ("crashing_images", ["CrashLoopBackOff", "Back-off restarting failed container backend in pod backend-green-"]),
    ("unpullable_images", ["ImagePullBackOff", f'Failed to pull image "{V2["backend"]}": not found']),
])
def test_failed_readiness_aborts_naming_the_deployment_and_events(overlay: list[dict], tmp_path: Path, fault: str,
                                                                  expected: list[str]) -> None:
    h = Harness(overlay, tmp_path, **{fault: {V2["backend"]}})
    t = h.target
    h.release("blue", V1, "v1.3.0")
    t.start_color("green", V2, "v1.4.0", t.load_state())
    started = h.api.now
    with pytest.raises(RolloutAborted) as caught:
        t.wait_healthy("green", 120)
    message = str(caught.value)
    assert message.startswith("Deployment sunday-production/backend-green did not become ready: pod backend-green-")
    for part in expected:
        assert part in message
    assert h.api.now - started < 10  # a pod that will not recover does not wait for the timeout
    with pytest.raises(RolloutAborted, match="refusing to switch to green: Deployment sunday-production/backend-green"
                                             " has no ready pod"):
        t.switch("green")
    assert {s["color"] for s in h.selectors().values()} == {"blue"}
    assert [n for n, _ in h.api.patches("Service")] == []  # traffic never switched


def test_progress_deadline_exceeded_aborts(overlay: list[dict], tmp_path: Path) -> None:
    h = Harness(overlay, tmp_path, stuck_images={V2["frontend"]}, progress_deadline_ticks=4)
    h.release("blue", V1, "v1.3.0")
    h.target.start_color("green", V2, "v1.4.0", h.target.load_state())
    with pytest.raises(RolloutAborted, match=r"Deployment sunday-production/frontend-green did not become ready: "
                                             r"ProgressDeadlineExceeded: ReplicaSet .* has timed out progressing"):
        h.target.wait_healthy("green", 600)


def test_readiness_timeout_aborts(overlay: list[dict], tmp_path: Path) -> None:
    h = Harness(overlay, tmp_path, stuck_images={V2["frontend"]})
    h.release("blue", V1, "v1.3.0")
    h.target.start_color("green", V2, "v1.4.0", h.target.load_state())
    started = h.api.now
    with pytest.raises(RolloutAborted, match=r"frontend-green did not become ready: 0 of 3 pods ready after 10s"):
        h.target.wait_healthy("green", 10)
    assert 10 <= h.api.now - started <= 12


def test_api_500s_are_retried_then_succeed(h: Harness) -> None:
    h.release("blue", V1, "v1.3.0")
    h.target.start_color("green", V2, "v1.4.0", h.target.load_state())
    h.target.wait_healthy("green", 120)
    h.sleeps.clear()
    h.api.fail_next("patch", "Service", 500, times=2, name="backend")
    h.api.fail_next("patch", "HorizontalPodAutoscaler", 409, times=1)
    h.target.switch("green")
    assert {s["color"] for s in h.selectors().values()} == {"green"}
    assert len(h.sleeps) == 3 and 0.4 <= h.sleeps[0] <= 0.6 and 1.6 <= h.sleeps[1] <= 2.4  # backoff with jitter
    assert [n for n, _ in h.api.patches("Service")] == ["backend", "frontend"]  # one successful patch each


def test_persistent_500_is_a_pipeline_error_naming_the_object(h: Harness) -> None:
    h.api.fail_next("patch", "Deployment", 500, times=99)
    with pytest.raises(PipelineError, match=r"Kubernetes API: patch Deployment sunday-production/backend-green "
                                            r"failed \(HTTP 500\): Internal Server Error"):
        h.target.start_color("green", V2, "v1.4.0", h.target.load_state())
    assert len(h.sleeps) == 3  # three retries, then it gives up
    h.sleeps.clear()
    h.api.fail_next("read", "Deployment", 403, times=1)
    with pytest.raises(PipelineError, match=r"read Deployment sunday-production/backend-blue failed \(HTTP 403\)"):
        h.target.replicas("blue")
    assert h.sleeps == []  # 403 is not retried


def test_failed_switch_puts_traffic_back(h: Harness) -> None:
    h.release("blue", V1, "v1.3.0")
    h.target.start_color("green", V2, "v1.4.0", h.target.load_state())
    h.target.wait_healthy("green", 120)
    h.api.fail_next("patch", "Service", 503, times=99, name="frontend")
    with pytest.raises(PipelineError, match=r"switch to green failed \(traffic put back\): .*Service "
                                            r"sunday-production/frontend failed \(HTTP 503\)"):
        h.target.switch("green")
    assert {s["color"] for s in h.selectors().values()} == {"blue"}
    assert h.api.patches("Service") == [("backend", selector_patch("green")), ("backend", selector_patch("blue"))]


def test_live_color_reads_the_selector(h: Harness) -> None:
    h.release("blue", V1, "v1.3.0")
    h.target.start_color("green", V2, "v1.4.0", h.target.load_state())
    assert h.target.live_color() == "blue"
    for service in ("backend", "frontend"):
        h.api.obj("Service", service)["spec"]["selector"]["color"] = "green"  # someone else switched
    assert h.target.live_color() == "green"
    h.api.obj("Service", "frontend")["spec"]["selector"]["color"] = "blue"
    with pytest.raises(PipelineError, match=r"disagree \(backend → green, frontend → blue\)"):
        h.target.live_color()


def test_restart_without_a_kept_release_aborts(h: Harness) -> None:
    with pytest.raises(RolloutAborted, match="no kept release on green"):
        h.target.restart_color("green")
    with pytest.raises(RolloutAborted, match="no Deployment of green in sunday-production runs pods"):
        h.target.wait_healthy("green", 5)


def test_migration_job_succeeds_and_returns_its_log(h: Harness) -> None:
    out = h.target.run_once(V2["backend"], ["python3", "-m", "migrate"], "backend", "v1.4.0")
    assert out.strip().splitlines()[-1] == "migrations: 1 applied"
    (job,) = h.api.jobs.values()
    assert job["metadata"]["name"] == "backend-migrate-v1-4-0-x1y2z3"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python3", "-m", "migrate"]


def test_migration_job_failure_aborts_with_the_log_tail(overlay: list[dict], tmp_path: Path) -> None:
    log = "".join(f"line {i}\n" for i in range(30)) + 'psycopg.errors.DuplicateTable: relation "boards" exists\n'
    h = Harness(overlay, tmp_path, failing_jobs={V2["backend"]: log})
    with pytest.raises(RolloutAborted) as caught:
        h.target.run_once(V2["backend"], ["python3", "-m", "migrate"], "backend", "v1.4.0")
    message = str(caught.value)
    assert message.startswith("migration Job sunday-production/backend-migrate-v1-4-0-x1y2z3 failed: "
                              "BackoffLimitExceeded: Job has reached the specified backoff limit")
    assert message.endswith('line 29\npsycopg.errors.DuplicateTable: relation "boards" exists')
    assert "line 21" not in message  # only the tail


def test_migration_job_timeout(overlay: list[dict], tmp_path: Path) -> None:
    h = Harness(overlay, tmp_path, job_ticks=10**6)
    with pytest.raises(RolloutAborted, match=r"backend-migrate-v1-4-0-x1y2z3 failed: still running after 60s"):
        h.target.run_once(V2["backend"], ["true"], "backend", "v1.4.0")


# ============================================================== the release history in the cluster
def release(revision: int, outcome: str = "superseded", color: str = "blue", reason: str = "") -> Release:
    return Release(revision=revision, version=f"v{revision}", digests={"backend": f"{REG}/backend@sha256:{'1' * 64}"},
                   color=color, started="2026-01-01T00:00:00+00:00", outcome=outcome, reason=reason)  # type: ignore[arg-type]


def history(count: int, live: int, reason: str = "") -> EnvState:
    """`count` releases, revision `live` live on green, every other one superseded (or failed when odd)."""
    releases = [release(n, "live" if n == live else ("failed" if n % 2 else "superseded"),
                        "green" if n == live else "blue", reason) for n in range(1, count + 1)]
    return EnvState(env="production", live="green", revision=live, history=releases)


def test_trim_keeps_the_newest_releases_the_live_one_and_the_rollback_target() -> None:
    state = history(150, live=150)
    assert rollback_target(state).revision == 148  # type: ignore[union-attr]  # 149 failed
    trimmed = trim_state(state)
    assert [r.revision for r in trimmed.history] == list(range(51, 151)) and len(trimmed.history) == MAX_RELEASES
    assert len(state.history) == 150  # a copy: the caller's state is untouched
    # an old live release (a rollback long ago) and an old rollback target are kept however old
    state = history(150, live=3)
    for r in state.history[3:]:
        r.outcome = "failed"  # every release since revision 3 failed: 3 serves, 2 is the rollback target
    assert rollback_target(state).revision == 2  # type: ignore[union-attr]
    assert [r.revision for r in trim_state(state, keep=5).history] == [2, 3, 146, 147, 148, 149, 150]
    assert trim_state(EnvState(env="production")).history == []


def test_trim_drops_the_oldest_until_the_history_fits_the_size() -> None:
    state = history(100, live=100, reason="x" * 8000)  # ~ 8.3 KB a release: 830 KB in all
    assert len(encode_state(state).encode()) > MAX_BYTES
    trimmed = trim_state(state)
    size = len(encode_state(trimmed).encode())
    assert size <= MAX_BYTES < size + len(state.history[0].model_dump_json()) + 1  # no release dropped needlessly
    kept = [r.revision for r in trimmed.history]
    assert kept == list(range(kept[0], 101)) and 98 in kept and kept[0] > 1  # the newest, with the rollback target
    # exact at the limit: trimming to the encoded size of the whole state keeps everything
    exact = len(encode_state(state).encode())
    assert len(trim_state(state, max_bytes=exact).history) == 100
    assert len(trim_state(state, max_bytes=exact - 1).history) == 99
    with pytest.raises(PipelineError, match="with only the live release and the rollback target"):
        trim_state(state, keep=0, max_bytes=10_000)


def test_state_configmap_decisions() -> None:
    cm = {"metadata": {"name": "sunday-release-state", "namespace": "sunday-production",
                       "labels": {"sunday-release/project": "sunday", "sunday-release/env": "production"}}}
    assert state_owner_problem(cm, "sunday", "production") is None
    assert state_from_configmap(cm, "production") == EnvState(env="production")
    assert state_patch("{}") == {"data": {"state.json": "{}"}}
    assert state_owner_problem(cm, "shop", "production") == (
        "ConfigMap sunday-production/sunday-release-state holds the release history of project 'sunday', not of "
        "project 'shop': its namespace belongs to 'sunday'; deploy 'shop' to another cluster "
        "(environments.production.kube_context)")
    assert "of environment sunday/production, not of sunday/staging" in str(
        state_owner_problem(cm, "sunday", "staging"))
    cm["metadata"]["labels"] = {}
    assert "has no labels sunday-release/project and sunday-release/env" in str(
        state_owner_problem(cm, "sunday", "production"))
    cm["data"] = {"state.json": "not json"}
    with pytest.raises(PipelineError, match=r"sunday-production/sunday-release-state: data\.state\.json is not a"):
        state_from_configmap(cm, "production")
    assert config_from_configmap(cm) is None
    cm["data"]["config.json"] = '{"project": "sunday"}'
    with pytest.raises(PipelineError, match=r"sunday-release-state: data\.config\.json is not a valid config"):
        config_from_configmap(cm)
    cm["data"]["config.json"] = make_config().model_dump_json()
    assert config_from_configmap(cm) == make_config()
    assert state_patch("{}", "{}") == {"data": {"state.json": "{}", "config.json": "{}"}}


def test_save_writes_a_merge_patch_of_the_key_and_a_second_home_loads_it(overlay: list[dict], tmp_path: Path) -> None:
    """Another worker (another SUNDAY_HOME, nothing on its disk) sees the history the first one saved."""
    h = Harness(overlay, tmp_path / "first")
    state = history(3, live=3)
    config = make_config()
    second = KubernetesTarget(config, "production", config.environments["production"], tmp_path / "second",
                              api=h.api)
    assert second.saved_config() is None and read_saved_config("sunday", "production", api=h.api) is None
    h.target.save_state(state)
    assert h.api.patches("ConfigMap") == [("sunday-release-state", {"data": {
        "state.json": encode_state(state), "config.json": h.target.config.model_dump_json()}})]
    configmap = h.api.obj("ConfigMap", "sunday-release-state")
    assert configmap["metadata"]["labels"]["sunday-release/project"] == "sunday"  # nothing else touched
    assert not (tmp_path / "second").exists()
    assert second.load_state() == state
    # the environment's last config beside it: what a worker with nothing on its disk rebuilds the target from
    assert second.saved_config() == h.target.config
    assert read_saved_config("sunday", "production", api=h.api) == h.target.config
    with pytest.raises(InputError, match=r"cannot read the last config of shop/production: .* not of project 'shop'"):
        read_saved_config("shop", "production", api=h.api)
    assert not (tmp_path / "second").exists()
    local = EnvState.load(tmp_path / "first" / "projects" / "sunday" / "envs" / "production" / "state.json",
                          "production")
    assert local == state  # the copy for people


def test_save_trims_what_the_cluster_keeps(h: Harness) -> None:
    state = history(130, live=130)
    h.target.save_state(state)
    assert [r.revision for r in h.target.load_state().history] == list(range(31, 131))
    assert len(state.history) == 130


def test_a_configmap_over_one_mebibyte_is_refused_by_the_fake(h: Harness) -> None:
    """The fake refuses what the API server would (422); the target's trimming keeps far below it."""
    with pytest.raises(Exception) as caught:
        h.api.patch_config_map("sunday-production", "sunday-release-state",
                               {"data": {"state.json": "x" * CONFIGMAP_LIMIT}})
    assert getattr(caught.value, "status", None) == 422 and "Too long" in str(caught.value.body)  # type: ignore[attr-defined]
    assert h.api.patches("ConfigMap") == [] and "data" not in h.api.obj("ConfigMap", "sunday-release-state")
    big = history(100, live=100, reason="é" * 20_000)  # 4 MB of history: trimmed to 512 KiB before it is sent
    h.target.save_state(big)
    stored = h.api.obj("ConfigMap", "sunday-release-state")["data"]["state.json"]
    assert len(stored.encode()) <= MAX_BYTES and json.loads(stored)["history"][-1]["revision"] == 100


def test_a_configmap_of_another_project_is_refused_naming_both(h: Harness, tmp_path: Path) -> None:
    h.api.obj("ConfigMap", "sunday-release-state")["metadata"]["labels"]["sunday-release/project"] = "shop"
    with pytest.raises(InputError, match=r"cannot load the release history of sunday/production: ConfigMap "
                                         r"sunday-production/sunday-release-state holds the release history of "
                                         r"project 'shop', not of project 'sunday'"):
        h.target.load_state()
    with pytest.raises(InputError, match=r"cannot save the release history of sunday/production: .* project 'shop'"):
        h.target.save_state(history(1, live=1))
    assert h.api.patches("ConfigMap") == [] and not (h.target.root / "state.json").exists()  # nothing written


def test_a_missing_configmap_names_the_overlay(h: Harness) -> None:
    del h.api.store[("ConfigMap", "sunday-release-state")]
    with pytest.raises(InputError, match=r"ConfigMap sunday-production/sunday-release-state does not exist; "
                                         r"apply the environment's overlay \(infra/k8s/production\)"):
        h.target.load_state()


def test_api_down_fails_after_three_tries_and_never_reads_the_local_copy(h: Harness) -> None:
    h.target.save_state(history(2, live=2))
    assert (h.target.root / "state.json").is_file()
    before = len([c for c in h.api.calls if c[1] == "ConfigMap"])
    h.api.fail_next("read", "ConfigMap", 503, times=3)
    with pytest.raises(PipelineError, match=r"cannot load the release history of sunday/production \(gave up after "
                                            r"3 tries; the local state.json is only a copy and is not used\): "
                                            r"Kubernetes API: read ConfigMap sunday-production/sunday-release-state "
                                            r"failed \(HTTP 503\)"):
        h.target.load_state()
    assert len([c for c in h.api.calls if c[1] == "ConfigMap"]) == before  # three refused reads, no answer
    assert len(h.sleeps) == 2  # two waits between three tries
    h.api.fail_next("read", "ConfigMap", 0, times=2)  # no answer twice: the third try answers
    assert h.target.load_state().revision == 2
    h.api.fail_next("read", "ConfigMap", 403)  # not retried: RBAC said no
    with pytest.raises(PipelineError, match=r"\(the local state.json is only a copy and is not used\): .*HTTP 403"):
        h.target.load_state()


# ============================================================== a real cluster (opt-in, read-only)
@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a Kubernetes cluster: KUBECONFIG not set")
def test_live_color_of_a_real_namespace(tmp_path: Path) -> None:
    """Reads the live Services of SUNDAY_KUBE_NAMESPACE (default sunday-staging); changes nothing."""
    namespace = os.environ.get("SUNDAY_KUBE_NAMESPACE", "sunday-staging")
    config = make_config()
    env = Environment(target="kubernetes", kube_context=os.environ.get("SUNDAY_KUBE_CONTEXT"))
    target = KubernetesTarget(config, "staging", env, tmp_path, api=KubernetesApi.from_context(env.kube_context),
                              namespace=namespace)
    try:
        service = target.api.read_service(namespace, "backend")
        color = selected_color(service)
        print(f"{namespace}: live Service backend selects {color}; live color {target.live_color()}")
        assert color in ("blue", "green")
    finally:
        target.teardown()


# ============================================================== the real client wrapper, over HTTP
class _Recorder(BaseHTTPRequestHandler):
    """Answers like an API server for a few paths and records what the client sent (not a Kubernetes fake)."""

    seen: ClassVar[list[tuple[str, str, str, str]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.seen.append((self.command, self.path, self.headers.get("Content-Type") or "", body))
        if "missing" in self.path:
            status, payload = 404, {"kind": "Status", "message": 'deployments.apps "missing" not found', "code": 404}
        elif self.path.endswith("/log?tailLines=5"):
            status, payload = 200, None
        else:
            status, payload = 200, {"kind": "Deployment", "metadata": {"name": "backend-green"},
                                    "spec": {"selector": {"color": "green"}}, "items": []}
        data = b"line 1\nline 2\n" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_kubernetes_api_wrapper_speaks_http_correctly() -> None:
    from kubernetes import client
    from kubernetes.client import ApiException

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api = KubernetesApi(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{server.server_port}")))
    try:
        assert api.read_deployment("ns", "backend-green")["metadata"]["name"] == "backend-green"
        api.patch_deployment("ns", "backend-green", scale_patch(0, record=5))
        api.patch_service("ns", "backend", selector_patch("green"))
        api.patch_hpa("ns", "backend", hpa_patch("backend", "green"))
        assert api.list_pods("ns", "app=backend,color=green") == []
        assert api.read_pod_log("ns", "pod-1", 5) == "line 1\nline 2\n"
        with pytest.raises(ApiException) as caught:
            api.read_deployment("ns", "missing")
        assert caught.value.status == 404 and "not found" in api_error_message(
            caught.value, "read", "Deployment", "ns", "missing")
    finally:
        api.close()
        server.shutdown()
        server.server_close()
    sent = {(m, p.split("?")[0]): (ct, body) for m, p, ct, body in _Recorder.seen}
    assert sent[("PATCH", "/apis/apps/v1/namespaces/ns/deployments/backend-green")] == (
        "application/strategic-merge-patch+json", json.dumps(scale_patch(0, record=5)))
    assert sent[("PATCH", "/api/v1/namespaces/ns/services/backend")][0] == "application/strategic-merge-patch+json"
    assert sent[("PATCH", "/apis/autoscaling/v2/namespaces/ns/horizontalpodautoscalers/backend")][0] == \
        "application/merge-patch+json"
    assert ("GET", "/api/v1/namespaces/ns/pods") in sent
    gone = client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    gone.retries = False  # the server is shut down: connection refused at once
    dead = KubernetesApi(client.ApiClient(gone))
    with pytest.raises(ApiException) as caught:
        dead.read_service("ns", "backend")
    assert caught.value.status == 0 and "no answer" in str(caught.value.reason)
    dead.close()


# ============================================================== what the cluster lets the pipeline do
@functools.cache
def _admission_policies() -> tuple[Obj, ...]:
    return tuple(o for o in render_kustomize(K8S / "prefect") if o["kind"] == "ValidatingAdmissionPolicy")


def admission_policies() -> list[Obj]:
    """The ValidatingAdmissionPolicies of infra/k8s/prefect (rendered once per session)."""
    return deepcopy(list(_admission_policies()))


class AdmittingFake(FakeKubernetesApi):
    """The FAKE API plus the cluster's guards on the pipeline's writes: every patch and create is
    judged by the ValidatingAdmissionPolicies of infra/k8s/prefect (old and new object, as the API
    server hands them over) and a denial is answered 403 like the API server would."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.policies = admission_policies()
        self.denials: list[str] = []

    def _admit(self, operation: str, new: Obj, old: Obj | None) -> None:
        review = admission_request(operation, new, old)
        for policy in self.policies:
            for message in admission_violations(policy, review):
                self.denials.append(f"{new['kind']}/{new['metadata']['name']}: {message}")
                raise api_error(403, "Forbidden", message)

    def _patch(self, kind: str, namespace: str, name: str, body: Obj) -> Obj:
        old = deepcopy(self._get(kind, namespace, name))
        new = deepcopy(old)
        self.merge(kind, new, body)
        self._admit("UPDATE", new, old)
        return super()._patch(kind, namespace, name, body)

    def create_job(self, namespace: str, body: Obj) -> Obj:
        self._admit("CREATE", {**body, "metadata": {**body["metadata"], "namespace": namespace}}, None)
        return super().create_job(namespace, body)


class AdmittedHarness(Harness):
    """A Harness whose fake API applies the cluster's admission policies."""

    fake_class = AdmittingFake


ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sunday"  # the registry admission.yaml allows
A1 = {"backend": f"{ECR}/backend@sha256:{'1' * 64}", "frontend": f"{ECR}/frontend@sha256:{'a' * 64}"}
A2 = {"backend": f"{ECR}/backend@sha256:{'2' * 64}", "frontend": f"{ECR}/frontend@sha256:{'b' * 64}"}


def test_every_call_of_the_protocol_is_allowed_by_the_role_and_admitted(overlay: list[dict],
                                                                          tmp_path: Path) -> None:
    """The whole blue-green protocol (release, migration Job, switch, stop, rollback, scale) against the
    fake: each API call (verb x resource x name) is one the rendered Role sunday-release grants, and
    each write passes the admission policies. Together with the exact-grants test in test_infra_k8s.py
    this proves the Role is what the target needs."""
    role = find(overlay, "Role", "sunday-release")
    h = AdmittedHarness(overlay, tmp_path)
    api, t = h.api, h.target
    assert isinstance(api, AdmittingFake)

    h.release("blue", A1, "v1.3.0")
    t.run_once(A2["backend"], ["python3", "-m", "migrate"], "backend", "v1.4.0")
    h.release("green", A2, "v1.4.0")
    t.stop_color("blue")
    t.scale_service("green", "backend", A2["backend"], "v1.4.0", 7)
    t.restart_color("blue")
    t.wait_healthy("blue", 60)
    t.switch("blue")
    t.stop_color("green")
    t.replicas("green", include_stopped=True)
    crashing = {s: image.replace("@sha256:", "@sha256:f")[:-1] for s, image in A2.items()}
    api.crashing_images.add(crashing["backend"])  # a failed release reads the warning events
    t.start_color("green", crashing, "v1.5.0", t.load_state())
    with pytest.raises(RolloutAborted, match="CrashLoopBackOff"):
        t.wait_healthy("green", 60)
    t.stop_color("green")
    state = t.load_state()
    state.live = "blue"
    t.save_state(state)  # the release history: read and merge-patched, admitted
    assert api.denials == [] and t.live_color() == "blue"

    verb_of = {"read": "get", "patch": "patch", "list": "list", "create": "create"}
    made = {(verb_of[verb], kind, None if verb in ("list", "create") else name) for verb, kind, name, _ in api.calls}
    assert {kind for _, kind, _ in made} == set(RESOURCES)  # the run exercised every kind of call
    refused = [(verb, kind, name) for verb, kind, name in sorted(made, key=str)
               if not rbac_allows(role, *RESOURCES[kind], verb, name)]
    assert refused == []


def test_a_release_from_a_foreign_registry_is_refused_by_admission(overlay: list[dict], tmp_path: Path) -> None:
    h = AdmittedHarness(overlay, tmp_path)
    with pytest.raises(PipelineError, match=r"patch Deployment sunday-production/backend-green failed \(HTTP 403\)"):
        h.target.start_color("green", V2, "v1.4.0", h.target.load_state())  # V2: eu-west-1, not ours
    assert h.api.denials == [  # type: ignore[attr-defined]
        "Deployment/backend-green: images must come from the release registry (REGISTRY/sunday/NAME@sha256:DIGEST)"]
