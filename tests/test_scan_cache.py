"""The scan report cache: an image's keyed by digest, Trivy, DB and flags (never answers for another DB);
the repository's by git tree, Trivy, checks bundle and flags; files by content, so another host shares the keys."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sunday_release.scan_cache import DIGESTS, file_digest, repo_scan_cache_key, scan_cache_key

IMAGE = "localhost:5000/sunday/backend@sha256:" + "a" * 64


def metadata(updated: datetime) -> str:
    """Trivy's `db/metadata.json`, dated relative to now so the DB never ages out of the tests."""
    return json.dumps({"Version": 2, "UpdatedAt": updated.strftime("%Y-%m-%dT%H:%M:%SZ")})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    cache = tmp_path / "trivy"
    (cache / "db").mkdir(parents=True)
    (cache / "db" / "metadata.json").write_text(metadata(datetime.now(UTC) - timedelta(days=1)))
    (cache / "db" / "trivy.db").write_bytes(b"bolt" * 100)
    return cache


@pytest.fixture
def trivy(tmp_path: Path) -> str:
    binary = tmp_path / "trivy-bin"
    binary.write_bytes(b"\x7fELF")
    return str(binary)


def test_the_same_scan_has_the_same_key(db: Path, trivy: str) -> None:
    assert scan_cache_key(IMAGE, trivy, db, ["--scanners", "vuln"]) == scan_cache_key(
        IMAGE, trivy, db, ["--scanners", "vuln"])


def test_registry_name_does_not_matter_only_the_digest(db: Path, trivy: str) -> None:
    moved = IMAGE.replace("localhost:5000", "registry.example.com")
    assert scan_cache_key(IMAGE, trivy, db, []) == scan_cache_key(moved, trivy, db, [])


def test_a_tag_reference_is_not_cached(db: Path, trivy: str) -> None:
    assert scan_cache_key("localhost:5000/sunday/backend:latest", trivy, db, []) is None


@pytest.mark.parametrize("change", ["digest", "flags", "metadata", "db-file", "trivy"])
def test_any_input_change_makes_a_new_key(db: Path, trivy: str, change: str) -> None:
    before = scan_cache_key(IMAGE, trivy, db, ["--scanners", "vuln"])
    image, flags = IMAGE, ["--scanners", "vuln"]
    if change == "digest":
        image = IMAGE[:-1] + "b"
    elif change == "flags":
        flags = [*flags, "--ignore-unfixed"]
    elif change == "metadata":
        (db / "db" / "metadata.json").write_text(metadata(datetime.now(UTC)))  # the DB was updated
    elif change == "db-file":  # a new DB of the same size written over the old one
        path = db / "db" / "trivy.db"
        st = path.stat()
        path.write_bytes(b"BOLT" * 100)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    else:
        Path(trivy).write_bytes(b"\x7fELF v2")
    assert scan_cache_key(image, trivy, db, flags) != before


TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree


def test_a_repository_scan_is_keyed_by_tree_trivy_checks_and_flags(db: Path, trivy: str) -> None:
    flags = ["fs", "--scanners", "misconfig,secret"]
    before = repo_scan_cache_key(TREE, trivy, db, flags)
    assert before and before == repo_scan_cache_key(TREE, trivy, db, list(flags))
    assert repo_scan_cache_key("0" * 40, trivy, db, flags) != before
    assert repo_scan_cache_key(TREE, trivy, db, [*flags, "--skip-dirs", "vendor"]) != before
    (db / "policy").mkdir()
    (db / "policy" / "metadata.json").write_text('{"Digest": "sha256:1"}')  # a checks bundle put in the cache
    assert repo_scan_cache_key(TREE, trivy, db, flags) != before
    bundle = repo_scan_cache_key(TREE, trivy, db, flags)
    Path(trivy).write_bytes(b"\x7fELF v2")  # another Trivy: other built-in checks
    assert repo_scan_cache_key(TREE, trivy, db, flags) not in (before, bundle)
    assert scan_cache_key(f"x@sha256:{TREE}{'0' * 24}", trivy, db, flags) != before  # never an image's key


@pytest.mark.parametrize("tree", ["", "HEAD", "main", TREE.upper(), TREE[:12], TREE + "\n"])
def test_what_is_not_a_tree_id_is_not_cached(db: Path, trivy: str, tree: str) -> None:
    assert repo_scan_cache_key(tree, trivy, db, []) is None


