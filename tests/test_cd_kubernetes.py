"""The `cd` flow on the kubernetes target, end to end: backup, migration Job, approval, switch, history.

Real: the Prefect server (approval through the API), PostgreSQL (the environment's database, its URL
in a Prefect Secret block), S3 (moto_server), the image registry (docker-registry), git. FAKE: the
Kubernetes API server (tests/fake_kube.py: none can run here), reached through `substitute_cluster`
because the flow builds its own target. The release history lives in the (fake) cluster: a second
worker, with a SUNDAY_HOME of its own and nothing on its disk, reads the same history.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sunday_release.backup import list_backups, s3_client
from sunday_release.bluegreen import EnvState
from sunday_release.config import load_config
from sunday_release.errors import InputError, RolloutAborted
from sunday_release.registry import RegistryClient
from sunday_release.settings import Settings
from sunday_release.targets import make_target
from sunday_release.targets.kube_decisions import PROJECT_LABEL, STATE_CONFIGMAP
from sunday_release.targets.kubernetes import Timing, substitute_cluster
from tests.conftest import Registry
from tests.fake_kube import FakeKubernetesApi
from tests.pg import S3, Postgres, postgres, s3  # noqa: F401  (fixtures)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def push_image(registry: str, repository: str, tag: str) -> str:
    """A minimal OCI image (a config blob, no layers) tagged `tag`: what CI leaves for a commit that passed."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {"Labels": {"test.tag": tag}}}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with httpx.Client(base_url=f"http://{registry}/v2/", timeout=10) as http:
        started = http.post(f"{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        sep = "&" if "?" in location else "?"
        done = http.put(f"{location}{sep}digest={digest}", content=config,
                        headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": len(config)},
                           "layers": []}).encode()
    with RegistryClient(registry) as client:
        return client.put_tag(repository, tag, manifest, OCI_MANIFEST)


class App:
    """A small application repository: two services, one kubernetes production environment."""

    def __init__(self, tmp_path: Path, registry: str, secret_block: bool) -> None:
        self.project = f"k8s-{secrets.token_hex(3)}"  # its own (unregistered) project: the default policy
        self.secret_block = f"{self.project}-db-url"  # a project may name only its own Secret blocks
        self.registry = registry
        self.source = tmp_path / "app-source"
        for service in ("backend", "frontend"):
            (self.source / service).mkdir(parents=True)
            (self.source / service / "Dockerfile").write_text("FROM scratch\n")
        database = f", database_url_secret: {self.secret_block}" if secret_block else ""
        (self.source / "sunday-release.yaml").write_text(
            f"project: {self.project}\nregistry: '{registry}'\nservices:\n"
            "  backend: {context: backend, port: 8000, route: /api, migrate: [python3, -m, sunday_api.migrate]}\n"
            "  frontend: {context: frontend, port: 8080, route: /}\n"
            "environments:\n"
            "  production: {target: kubernetes, kube_context: sunday-production, approval: true, "
            f"watch_seconds: 0, drain_seconds: 0{database}}}\n")

    def claim(self, cluster: FakeKubernetesApi) -> None:
        """Label the namespace's release-history ConfigMap with this project, as its overlay would."""
        cluster.obj("ConfigMap", STATE_CONFIGMAP)["metadata"]["labels"][PROJECT_LABEL] = self.project

    def history_seen_from(self, home: Path, monkeypatch: pytest.MonkeyPatch) -> EnvState:
        """The release history as a worker on another host reads it: a fresh SUNDAY_HOME and env root, the same
        cluster."""
        monkeypatch.setenv("SUNDAY_HOME", str(home))
        monkeypatch.setenv("SUNDAY_ENV_ROOT", str(home / "envs"))
        target = make_target(load_config(self.source, check_files=False), "production", Settings.from_env())
        try:
            return target.load_state()  # type: ignore[no-any-return]
        finally:
            target.teardown()

    def passed_ci(self, repo: Path, git: Callable[..., str]) -> tuple[str, dict[str, str]]:
        """HEAD of `repo` and its images, as if CI had passed it."""
        commit = git(repo, "rev-parse", "HEAD")
        images = {service: f"{self.registry}/{self.project}/{service}@"
                           f"{push_image(self.registry, f'{self.project}/{service}', f'sha-{commit}')}"
                  for service in ("backend", "frontend")}
        return commit, images


