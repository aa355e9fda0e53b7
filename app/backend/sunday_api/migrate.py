"""Apply sunday_api/migrations/NNN_*.sql in order, once each.

Usage: DATABASE_URL=postgresql://... python3 -m sunday_api.migrate
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_\-]+\.sql$")
_LOCK_KEY = 727_315_001  # pg_advisory_lock key, serialises concurrent migrators


def discover(directory: Path = MIGRATIONS_DIR) -> List[Tuple[str, Path]]:
    """Return (version, path) for every migration file, sorted by version."""
    found: List[Tuple[str, Path]] = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((match.group(1), path))
    found.sort()
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise SystemExit(f"duplicate migration versions in {directory}")
    return found


def apply_all(conn: Any, migrations: Sequence[Tuple[str, Path]]) -> List[str]:
    applied: List[str] = []
    with conn:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version TEXT PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
            for version, path in migrations:
                if version in done:
                    continue
                cur.execute(path.read_text(encoding="utf-8"))
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, path.name)
                )
                applied.append(path.name)
    return applied


def main(argv: Optional[List[str]] = None) -> int:
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("migrate: DATABASE_URL is not set", file=sys.stderr)
        return 2
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        applied = apply_all(conn, discover())
    finally:
        conn.close()
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("migrate: database is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