def test_another_host_with_the_same_trivy_and_db_makes_the_same_key(db: Path, trivy: str, tmp_path: Path) -> None:
    """Keys name content: the same DB downloaded elsewhere (its own path, inode, time and download time) and the
    same Trivy installed elsewhere give the same key, so a report kept by one worker serves every other."""
    before = scan_cache_key(IMAGE, trivy, db, ["--scanners", "vuln"])
    other = tmp_path / "host-b"
    shutil.copytree(db, other / "trivy")
    meta = json.loads((other / "trivy" / "db" / "metadata.json").read_text())
    (other / "trivy" / "db" / "metadata.json").write_text(json.dumps({**meta, "DownloadedAt": "2026-12-05T10:00:00Z"}))
    shutil.copyfile(trivy, other / "trivy-bin")
    assert scan_cache_key(IMAGE, str(other / "trivy-bin"), other / "trivy", ["--scanners", "vuln"]) == before
    assert repo_scan_cache_key(TREE, str(other / "trivy-bin"), other / "trivy", []) == repo_scan_cache_key(
        TREE, trivy, db, [])


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path) -> None:
    path, memo = tmp_path / "trivy.db", tmp_path / "cache"
    path.write_bytes(b"bolt" * 1000)
    first = file_digest(path, memo)
    remembered = json.loads((memo / DIGESTS).read_text())
    assert list(remembered.values()) == [first], remembered
    (memo / DIGESTS).write_text(json.dumps(dict.fromkeys(remembered, "remembered")))
    assert file_digest(path, memo) == "remembered"  # not read again: its identity did not change
    path.write_bytes(b"BOLT" * 1000)
    assert file_digest(path, memo) not in (first, "remembered")  # rewritten: hashed again, and remembered alone
    assert len(json.loads((memo / DIGESTS).read_text())) == 1
    assert file_digest(tmp_path / "none", memo) == "missing"


def test_a_kept_report_round_trips_and_a_foreign_or_torn_record_is_a_miss() -> None:
    from tasks.scan import keep_report, kept_report

    key = secrets.token_hex(16)
    assert kept_report(key) is None and kept_report(None) is None
    keep_report(key, '{"Results": []}', '{"runs": []}')
    assert kept_report(key) == {"json": '{"Results": []}', "sarif": '{"runs": []}'}
    keep_report(key, '{"Results": [', None)  # torn JSON
    assert kept_report(key) is None
    other = secrets.token_hex(16)
    keep_report(other, '{"Results": []}', None)  # a repository scan's: no SARIF
    assert kept_report(other) == {"json": '{"Results": []}'}


@pytest.mark.parametrize("age_days", [1, 4], ids=["fresh-db-reuses", "stale-db-refused"])
def test_a_cached_report_does_not_outlive_the_db_age_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         age_days: int) -> None:
    """The key does not age but the DB does: the task checks the DB's age before it asks the cache.

    Trivy is a file that cannot run, so a passing scan here can only be the cached report.
    """
    from devtools.trivydb import write_trivy_db
    from sunday_release.config import ScanPolicy
    from sunday_release.errors import GateFailed
    from tasks.scan import image_scan_argv, keep_report, scan_image

    trivy = tmp_path / "trivy-bin"
    trivy.write_bytes(secrets.token_bytes(16))  # not a program; another binary, so another key, in every test
    monkeypatch.setenv("SUNDAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUNDAY_TRIVY", str(trivy))
    monkeypatch.setenv("SUNDAY_TRIVY_CACHE", str(tmp_path / "trivy"))
    write_trivy_db(tmp_path / "trivy", [], now=datetime.now(UTC) - timedelta(days=age_days))
    key = scan_cache_key(IMAGE, str(trivy), tmp_path / "trivy", image_scan_argv("trivy", "", "", ScanPolicy(), True))
    assert key
    keep_report(key, '{"SchemaVersion": 2, "Results": []}', '{"runs": []}')  # kept when the DB was fresh

    if age_days < 3:
        scan = scan_image.fn("backend", "linux/amd64", IMAGE, ScanPolicy(), str(tmp_path / "sarif"))
        assert scan.report.passed and Path(scan.sarif).read_text() == '{"runs": []}'
    else:
        with pytest.raises(GateFailed, match=r"backend image .* the Trivy vulnerability DB was updated .* \(4 days"):
            scan_image.fn("backend", "linux/amd64", IMAGE, ScanPolicy(), str(tmp_path / "sarif"))


def test_image_scans_take_turns_at_trivys_layer_cache(tmp_path: Path) -> None:
    """Trivy gives up after seconds on a held cache file: a second scan waits its turn here, or fails naming it."""
    import threading
    import time

    from sunday_release.errors import PipelineError
    from tasks.scan import layer_cache_turn

    order: list[str] = []
    holding = threading.Event()

    def first() -> None:
        with layer_cache_turn(tmp_path / "trivy", timeout=5):
            holding.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first, daemon=True)
    thread.start()
    assert holding.wait(5)
    with pytest.raises(PipelineError, match=r"layer cache in .*trivy was busy for 0s"):
        with layer_cache_turn(tmp_path / "trivy", timeout=0.1):
            pass
    with layer_cache_turn(tmp_path / "trivy", timeout=5):
        order.append("second")
    thread.join(5)
    assert order == ["first done", "second"]


def test_a_report_kept_in_a_task_run_is_found_by_the_next_task_run(prefect_api: str) -> None:
    """In a task run, looking a report up and keeping it must leave it kept when the task's own result commits."""
    from prefect import flow, task

    from tasks.scan import keep_report, kept_report

    @task(persist_result=True)
    def scan_once(key: str) -> bool:
        found = kept_report(key) is not None
        if not found:
            keep_report(key, '{"Results": []}', None)
        return found

    @flow
    def twice(key: str) -> list[bool]:
        return [scan_once.with_options(refresh_cache=True)(key) for _ in range(2)]

    assert twice(secrets.token_hex(16)) == [False, True]
