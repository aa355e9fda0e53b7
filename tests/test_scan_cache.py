"""The image-scan report cache: keyed by digest, Trivy, DB and flags; never answers for another DB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sunday_release.scan_cache import ScanCache, scan_cache_key

IMAGE = "localhost:5000/sunday/backend@sha256:" + "a" * 64


@pytest.fixture
def db(tmp_path: Path) -> Path:
    cache = tmp_path / "trivy"
    (cache / "db").mkdir(parents=True)
    (cache / "db" / "metadata.json").write_text('{"Version": 2, "UpdatedAt": "2026-12-01T00:00:00Z"}')
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
        (db / "db" / "metadata.json").write_text('{"Version": 2, "UpdatedAt": "2026-12-02T00:00:00Z"}')
    elif change == "db-file":  # a new DB of the same size written over the old one
        path = db / "db" / "trivy.db"
        st = path.stat()
        path.write_bytes(b"BOLT" * 100)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    else:
        Path(trivy).write_bytes(b"\x7fELF v2")
    assert scan_cache_key(image, trivy, db, flags) != before


def test_put_then_get_round_trips(tmp_path: Path) -> None:
    cache = ScanCache(tmp_path / "cache")
    sarif = tmp_path / "x.sarif"
    sarif.write_text('{"runs": []}')
    assert cache.get("k") is None
    cache.put("k", '{"Results": []}', sarif)
    got = cache.get("k")
    assert got is not None and got.report_json == '{"Results": []}'
    assert got.sarif.read_text() == '{"runs": []}'


def test_a_torn_report_is_a_miss(tmp_path: Path) -> None:
    cache = ScanCache(tmp_path / "cache")
    sarif = tmp_path / "x.sarif"
    sarif.write_text("{}")
    cache.put("k", '{"Results": []}', sarif)
    (tmp_path / "cache" / "k.json").write_text('{"Resul')
    assert cache.get("k") is None
