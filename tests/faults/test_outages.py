"""Outages of 10 s mid-stage (registry, S3, dockerd) and a full workspace disk: retried or failed clearly,
nothing lost or half-published, and a re-run completes.

Every outage is of a service the test owns (its registry, its moto_server behind a fault proxy, its
private dockerd, its tmpfs): never the machine's dockerd or its registry on :5000.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from pydantic import SecretStr

from devtools.build_host import PrivateDockerd
from sunday_release.backup import list_backups, manifest_key, s3_client
from tasks.backup import backup_database
from tests.conftest import DOCKER, FIXTURES, Registry
from tests.faults._outage import FaultProxy, Tmpfs, run_cli_with_fault
from tests.pg import S3, Postgres, postgres, s3  # noqa: F401  (fixtures)

pytestmark = pytest.mark.docker

OUTAGE = 10.0  # seconds
_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_MANIFESTS = ", ".join([_LIST, "application/vnd.oci.image.index.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json",
                        "application/vnd.oci.image.manifest.v1+json"])


def _task_runs(flow_run_id: str) -> dict[str, list[Any]]:
    """The task runs of a flow run by name (random suffixes kept off)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    found: dict[str, list[Any]] = {}
    for run in runs:
        found.setdefault(run.name, []).append(run)
    return found


def _other_app(registry: str, note: str) -> Callable[[Path], None]:
    """The small fixture app, publishing to `registry`, with fresh content (so its image is built)."""
    def edit(repo: Path) -> None:
        config = repo / "sunday-release.yaml"
        config.write_text(f"registry: {registry}\n" + config.read_text())
        (repo / "tool" / "NOTE").write_text(f"{note} {time.time_ns()}\n")
    return edit


def _assert_complete(registry: str, repository: str, tag: str) -> None:
    """`tag` names a manifest list whose every manifest and blob the registry has: nothing half-published."""
    base = f"http://{registry}/v2/{repository}"
    index = httpx.get(f"{base}/manifests/{tag}", headers={"Accept": _MANIFESTS}, timeout=10)
    assert index.status_code == 200, f"{tag}: {index.status_code}"
    for entry in index.json()["manifests"]:
        manifest = httpx.get(f"{base}/manifests/{entry['digest']}", headers={"Accept": _MANIFESTS}, timeout=10)
        assert manifest.status_code == 200, f"{tag}: {entry['digest']} is missing"
        body = manifest.json()
        for blob in [body["config"], *body["layers"]]:
            head = httpx.head(f"{base}/blobs/{blob['digest']}", timeout=10)
            assert head.status_code == 200, f"{tag}: blob {blob['digest']} is missing"


# ------------------------------------------------------------------------------------------------ registry


def test_registry_down_10s_mid_publish_is_retried_and_completes(prefect_api: str, docker_engine: str,
                                                                make_repo: Callable[..., Path],
                                                                git: Callable[..., str],
                                                                registry: Registry) -> None:
    started = time.monotonic()
    repo = make_repo(FIXTURES / "other-app", edit=_other_app(registry.address, "registry outage"))
    commit = git(repo, "rev-parse", "HEAD")
    back = threading.Timer(OUTAGE, registry.start)

    def registry_goes_away() -> None:
        registry.stop()
        back.start()

    try:
        code, out, err, injected = run_cli_with_fault(
            ["ci", "--repo", str(repo), "--ref", "main", "--json"], "pushing linux/amd64", registry_goes_away,
            {"PREFECT_API_URL": prefect_api})
    finally:
        if back.is_alive():
            back.join(OUTAGE + 15)
        if registry.proc is None:
            registry.start()
    assert injected, err
    assert code == 0, err  # retried with backoff until the registry was back
    summary = json.loads(out)
    tool = summary["services"]["tool"]
    assert tool["cached"] is False and f"sha-{commit}" in tool["tags"]
    runs = _task_runs(summary["flow_run_id"])
    retried = {name: r.run_count for name, rs in runs.items() for r in rs
               if name.startswith(("push[", "publish[", "tag[")) and r.run_count > 1}
    assert retried, f"no registry task was retried: the outage was not hit ({runs.keys()})"
    for tag in tool["tags"]:  # every tag points at a complete image
        _assert_complete(registry.address, "wordcount/tool", tag)

    again = run_cli_with_fault(["ci", "--repo", str(repo), "--ref", "main", "--json"], "\0", lambda: None,
                               {"PREFECT_API_URL": prefect_api})
    assert again[0] == 0, again[2]
    assert json.loads(again[1])["services"]["tool"]["cached"] is True  # the published image is whole: reused
    print(f"\nregistry outage: retried {retried}; case took {time.monotonic() - started:.1f}s")


