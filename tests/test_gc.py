"""`gc`: bounded retention of workspaces, run directories and check images; nothing an unfinished run uses.

The plan is pure (sunday_release/hygiene.py); the flow runs on a real Prefect server (which runs are
unfinished) and the real Docker engine (check images loaded with an old creation date).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sunday_release.errors import InputError
from sunday_release.hygiene import Item, Retention, docker_time, plan
from tests.conftest import DOCKER, ROOT

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def item(kind: str, name: str, days: float, run_id: str | None = None, project: str | None = None) -> Item:
    return Item(kind, name, NOW - timedelta(days=days), run_id=run_id, project=project)  # type: ignore[arg-type]


def test_each_kind_is_kept_for_its_own_retention() -> None:
    items = [item("workspace", "w-old", 8, "r1"), item("workspace", "w-new", 6, "r2"),
             item("run", "r-old", 15, "r3"), item("run", "r-new", 13, "r4"),
             item("check-image", "i-old", 4, project="shop"), item("check-image", "i-new", 2, project="shop")]
    remove, keep = plan(items, Retention(), NOW, active_runs=set())
    assert [i.name for i in remove] == ["w-old", "r-old", "i-old"]
    assert [i.name for i in keep] == ["w-new", "r-new", "i-new"]


def test_what_an_unfinished_run_uses_is_never_removed() -> None:
    items = [item("workspace", "paused-deploy", 300, "r1"), item("run", "retry-pending", 300, "r2")]
    remove, keep = plan(items, Retention(), NOW, active_runs={"r1", "r2"})
    assert remove == [] and len(keep) == 2


def test_project_scopes_the_check_images_only() -> None:
    items = [item("check-image", "mine", 10, project="shop"), item("check-image", "theirs", 10, project="shop-api"),
             item("check-image", "unlabelled", 10), item("workspace", "w", 10, "r1")]
    remove, _ = plan(items, Retention(), NOW, set(), project="shop")
    assert [i.name for i in remove] == ["mine"]
    remove, _ = plan(items, Retention(), NOW, set())
    assert [i.name for i in remove] == ["mine", "theirs", "unlabelled", "w"]


@pytest.mark.parametrize(("field", "flag"), [("workspace_days", "--workspace-days"), ("run_days", "--run-days"),
                                             ("check_image_days", "--check-image-days")])
@pytest.mark.parametrize("days", [0.5, 0, -3, float("nan")])
def test_a_retention_under_a_day_is_refused_naming_the_flag(field: str, flag: str, days: float) -> None:
    with pytest.raises(InputError, match=f"^{flag}: .* below the minimum of 1 day"):
        Retention(**{field: days})


def test_docker_timestamps_with_nanoseconds() -> None:
    assert docker_time("2020-01-02T03:04:05.123456789Z") == datetime(2020, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert docker_time("2020-01-02T03:04:05Z") == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a Docker timestamp"):
        docker_time("yesterday")


def test_the_cli_refuses_a_short_retention_before_any_run(tmp_path: Path) -> None:
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "sunday-release"), "gc", "--run-days", "0.25"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "SUNDAY_HOME": str(tmp_path), "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert done.returncode == 2, done.stderr
    assert "--run-days: 0.25 is below the minimum of 1 day" in done.stderr


# ---------------------------------------------------------------- on the real server and engine
def load_image(reference: str, created: str, project: str) -> None:
    """`docker load` a one-layer image with the given creation date and `sunday.project` label."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w"):
        pass
    layer_bytes = layer.getvalue()
    diff_id = f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": created,
                         "config": {"Labels": {"sunday.project": project}},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [reference], "Layers": ["layer.tar"]}]).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("layer.tar", layer_bytes), ("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    subprocess.run([DOCKER, "load", "-q"], input=archive.getvalue(), capture_output=True, check=True, timeout=120)


def image_exists(reference: str) -> bool:
    return subprocess.run([DOCKER, "image", "inspect", reference], capture_output=True, check=False).returncode == 0


def aged(path: Path, days: float) -> Path:
    path.mkdir(parents=True)
    (path / "file").write_text("x")
    stamp = time.time() - days * 86400
    for p in (path / "file", path):
        os.utime(p, (stamp, stamp))
    return path


def test_gc_on_a_worker(prefect_api: str, docker_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.gc import gc

    @flow(name="gc-test-paused")
    def paused() -> None: ...

    with get_client(sync_client=True) as client:  # a run that is not finished: Scheduled, never started
        waiting = str(client.create_flow_run(paused).id)
    monkeypatch.setenv("SUNDAY_HOME", str(tmp_path))
    old_ws = aged(tmp_path / "workspaces" / "0a1b-finished", 10)
    in_use = aged(tmp_path / "workspaces" / waiting, 30)
    young_ws = aged(tmp_path / "workspaces" / "0a1b-recent", 2)
    old_run = aged(tmp_path / "runs" / "0a1b-finished", 20)
    suffix = os.urandom(3).hex()
    mine, theirs, fresh = (f"sunday-ci/gc{suffix}-web:test-old", f"sunday-ci/gx{suffix}-web:test-old",
                           f"sunday-ci/gc{suffix}-web:test-new")
    load_image(mine, "2020-01-01T00:00:00.123456789Z", f"gc{suffix}")
    load_image(theirs, "2020-01-01T00:00:00Z", f"gx{suffix}")
    load_image(fresh, datetime.now(UTC).isoformat().replace("+00:00", "Z"), f"gc{suffix}")
    try:
        dry = gc(dry_run=True)
        assert {str(old_ws), str(old_run), mine, theirs} <= set(dry["would_remove"])
        assert str(in_use) in dry["in_use"] and str(young_ws) not in dry["would_remove"]
        assert old_ws.is_dir() and old_run.is_dir() and image_exists(mine)  # a dry run removes nothing

        scoped = gc(project=f"gc{suffix}")
        assert scoped["removed"] == [mine] and scoped["problems"] == []
        assert not image_exists(mine) and image_exists(theirs) and image_exists(fresh) and old_ws.is_dir()

        everything = gc()
        assert {str(old_ws), str(old_run), theirs} <= set(everything["removed"]) and everything["problems"] == []
        assert not old_ws.exists() and not old_run.exists() and not image_exists(theirs)
        assert in_use.is_dir() and young_ws.is_dir() and image_exists(fresh)
    finally:
        subprocess.run([DOCKER, "image", "rm", "-f", mine, theirs, fresh], capture_output=True, check=False)


def test_a_tag_removed_between_the_listing_and_the_inspect_is_gone_not_an_error(docker_engine: str) -> None:
    """Another gc, a test's cleanup or a person removes a `sunday-ci/*` tag while gc takes its inventory: docker
    inspects the others and exits 1 naming the missing one; gc goes on with what is there. Other errors fail."""
    import secrets

    from sunday_release.errors import CommandFailed
    from tasks.hygiene import _inspect_images

    repository = f"sunday-ci/gcrace{secrets.token_hex(3)}-web"
    kept, also = f"{repository}:kept", f"{repository}:also"
    for tag in (kept, also):
        subprocess.run([DOCKER, "tag", "localhost:5000/base/debian:bookworm", tag], check=True, capture_output=True)
    try:
        found = _inspect_images(DOCKER, [also, f"{repository}:gone", kept])
        assert sorted(found) == [also, kept]  # both tags of one image, each by its own name
        assert found[kept]["Id"] == found[also]["Id"]
        assert _inspect_images(DOCKER, []) == {}
        with pytest.raises(CommandFailed):
            _inspect_images("/bin/false", [kept])  # exit 1 without "No such image": a real failure
    finally:
        subprocess.run([DOCKER, "image", "rm", kept, also], capture_output=True, check=False)
