"""The dependency audit's pure parts: which files are lockfiles, whose they are, the key of a report, and how the
audit reads in the CI summary. Real Trivy on the sample app's lockfiles: tests/test_ci_images.py
(`test_vulnerability_gate`), through the CI flow."""

from __future__ import annotations

import json
from pathlib import Path

from sunday_release.ci_report import audit_markdown, ci_summary, terminal_summary
from sunday_release.config import ScanPolicy
from sunday_release.findings import DependencyAudit, lockfiles_in, parse_trivy_json, service_of
from sunday_release.scan_cache import audit_cache_key

TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
REPORT = json.dumps({"SchemaVersion": 2, "Results": [
    {"Target": "backend/requirements.txt", "Class": "lang-pkgs", "Type": "pip", "Vulnerabilities": [
        {"VulnerabilityID": "GHSA-x", "PkgName": "psycopg2", "InstalledVersion": "2.9.5", "FixedVersion": "2.9.6",
         "Severity": "HIGH", "Title": "a hole"}]},
    {"Target": "frontend/package-lock.json", "Class": "lang-pkgs", "Type": "npm"}]})


def test_lockfiles_are_found_by_name_anywhere_in_the_tree() -> None:
    paths = ["backend/requirements.txt", "frontend/package-lock.json", "frontend/package.json", "go/go.mod",
             "README.md", "requirements.txt.bak", "docs/poetry.lock", "rust/Cargo.lock", "Cargo.toml"]
    assert lockfiles_in(paths) == ["backend/requirements.txt", "docs/poetry.lock", "frontend/package-lock.json",
                                   "go/go.mod", "rust/Cargo.lock"]


def test_a_lockfile_belongs_to_the_service_whose_context_holds_it_the_deepest_first() -> None:
    contexts = {"backend": "backend", "admin": "backend/admin", "root": ".", "web": "frontend/"}
    assert service_of("backend/requirements.txt", contexts) == "backend"
    assert service_of("backend/admin/requirements.txt", contexts) == "admin"
    assert service_of("frontend/package-lock.json", contexts) == "web"
    assert service_of("tools/go.mod", contexts) == "root"  # the repository's root is a context too
    assert service_of("backendx/requirements.txt", {"backend": "backend"}) == ""  # a prefix is not a directory


def test_the_audit_names_package_version_id_lockfile_and_service_and_reads_in_the_summary() -> None:
    report = parse_trivy_json(REPORT, ScanPolicy())
    audit = DependencyAudit(report, {"backend/requirements.txt": "backend", "frontend/package-lock.json": "frontend"},
                            "/runs/r/sarif/dependencies.sarif")
    assert audit.blocking_lines() == ["GHSA-x in psycopg2 2.9.5 (backend/requirements.txt, service backend)"]
    summary = ci_summary("run", "FAILED", "c0ffee" * 7, ["backend"], [], None, audit=audit)
    assert summary["dependencies"]["passed"] is False and summary["dependencies"]["findings"]["HIGH"] == 1
    assert "dependencies 2 lockfile(s): 1 high; failed" in terminal_summary(summary)
    assert "blocks: GHSA-x in psycopg2 2.9.5" in terminal_summary(summary)
    markdown = audit_markdown("shop", "c0ffee" * 7, audit)
    assert markdown.startswith("# Dependency audit of shop at c0ffeec0ffee\n")
    assert "- `backend/requirements.txt` (service backend)" in markdown and "| HIGH | vulnerability | GHSA-x |" in \
        markdown and "SARIF: `/runs/r/sarif/dependencies.sarif`" in markdown


def test_a_report_is_keyed_by_tree_trivy_db_and_flags(tmp_path: Path) -> None:
    trivy = tmp_path / "trivy"
    trivy.write_bytes(b"binary")
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "trivy.db").write_bytes(b"db 1")
    (tmp_path / "db" / "metadata.json").write_text('{"UpdatedAt": "2026-12-01T00:00:00Z", "DownloadedAt": "x"}')
    key = audit_cache_key(TREE, str(trivy), tmp_path, ["--scanners", "vuln"])
    assert key is not None and key == audit_cache_key(TREE, str(trivy), tmp_path, ["--scanners", "vuln"])
    assert audit_cache_key("e" * 40, str(trivy), tmp_path, ["--scanners", "vuln"]) != key  # another tree
    assert audit_cache_key(TREE, str(trivy), tmp_path, ["--ignore-unfixed"]) != key  # other flags
    (tmp_path / "db" / "metadata.json").write_text('{"UpdatedAt": "2026-12-01T00:00:00Z", "DownloadedAt": "y"}')
    assert audit_cache_key(TREE, str(trivy), tmp_path, ["--scanners", "vuln"]) == key  # a download time is not a DB
    (tmp_path / "db" / "trivy.db").write_bytes(b"db 2")
    assert audit_cache_key(TREE, str(trivy), tmp_path, ["--scanners", "vuln"]) != key  # another DB
    assert audit_cache_key("HEAD", str(trivy), tmp_path, []) is None
