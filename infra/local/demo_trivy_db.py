"""Write the demo's offline Trivy DB: FAKE advisories only (no real DB can be downloaded here).

A MEDIUM advisory for Debian's `tar` (in every image built from the base) shows in the report
without failing the gate; a CRITICAL one names a package no image has. The image scan refuses a DB
older than `scan.db_max_age_days` (default 3), so the demo's own DB is written again, dated now,
once it is a day old; a DB that is not the demo's (a real one) is never touched. Real use: point
SUNDAY_TRIVY_CACHE at a directory filled by `trivy image --download-db-only --cache-dir DIR`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devtools.trivydb import PAGE_SIZE, Advisory, read_bbolt, trivy_db_tree, write_trivy_db
from sunday_release.errors import GateFailed
from sunday_release.findings import check_db_fresh

DEMO_ADVISORIES = [
    Advisory("CVE-2099-0100", "debian 12", "tar", "MEDIUM", "FAKE demo advisory: tar (not a real CVE)", "9.9-1"),
    Advisory("CVE-2099-0101", "debian 12", "no-such-package", "CRITICAL", "FAKE demo advisory (absent package)",
             "1.0-1"),
]
REFRESH_AFTER_DAYS = 1


def is_demo_db(db: Path) -> bool:
    """Whether `db` holds exactly the demo's advisories (a real DB is far bigger: it is not read)."""
    try:
        return db.stat().st_size <= 16 * PAGE_SIZE and read_bbolt(db) == trivy_db_tree(DEMO_ADVISORIES)
    except (OSError, ValueError, IndexError):
        return False


def main(cache: Path) -> str:
    """Write, refresh or keep the DB in `cache`; returns what was done, for the demo's log."""
    db = cache / "db" / "trivy.db"
    if not db.exists():
        write_trivy_db(cache, DEMO_ADVISORIES)
        return f"wrote an offline Trivy DB with FAKE demo advisories to {cache}"
    try:
        updated = check_db_fresh(cache, REFRESH_AFTER_DAYS, datetime.now(UTC))
        return f"Trivy DB present in {cache} (updated {updated:%Y-%m-%dT%H:%M:%SZ})"
    except GateFailed as exc:
        if is_demo_db(db):
            write_trivy_db(cache, DEMO_ADVISORIES)
            return f"refreshed the FAKE demo Trivy DB in {cache} (dated now)"
        return f"Trivy DB present in {cache}, not the demo's, left alone; the image scan may refuse it: {exc}"


if __name__ == "__main__":
    print(f"[demo] {main(Path(sys.argv[1]))}")
