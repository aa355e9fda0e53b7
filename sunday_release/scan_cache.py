"""Trivy's raw reports, kept by what decides them: the image digest (or the repository's tree), the DB and the scanner.

An image digest names its content, so a scan of the same digest with the same Trivy binary, the
same vulnerability DB and the same flags gives the same report. A warm CI run (same commit, or an
unchanged service) reuses the report instead of scanning again; the gate (severities, allow-list
with its expiry dates) is applied to it afresh every run, so an expired allow-list entry still
blocks. A new DB (a different `metadata.json` or `trivy.db`), another Trivy or other flags make a
new key: the cache never answers for a DB it was not made with. The key does not age, the DB does:
the image scan checks the DB's age (`findings.check_db_fresh`) every run before it asks the cache,
so a report made with a DB that has since gone stale is never reused past the gate.

The repository scan (`trivy fs`, misconfigurations and secrets) is kept the same way, by the git tree
of the checkout: a tree id names every tracked file's content, mode and path, and a fresh checkout
holds exactly those files (Trivy skips `.git`). Its checks are the ones built into the Trivy binary,
or the bundle in the cache directory's `policy/` when one was put there: both are in the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CachedScan", "ScanCache", "repo_scan_cache_key", "scan_cache_key"]


def _file_identity(path: Path) -> str:
    """Path, inode, size and modification time: changes whenever the file is replaced or rewritten."""
    try:
        st = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path.resolve()}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def scan_cache_key(image: str, trivy: str, db_dir: Path, flags: list[str]) -> str | None:
    """The key of one image scan, or None when `image` is not pinned by digest (nothing to key on).

    Stale when: the image digest, the Trivy binary, the DB (`db/metadata.json` content, `db/trivy.db`
    identity) or the scan flags change.
    """
    _, at, digest = image.rpartition("@")
    if not at or not digest.startswith("sha256:"):
        return None
    db = db_dir / "db"
    try:
        metadata = (db / "metadata.json").read_text()
    except OSError:
        metadata = "missing"
    parts = [digest, _file_identity(Path(trivy)), metadata, _file_identity(db / "trivy.db"), *flags]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def repo_scan_cache_key(tree: str, trivy: str, cache_dir: Path, flags: list[str]) -> str | None:
    """The key of one repository scan of git tree `tree`, or None when `tree` is not a tree id.

    Stale when: the tree, the Trivy binary (its built-in checks), a checks bundle in `cache_dir/policy`
    or the scan flags change.
    """
    if not (len(tree) in (40, 64) and all(c in "0123456789abcdef" for c in tree)):
        return None
    parts = ["fs", tree, _file_identity(Path(trivy)), _file_identity(cache_dir / "policy" / "metadata.json"), *flags]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CachedScan:
    """Trivy's JSON report and the SARIF made from it (None for a repository scan: none is made)."""

    report_json: str
    sarif: Path | None


class ScanCache:
    """A directory of `KEY.json` (Trivy's report) and `KEY.sarif` pairs; writes are atomic renames.

    The report is written last, so a report present means its SARIF (when it has one) is too.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, key: str, sarif_needed: bool = True) -> CachedScan | None:
        report, sarif = self.root / f"{key}.json", self.root / f"{key}.sarif"
        if not report.is_file() or (sarif_needed and not sarif.is_file()):
            return None
        text = report.read_text()
        try:
            json.loads(text)
        except ValueError:  # a torn or foreign file is not a report: scan again
            return None
        return CachedScan(text, sarif if sarif_needed else None)

    def put(self, key: str, report_json: str, sarif: Path | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        writes = [] if sarif is None else [(".sarif", lambda p: shutil.copyfile(sarif, p))]
        for suffix, write in (*writes, (".json", lambda p: p.write_text(report_json))):
            tmp = self.root / f".{key}{suffix}.{os.getpid()}"
            write(tmp)
            tmp.replace(self.root / f"{key}{suffix}")
