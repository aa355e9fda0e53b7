"""Backup and restore of a staging database with 100k rows, side by side with plain pg_dump / pg_restore.

One environment of the sample app on the docker target (CI, then `cd`), its database grown to 100k items, S3 on
moto_server (standing in for AWS). Each round times, on the same database in the same run:

    pg_dump -Fc                              the plain dump
    createdb + pg_restore                    the plain restore into a new database
    backup   (tasks.backup.backup_database)  dump + restore check in a scratch database + manifest + upload
    restore  (tasks.backup.restore_database) manifest + download (sha256 checked) + pg_restore + counts compared

and prints the ratios: backup / pg_dump, backup / (pg_dump + pg_restore) — what a backup checked by hand costs —
and restore / pg_restore (target <= 1.5). Then one `sunday-release backup` and `sunday-release restore` through the
CLI under constant k6 load (10 users): the requests that failed during the restore and its switch (target 0).

    .venv/bin/python bench/restore.py [--rounds 3] [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from _common import ROOT, free_port, git, make_repo, prefect_server, run_ci
from bluegreen import CLI, K6, SCRIPT, cleanup, deploy
from pydantic import SecretStr

from sunday_release.backup import pg_tool
from sunday_release.runner import run
from sunday_release.targets.local_db import LocalDatabase
from tasks.backup import backup_database, restore_database

BUCKET = "sunday-bench-backups"
T = TypeVar("T")


def configure(repo: Path, env: str) -> tuple[int, int]:
    port, db_port = free_port(), free_port()
    config = repo / "sunday-release.yaml"
    config.write_text(config.read_text().replace("environments:\n", (
        f"environments:\n  {env}: {{port: {port}, db_port: {db_port}, watch_seconds: 5, drain_seconds: 1}}\n"), 1))
    git(repo, "commit", "-qam", f"environment {env}")
    return port, db_port


def moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import boto3
    import botocore.exceptions

    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(
                Bucket=BUCKET)
            return proc
        except botocore.exceptions.EndpointConnectionError:
            if time.monotonic() > deadline:
                sys.exit("moto_server did not start")
            time.sleep(0.2)


def timed(call: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """(seconds, result) of `call(*args, **kwargs)`."""
    started = time.monotonic()
    result = call(*args, **kwargs)
    return time.monotonic() - started, result


def plain_dump_and_restore(db: LocalDatabase, work: Path) -> tuple[float, float]:
    """Seconds of a plain `pg_dump -Fc`, and of `createdb` + `pg_restore` of it into a new database (then dropped)."""
    dump = work / "plain.dump"
    env = {"PGPASSWORD": db.password()}
    where = ["-h", "127.0.0.1", "-p", str(db.port), "-U", db.user]
    dumped, _ = timed(run, [pg_tool("pg_dump"), "-Fc", *where, "-f", str(dump), db.name], env=env, timeout=600)
    name = f"plain_{secrets.token_hex(4)}"
    created, _ = timed(run, [pg_tool("createdb"), *where, name], env=env)
    restored, _ = timed(run, [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", *where,
                              "-d", name, str(dump)], env=env, timeout=600)
    run([pg_tool("dropdb"), *where, name], env=env)
    dump.unlink()
    return dumped, created + restored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    env = f"rs-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="sunday-bench-restore-") as tmp:
        home = Path(tmp)
        db_root = home / "db"
        db_root.mkdir()
        db_root.chmod(0o755)
        home.chmod(0o755)
        s3_port = free_port()
        os.environ |= {"SUNDAY_DB_ROOT": str(db_root), "SUNDAY_BACKUP_BUCKET": BUCKET,
                       "SUNDAY_S3_ENDPOINT": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "bench-not-a-key",
                       "AWS_SECRET_ACCESS_KEY": "bench-not-a-secret", "AWS_REGION": "us-east-1"}
        s3 = moto(s3_port)
        try:
            with prefect_server(home):
                repo = make_repo(home / "app")
                port, db_port = configure(repo, env)
                run_ci(repo)
                code, err = deploy(env, repo, git(repo, "rev-parse", "HEAD"))
                if code != 0:
                    sys.exit(f"the deploy failed:\n{err[-3000:]}")
                try:
                    return measure(args, env, port, LocalDatabase(db_root / "sunday" / env, db_port), home)
                finally:
                    cleanup(home, db_root, "sunday", env)
        finally:
            s3.terminate()
            s3.wait()


def measure(args: argparse.Namespace, env: str, port: int, db: LocalDatabase, home: Path) -> int:
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        board = conn.execute("INSERT INTO boards (name) VALUES ('bench') RETURNING id").fetchone()
        assert board is not None
        conn.execute("INSERT INTO items (board_id, title, status) SELECT %s, 'item ' || g, "
                     "(ARRAY['todo', 'doing', 'done'])[1 + g %% 3] FROM generate_series(1, %s) g",
                     (board[0], args.rows))
        conn.execute("VACUUM ANALYZE")
    work = home / "work"
    work.mkdir()
    endpoint = os.environ["SUNDAY_S3_ENDPOINT"]
    rows = []
    for i in range(args.rounds):
        dumped, restored = plain_dump_and_restore(db, work)
        backed, record = timed(backup_database.fn, env=env, dsn=SecretStr(db.dsn()), bucket=BUCKET, prefix="bench",
                               keep=2, endpoint_url=endpoint, workdir=str(work))
        restore, _ = timed(restore_database.fn, env=env, key=record.key, prefix="bench", owner_dsn=SecretStr(db.dsn()),
                           database=f"bench_restored_{i}", bucket=BUCKET, endpoint_url=endpoint, workdir=str(work))
        with psycopg.connect(db.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE bench_restored_{i}")
        rows.append({"round": i + 1, "pg_dump_s": round(dumped, 2), "pg_restore_s": round(restored, 2),
                     "backup_s": round(backed, 2), "restore_s": round(restore, 2),
                     "backup/pg_dump": round(backed / dumped, 2),
                     "backup/(pg_dump+pg_restore)": round(backed / (dumped + restored), 2),
                     "restore/pg_restore": round(restore / restored, 2), "dump_bytes": record.size})
        print(json.dumps(rows[-1]), flush=True)

    # through the CLI, under constant load: the requests that fail during the restore and its switch
    backup = subprocess.run([CLI, "backup", "--env", env, "--json"], capture_output=True, text=True, check=False)
    if backup.returncode != 0:
        sys.exit(f"sunday-release backup failed:\n{backup.stderr[-3000:]}")
    key = json.loads(backup.stdout)["key"]
    summary = home / "k6.json"
    load = subprocess.Popen([K6, "run", "--quiet", "-e", f"BASE_URL=http://127.0.0.1:{port}", "-e", "VUS=10", "-e",
                             "DURATION=20m", "--summary-export", str(summary), str(SCRIPT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        started = time.monotonic()
        done = subprocess.run([CLI, "restore", "--env", env, "--from", key, "--json"], capture_output=True, text=True,
                              check=False)
        took = time.monotonic() - started
        time.sleep(3)
    finally:
        load.send_signal(signal.SIGINT)
        load.communicate(timeout=60)
    if done.returncode != 0:
        sys.exit(f"sunday-release restore failed:\n{done.stderr[-3000:]}")
    metrics = json.loads(summary.read_text())["metrics"]
    restored = json.loads(done.stdout)
    print(json.dumps({"cli_restore_s": round(took, 1), "database": restored["database"],
                      "items": restored["table_counts"].get("items"), "requests": metrics["http_reqs"]["count"],
                      "failed": metrics["http_req_failed"]["passes"]}), flush=True)

    def median(column: str) -> float:
        return statistics.median(float(r[column]) for r in rows)

    print(f"\n{args.rows} rows, {rows[-1]['dump_bytes']} bytes of dump, median of {args.rounds} rounds:")
    print(f"  pg_dump {median('pg_dump_s'):.2f} s   backup {median('backup_s'):.2f} s   "
          f"backup/pg_dump {median('backup/pg_dump'):.2f}   "
          f"backup/(pg_dump+pg_restore) {median('backup/(pg_dump+pg_restore)'):.2f}")
    print(f"  pg_restore {median('pg_restore_s'):.2f} s   restore {median('restore_s'):.2f} s   "
          f"restore/pg_restore {median('restore/pg_restore'):.2f} (target <= 1.5)")
    print(f"  restore through the CLI under load: {took:.1f} s, {metrics['http_req_failed']['passes']} of "
          f"{metrics['http_reqs']['count']} requests failed (target 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