# ------------------------------------------------------------------------------------------------ S3


def test_s3_down_10s_mid_upload_is_retried_and_the_backup_is_whole(postgres: Postgres, s3: S3,  # noqa: F811
                                                                   tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    caplog.set_level(logging.INFO)
    moto = urlparse(s3.endpoint_url)
    # cut in the PUT of the dump (its manifest went up first: a backup is listed only once it has one)
    proxy = FaultProxy((moto.hostname or "127.0.0.1", moto.port or 80), cut_on=b".dump HTTP/1.1", seconds=OUTAGE)
    try:
        record = backup_database.fn(env="staging", dsn=SecretStr(postgres.dsn), bucket=s3.bucket, prefix="db",
                                    keep=5, endpoint_url=proxy.url, workdir=str(tmp_path / "work"))
    finally:
        proxy.down()
    assert proxy.refused_at is not None and proxy.back_at is not None, "the upload was never cut"
    retries = [r.getMessage() for r in caplog.records if "S3 unreachable (attempt" in r.getMessage()]
    assert retries, "the cut upload was not retried"
    assert record.verified
    client = s3_client(s3.endpoint_url, "us-east-1")
    assert list_backups(client, s3.bucket, "db/staging") == [record.key]  # the one good backup, no partial one
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]
    assert sorted(keys) == sorted([record.key, manifest_key(record.key)])  # it and its manifest, nothing else
    body = client.get_object(Bucket=s3.bucket, Key=record.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == record.sha256 and len(body) == record.size
    assert not list((tmp_path / "work").iterdir())
    print(f"\nS3 outage: {len(retries)} retries ({retries[-1]}); case took {time.monotonic() - started:.1f}s")


# ------------------------------------------------------------------------------------------------ dockerd


@pytest.fixture
def private_dockerd() -> Iterator[PrivateDockerd]:
    """A dockerd of the test's own (never the machine's), with the base image; removed afterwards.

    The machine's bridge `docker0` is the same interface afterwards: a second dockerd must not touch it.
    """
    docker0 = Path("/sys/class/net/docker0/ifindex")
    before = docker0.read_text() if docker0.exists() else None
    daemon = PrivateDockerd()
    try:
        daemon.start()
        subprocess.run([DOCKER, "--host", daemon.host, "pull", "-q", "localhost:5000/base/debian:bookworm"],
                       check=True, capture_output=True, timeout=300)
        yield daemon
    finally:
        daemon.remove()
    after = docker0.read_text() if docker0.exists() else None
    assert after == before, f"the machine's docker0 was replaced or deleted (ifindex {before} -> {after})"


def _no_run_step(repo: Path) -> None:
    """No RUN step on the private dockerd (quicker: the daemon going away is what is tested). USER by number
    needs no passwd entry."""
    dockerfile = repo / "tool" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("RUN useradd --uid 10001 --no-create-home tool\n", ""))


