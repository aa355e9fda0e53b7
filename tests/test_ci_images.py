"""The images stage end to end: multi-arch publishing, the vulnerability gate, immutable tags, Retry."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.trivydb import Advisory, write_trivy_db
from tests.conftest import APP, DOCKER, FIXTURES, Registry
from tests.deployed_ci import share_layer_cache, task_run_states
from tests.test_ci_flow import sunday

pytestmark = pytest.mark.docker


def _use_registry(address: str) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        config = repo / "sunday-release.yaml"
        config.write_text(f"registry: {address}\n" + config.read_text())
    return edit


def test_sample_app_is_published_as_two_platform_manifest_lists(prefect_api: str, docker_engine: str,
                                                               make_repo: Callable[..., Path],
                                                               git: Callable[..., str]) -> None:
    def fresh_backend(repo: Path) -> None:  # new content: the backend must be built, not reused
        (repo / "backend" / "BUILD_NOTE").write_text(f"{time.time_ns()}\n")

    repo = make_repo(APP, edit=fresh_backend)
    commit = git(repo, "rev-parse", "HEAD")
    done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    for name in ("backend", "frontend"):
        svc = services[name]
        assert re.fullmatch(rf"localhost:5000/sunday/{name}@sha256:[0-9a-f]{{64}}", svc["image"])
        assert svc["platforms"] == ["linux/amd64", "linux/arm64"]
        assert f"sha-{commit}" in svc["tags"]
        assert svc["vulnerabilities"]["passed"] is True
        assert set(svc["vulnerabilities"]["counts"]) == {"CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"}
    assert services["backend"]["cached"] is False  # new content: built, not reused
    ref = f"localhost:5000/sunday/backend:sha-{commit}"
    arch = subprocess.run([DOCKER, "run", "--rm", "--pull", "always", "--platform", "linux/arm64",
                           "--entrypoint", "uname", ref, "-m"], capture_output=True, text=True, check=True)
    assert arch.stdout.strip() == "aarch64"
    labels = subprocess.run([DOCKER, "image", "inspect", "-f", "{{json .Config.Labels}}", ref],
                            capture_output=True, text=True, check=True)
    assert json.loads(labels.stdout)["org.opencontainers.image.revision"] == commit

    # a second CI of the same commit builds nothing: every image is reused
    again = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api)
    assert again.returncode == 0, again.stderr
    assert all(s["cached"] for s in json.loads(again.stdout)["services"].values())
    assert "building linux" not in again.stderr and "reused, not rebuilt" in again.stderr


def _allow(expires: date) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        config = repo / "sunday-release.yaml"
        config.write_text(config.read_text() + "scan:\n  allow:\n" + "".join(
            f"    - id: {finding}\n      reason: fake advisory of the test DB\n      expires: {expires.isoformat()}\n"
            for finding in ("CVE-2099-1001", PSYCOPG2)))
    return edit


PSYCOPG2 = "GHSA-fake-psyc-0001"  # a pip advisory for the backend's lockfile (app/backend/requirements.txt)


@pytest.mark.parametrize(("edit", "exit_code"), [
    (None, 1),
    (_allow(date.today() + timedelta(days=30)), 0),
    (_allow(date.today() - timedelta(days=1)), 1),
], ids=["no-allow-list", "allowed-until-next-month", "allow-list-expired"])
def test_vulnerability_gate(prefect_api: str, docker_engine: str, make_repo: Callable[..., Path],
                            tmp_path: Path, edit: Callable[[Path], None] | None, exit_code: int) -> None:
    cache = tmp_path / "trivy"
    write_trivy_db(cache, [
        Advisory("CVE-2099-1001", "debian 12", "postgresql-15", "CRITICAL", "FAKE: libpq", "99.0-1"),
        Advisory("CVE-2099-1002", "debian 12", "no-such-package", "CRITICAL", "FAKE: absent", "1.0-1"),
        Advisory(PSYCOPG2, "pip", "psycopg2", "HIGH", "FAKE: psycopg2", "2.9.6", ("<2.9.6",)),
    ])
    share_layer_cache(cache)
    repo = make_repo(APP, edit=edit)
    done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api,
                  env={"SUNDAY_TRIVY_CACHE": str(cache)})
    assert done.returncode == exit_code, done.stderr
    summary = json.loads(done.stdout)
    backend = summary["services"]["backend"]
    assert backend["vulnerabilities"]["counts"]["CRITICAL"] == 1  # found every time; the policy decides
    assert "CVE-2099-1002" not in done.stdout + done.stderr
    # the lockfiles' audit: the same DB, gate and allow-list
    audit = summary["dependencies"]
    assert audit["lockfiles"] == {"backend/requirements.txt": "backend", "frontend/package-lock.json": "frontend"}
    assert audit["findings"]["HIGH"] == 1
    named = f"{PSYCOPG2} in psycopg2 2.9.5 (backend/requirements.txt, service backend)"
    if exit_code:
        assert "CVE-2099-1001 (libpq5)" in backend["vulnerabilities"]["blocking"]
        assert re.search(r"backend image localhost:5000/sunday/backend@sha256:\w+ \(linux/(amd|arm)64\): "
                         r"\d blocking vulnerabilit(y|ies): CVE-2099-1001 in libpq5", done.stderr), done.stderr
        assert audit["blocking"] == [named] and audit["passed"] is False
        assert f"dependency audit: 1 blocking vulnerability: {named}" in done.stderr, done.stderr
    else:
        assert backend["vulnerabilities"]["passed"] is True
        assert audit["passed"] is True and audit["blocking"] == [] and audit["allowed"] == [
            f"{PSYCOPG2} in psycopg2 2.9.5 (backend/requirements.txt)"]


def test_scan_without_a_db_fails_loudly(prefect_api: str, docker_engine: str, make_repo: Callable[..., Path],
                                        tmp_path: Path, registry: Registry) -> None:
    repo = make_repo(FIXTURES / "other-app", edit=_use_registry(registry.address))
    done = sunday("ci", "--repo", str(repo), "--ref", "main", "--json", api=prefect_api,
                  env={"SUNDAY_TRIVY_CACHE": str(tmp_path / "empty")})
    assert done.returncode == 1
    assert "no Trivy vulnerability DB" in done.stderr
    assert json.loads(done.stdout)["services"]["tool"]["vulnerabilities"] is None  # never "0 found"


def test_a_moved_release_tag_is_never_overwritten(prefect_api: str, docker_engine: str,
                                                 make_repo: Callable[..., Path], git: Callable[..., str],
                                                 registry: Registry) -> None:
    repo = make_repo(FIXTURES / "other-app", edit=_use_registry(registry.address))
    git(repo, "tag", "v1.0.0")
    first = sunday("ci", "--repo", str(repo), "--ref", "v1.0.0", "--json", api=prefect_api)
    assert first.returncode == 0, first.stderr
    published = json.loads(first.stdout)["services"]["tool"]
    assert "v1.0.0" in published["tags"]

    (repo / "tool" / "wordcount.sh").write_text((repo / "tool" / "wordcount.sh").read_text() + "# changed\n")
    git(repo, "commit", "-qam", "change")
    git(repo, "tag", "-f", "v1.0.0")
    second = sunday("ci", "--repo", str(repo), "--ref", "v1.0.0", api=prefect_api)
    assert second.returncode == 1
    assert f"tag {registry.address}/wordcount/tool:v1.0.0 already points at" in second.stderr
    assert "refusing to overwrite" in second.stderr
    head = httpx.head(f"http://{registry.address}/v2/wordcount/tool/manifests/v1.0.0", headers={
        "Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
    assert published["image"].endswith(head.headers["docker-content-digest"])


def test_registry_down_mid_run_then_retry_does_not_rebuild(prefect_api: str, docker_engine: str,
                                                           make_repo: Callable[..., Path],
                                                           registry: Registry) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName
    from prefect.flow_engine import run_flow
    from prefect.states import AwaitingRetry

    from flows.ci import ci

    def edit(repo: Path) -> None:  # a fresh content key, so the image has to be built and pushed
        _use_registry(registry.address)(repo)
        (repo / "tool" / "NOTE").write_text(str(time.time_ns()))

    repo = make_repo(FIXTURES / "other-app", edit=edit)
    run_ids: list[Any] = []
    done = threading.Event()

    def stop_registry_once_the_build_runs() -> None:
        """The fault: the registry goes away after the lookup, while the image is being built."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
            while not done.is_set():
                if run_ids:
                    runs = client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_ids[0]])),
                        task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["build[tool linux/amd64]"])))
                    if any(r.state and (r.state.is_running() or r.state.is_completed()) for r in runs):
                        registry.stop()
                        return
                time.sleep(0.05)

    watcher = threading.Thread(target=stop_registry_once_the_build_runs, daemon=True)
    watcher.start()
    tracked = ci.with_options(on_running=[lambda flow, flow_run, state: run_ids.append(flow_run.id)])
    first = tracked(repo=str(repo), ref="main", return_state=True)
    done.set()
    assert first.is_failed()
    message = str(first.result(raise_on_failure=False))
    assert "tool: image not published: could not push" in message, message
    assert f"to {registry.address}: " in message and "connection refused" in message, message
    run_id = first.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        push = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["push[tool linux/amd64]"])))
    assert len(push) == 1 and push[0].state is not None and push[0].state.is_failed()
    assert push[0].run_count == 4  # the first attempt and three retries with backoff

    registry.start()  # the registry is back: press Retry on the same flow run
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, AwaitingRetry(), force=True)
        flow_run = client.read_flow_run(run_id)
    second = run_flow(tracked, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert second.is_completed(), second.result(raise_on_failure=False)
    states = task_run_states(run_id)
    assert sorted(states["build[tool linux/amd64]"]) == ["Cached", "Completed"], states  # built once only
    assert sorted(states["push[tool linux/amd64]"]) == ["Completed", "Failed"], states


def test_extra_ca_certificates_reach_the_build(docker_engine: str, make_repo: Callable[..., Path],
                                               git: Callable[..., str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Corporate TLS proxies: SUNDAY_EXTRA_CA_CERTS is given to every build as EXTRA_CA_CERTS."""
    from sunday_release.config import load_config
    from tasks.images import build_platform_image
    from tasks.source import Checkout

    def consume_ca(repo: Path) -> None:
        dockerfile = repo / "tool" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text().replace(
            "FROM ${BASE_IMAGE} AS runtime\n",
            'FROM ${BASE_IMAGE} AS runtime\nARG EXTRA_CA_CERTS=""\n'
            'RUN printf "%s" "$EXTRA_CA_CERTS" > /extra-ca.pem\n'))

    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "proxy.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB-fake-proxy-ca\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SUNDAY_EXTRA_CA_CERTS", str(certs))
    repo = make_repo(FIXTURES / "other-app", edit=consume_ca)
    checkout = Checkout(str(repo), "main", str(repo), git(repo, "rev-parse", "HEAD"), "2026-01-01T00:00:00+00:00")
    config = load_config(repo)
    tag = build_platform_image.fn("tool", config.services["tool"], checkout, config, "linux/amd64", "cafe" * 6)
    inside = subprocess.run([DOCKER, "run", "--rm", "--entrypoint", "cat", tag, "/extra-ca.pem"],
                            capture_output=True, text=True, check=True)
    subprocess.run([DOCKER, "rmi", tag], capture_output=True, check=False)
    assert inside.stdout == (certs / "proxy.crt").read_text()