@pytest.fixture
def cluster() -> Iterator[FakeKubernetesApi]:
    """The FAKE API server seeded with the production overlay; the flow's targets reach it."""
    fake = FakeKubernetesApi.from_overlay("production")
    with substitute_cluster(fake, Timing(poll_interval=2.0, sleep=fake.sleep, clock=fake.clock, job_timeout=60)):
        yield fake


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SUNDAY_HOME of the test's own: the environment's lock, state and backup dumps."""
    path = tmp_path / "home"
    monkeypatch.setenv("SUNDAY_HOME", str(path))
    return path


def save_secret(name: str, value: str) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


def deploy_with_approval(api: str, repo: Path, version: str, approve: bool = True) -> Any:
    """Run `cd` in a thread, wait until it pauses for approval, answer through the API; its final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.flow_runs import resume_flow_run

    from flows.cd import cd

    run_ids: list[Any] = []
    states: list[Any] = []
    flow = cd.with_options(on_running=[lambda f, fr, s: run_ids.append(fr.id)])

    def deploy() -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):  # settings are per thread
            states.append(flow(env="production", version=version, repo=str(repo), return_state=True))

    worker = threading.Thread(target=deploy)
    worker.start()
    deadline = time.monotonic() + 180
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and worker.is_alive():
            if run_ids:
                found = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_ids[0]])))
                if found and found[0].state and found[0].state.is_paused():
                    break
            time.sleep(0.3)
        else:
            worker.join(5)
            detail = states[0].result(raise_on_failure=False) if states else "no state"
            pytest.fail(f"the deploy of {version[:12]} never paused for approval: {detail}")
    resume_flow_run(run_ids[0], run_input={"approve": approve, "reason": "change ticket 42" if approve else "no"})
    worker.join(120)
    assert not worker.is_alive(), "the deploy did not finish after the approval"
    return states[0]


