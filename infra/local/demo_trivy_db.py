"""Write the demo's offline Trivy DB: FAKE advisories only (no real DB can be downloaded here).

A MEDIUM advisory for Debian's `tar` (in every image built from the base) shows in the report
without failing the gate; a CRITICAL one names a package no image has. Real use: point
SUNDAY_TRIVY_CACHE at a directory filled by `trivy image --download-db-only --cache-dir DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sunday_release.trivydb import Advisory, write_trivy_db

DEMO_ADVISORIES = [
    Advisory("CVE-2099-0100", "debian 12", "tar", "MEDIUM", "FAKE demo advisory: tar (not a real CVE)", "9.9-1"),
    Advisory("CVE-2099-0101", "debian 12", "no-such-package", "CRITICAL", "FAKE demo advisory (absent package)",
             "1.0-1"),
]

if __name__ == "__main__":
    cache = Path(sys.argv[1])
    if (cache / "db" / "trivy.db").exists():
        print(f"[demo] Trivy DB present in {cache}")
    else:
        write_trivy_db(cache, DEMO_ADVISORIES)
        print(f"[demo] wrote an offline Trivy DB with FAKE demo advisories to {cache}")