def test_dockerd_down_10s_mid_build_is_retried_or_fails_clearly(prefect_api: str, docker_engine: str,
                                                                make_repo: Callable[..., Path],
                                                                git: Callable[..., str], registry: Registry,
                                                                private_dockerd: PrivateDockerd) -> None:
    started = time.monotonic()

    def edit(repo: Path) -> None:
        _other_app(registry.address, "dockerd outage")(repo)
        _no_run_step(repo)

    repo = make_repo(FIXTURES / "other-app", edit=edit)
    commit = git(repo, "rev-parse", "HEAD")
    back = threading.Timer(OUTAGE, private_dockerd.start)

    def dockerd_goes_away() -> None:
        private_dockerd.stop()
        back.start()

    env = {"PREFECT_API_URL": prefect_api, "DOCKER_HOST": private_dockerd.host}
    try:
        code, out, err, injected = run_cli_with_fault(
            ["ci", "--repo", str(repo), "--ref", "main", "--json"], "building linux/amd64", dockerd_goes_away, env)
    finally:
        if back.is_alive():
            back.join(OUTAGE + 90)
        if private_dockerd.proc is None:
            private_dockerd.start()
    assert injected, err
    summary = json.loads(out)
    runs = _task_runs(summary["flow_run_id"])
    docker_tasks = {name: r.run_count for name, rs in runs.items() for r in rs
                    if name.startswith(("build[", "push["))}
    assert any(n > 1 for n in docker_tasks.values()), f"nothing was retried: {docker_tasks}\n{err}"
    tool = summary["services"]["tool"]
    if code == 0:
        assert f"sha-{commit}" in tool["tags"]
        for tag in tool["tags"]:
            _assert_complete(registry.address, "wordcount/tool", tag)
    else:  # failed: it says the daemon, and published nothing
        assert code == 1 and f"the Docker daemon {private_dockerd.host} is unavailable" in err, err
        tags = httpx.get(f"http://{registry.address}/v2/wordcount/tool/tags/list", timeout=10)
        assert tags.status_code == 404 or not tags.json().get("tags"), tags.text
    # the daemon is back: a re-run completes and publishes a whole image
    again = run_cli_with_fault(["ci", "--repo", str(repo), "--ref", "main", "--json"], "\0", lambda: None, env)
    assert again[0] == 0, again[2]
    for tag in json.loads(again[1])["services"]["tool"]["tags"]:
        _assert_complete(registry.address, "wordcount/tool", tag)
    print(f"\ndockerd outage: exit {code}, run counts {docker_tasks}; case took {time.monotonic() - started:.1f}s")


# ------------------------------------------------------------------------------------------------ disk full


def test_a_full_workspace_disk_fails_clearly_and_a_retry_clones_afresh(prefect_api: str, docker_engine: str,
                                                                      make_repo: Callable[..., Path],
                                                                      git: Callable[..., str], registry: Registry,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import AwaitingRetry

    from flows.ci import ci
    from tests.deployed_ci import task_run_states

    started = time.monotonic()

    def big(repo: Path) -> None:  # a 2 MB file that does not compress: the clone does not fit
        _other_app(registry.address, "disk full")(repo)
        (repo / "assets").mkdir()
        (repo / "assets" / "blob.bin").write_bytes(os.urandom(2 << 20))

    repo = make_repo(FIXTURES / "other-app", edit=big)
    home = tmp_path / "home"
    monkeypatch.setenv("SUNDAY_HOME", str(home))
    disk = Tmpfs(home / "workspaces", "512k")
    try:
        first = ci(repo=str(repo), ref="main", return_state=True)
        assert first.is_failed()
        message = str(first.result(raise_on_failure=False))
        first_line = message.splitlines()[0]  # what the user reads first names the disk and the workspace
        assert "workspace disk is full: no space left on device" in first_line, message
        assert str(home / "workspaces") in first_line, message
        assert not any((home / "workspaces").iterdir())  # the truncated clone is removed

        disk.resize("64m")  # space freed: press Retry on the same flow run
        run_id = first.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, AwaitingRetry(), force=True)
            flow_run = client.read_flow_run(run_id)
        second = run_flow(ci, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
        assert second.is_completed(), second.result(raise_on_failure=False)
        states = task_run_states(run_id)
        assert states["clone"] == ["Failed", "Completed"], states  # cloned afresh, nothing truncated reused
        assert second.result()["commit"] == git(repo, "rev-parse", "HEAD")
    finally:
        disk.unmount()
    print(f"\ndisk full: case took {time.monotonic() - started:.1f}s")