def rollout_evidence(key: str, flow_run_id: str) -> str:
    """The rollout artifact `key` the flow run published."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1, f"no artifact {key} of flow run {flow_run_id}"
    return str(found[0].data)


def test_cd_on_kubernetes_backs_up_asks_approval_switches_and_records_history(
        prefect_api: str, registry: Registry, postgres: Postgres, s3: S3,  # noqa: F811
        cluster: FakeKubernetesApi, home: Path, tmp_path: Path, make_repo: Callable[..., Path],
        git: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    app = App(tmp_path, registry.address, secret_block=True)
    save_secret(app.secret_block, postgres.dsn)
    monkeypatch.setenv("SUNDAY_BACKUP_BUCKET", s3.bucket)
    monkeypatch.setenv("SUNDAY_S3_ENDPOINT", s3.endpoint_url)
    app.claim(cluster)
    repo = make_repo(app.source)
    v1, images1 = app.passed_ci(repo, git)

    first = deploy_with_approval(prefect_api, repo, v1)
    assert first.is_completed(), first.result(raise_on_failure=False)
    out1 = first.result()
    assert (out1["color"], out1["revision"], out1["images"]) == ("blue", 1, images1)

    (repo / "backend" / "Dockerfile").write_text("FROM scratch\nLABEL v=2\n")
    git(repo, "commit", "-qam", "v2")
    v2, images2 = app.passed_ci(repo, git)
    second = deploy_with_approval(prefect_api, repo, v2)
    assert second.is_completed(), second.result(raise_on_failure=False)
    out2 = second.result()
    assert (out2["color"], out2["revision"], out2["images"]) == ("green", 2, images2)

    # the switch: both live Services select green, the HPAs scale green, blue is kept at 0 for a rollback
    for service in ("backend", "frontend"):
        assert cluster.obj("Service", service)["spec"]["selector"]["color"] == "green"
        assert cluster.obj("HorizontalPodAutoscaler", service)["spec"]["scaleTargetRef"]["name"] == f"{service}-green"
        green, blue = cluster.obj("Deployment", f"{service}-green"), cluster.obj("Deployment", f"{service}-blue")
        assert green["spec"]["template"]["spec"]["containers"][0]["image"] == images2[service]
        assert green["status"]["readyReplicas"] == green["spec"]["replicas"] > 0
        assert blue["spec"]["replicas"] == 0 and blue["spec"]["template"]["metadata"]["annotations"][
            "sunday.version"] == v1
    selector_patches = [body for name, body in cluster.patches("Service")]
    assert selector_patches == [{"spec": {"selector": {"color": "green"}}}] * 2  # once per live Service, once
    migrations = [job["spec"]["template"]["spec"]["containers"][0] for job in cluster.jobs.values()]
    assert [(m["image"], m["command"]) for m in migrations] == [
        (images1["backend"], ["python3", "-m", "sunday_api.migrate"]),
        (images2["backend"], ["python3", "-m", "sunday_api.migrate"])]

    # the release history is in the cluster: a second worker (fresh SUNDAY_HOME) reads the same releases
    stored = json.loads(cluster.obj("ConfigMap", STATE_CONFIGMAP)["data"]["state.json"])
    assert [r["revision"] for r in stored["history"]] == [1, 2]
    first_env_root = Settings.from_env().env_root
    second_home = tmp_path / "second-worker"
    state = app.history_seen_from(second_home, monkeypatch)
    assert (state.live, state.revision) == ("green", 2)
    assert [(r.revision, r.version, r.color, r.outcome) for r in state.history] == [
        (1, v1, "blue", "superseded"), (2, v2, "green", "live")]
    assert not (second_home / "envs").exists()  # nothing of it came from that worker's disk
    local = EnvState.load(first_env_root / app.project / "production" / "state.json", "production")
    assert local == state  # the first worker's local copy, for people

    # one verified backup of the real database per deploy, in S3, named in the rollout evidence
    client = s3_client(s3.endpoint_url, "us-east-1")
    keys = list_backups(client, s3.bucket, f"db/{app.project}/production")
    assert len(keys) == 2
    for key in keys:
        body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        head = client.head_object(Bucket=s3.bucket, Key=key)
        assert body[:5] == b"PGDMP" and hashlib.sha256(body).hexdigest() == head["Metadata"]["sha256"]
    evidence = rollout_evidence(f"rollout-{app.project}-production", out2["flow_run_id"])
    assert f"backup {keys[0]} verified" in evidence
    assert "approved: change ticket 42" in evidence and "revision 2" in evidence
    assert postgres.dsn.split("@")[0] not in evidence  # the URL (with its password) never reaches the record

    # a rollback run by the second worker: the config and the history it needs come from the cluster
    from flows.cd import rollback

    monkeypatch.setenv("SUNDAY_HOME", str(second_home))
    monkeypatch.setenv("SUNDAY_ENV_ROOT", str(second_home / "envs"))
    monkeypatch.setenv("SUNDAY_KUBE_CONTEXT", "sunday-production")
    back = rollback(env="production", project=app.project)
    assert (back["revision"], back["version"], back["color"]) == (3, v1, "blue")
    for service in ("backend", "frontend"):
        assert cluster.obj("Service", service)["spec"]["selector"]["color"] == "blue"
    seen = app.history_seen_from(home, monkeypatch)  # and the first worker sees it
    assert (seen.live, seen.revision) == ("blue", 3)
    assert [(r.revision, r.outcome) for r in seen.history] == [(1, "superseded"), (2, "superseded"), (3, "live")]
    assert seen.history[-1].reason == "rollback to revision 1"


def test_cd_on_kubernetes_without_a_database_stops_before_anything_starts(
        prefect_api: str, registry: Registry, s3: S3, cluster: FakeKubernetesApi, home: Path,  # noqa: F811
        tmp_path: Path, make_repo: Callable[..., Path], git: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.cd import cd

    monkeypatch.setenv("SUNDAY_BACKUP_BUCKET", s3.bucket)
    monkeypatch.setenv("SUNDAY_S3_ENDPOINT", s3.endpoint_url)
    app = App(tmp_path, registry.address, secret_block=False)
    app.claim(cluster)
    repo = make_repo(app.source)
    version, _ = app.passed_ci(repo, git)

    state = cd(env="production", version=version, repo=str(repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(RolloutAborted, match=r"requires a verified backup but its kubernetes target has no "
                                             r"database to back up: set environments\.production\.database_url_secret"):
        state.result()
    # nothing was started, nothing switched: only the history (the failed release) was written
    assert {name for name, _ in cluster.patches()} == {STATE_CONFIGMAP} and cluster.jobs == {}
    saved = app.history_seen_from(tmp_path / "second-worker", monkeypatch)
    assert [r.outcome for r in saved.history] == ["failed"] and saved.live is None


def test_cd_on_kubernetes_refuses_the_history_of_another_project(
        prefect_api: str, registry: Registry, cluster: FakeKubernetesApi, home: Path, tmp_path: Path,
        make_repo: Callable[..., Path], git: Callable[..., str]) -> None:
    """The namespace's history is labelled for project `sunday`: another project's deploy stops before
    anything starts, naming both projects."""
    from flows.cd import cd

    app = App(tmp_path, registry.address, secret_block=False)
    repo = make_repo(app.source)
    version, _ = app.passed_ci(repo, git)
    state = cd(env="production", version=version, repo=str(repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match=rf"holds the release history of project 'sunday', not of project "
                                         rf"'{app.project}'"):
        state.result()
    assert cluster.patches() == [] and cluster.jobs == {}
