"""Verified backups against a real PostgreSQL 15 and a real S3 endpoint (moto_server standing in for AWS)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

import sunday_release.backup as backup_module
import tasks.backup as backup_task
from flows.cd import restored_database_name
from sunday_release.backup import (
    BackupFailed,
    backup_key,
    check_backup_key,
    dump_database,
    libpq_env,
    list_backups,
    manifest_key,
    pg_tool,
    plan_prune,
    s3_client,
    verify_restore,
)
from sunday_release.errors import CommandFailed, InputError
from sunday_release.runner import run
from tasks.backup import backup_database, restore_database
from tests.conftest import ROOT, free_port
from tests.pg import APP_PASSWORD, S3, Postgres, postgres, s3  # noqa: F401  (fixtures)

KEY_RE = r"^db/staging/\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{12}\.dump$"


def live_counts(pg: Postgres) -> dict[str, int]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        return backup_module.table_counts(conn)


def scratch_databases(pg: Postgres) -> list[object]:
    return [r[0] for r in pg.sql("SELECT datname FROM pg_database WHERE datname LIKE 'sunday_verify_%'")]


def chain(exc: BaseException | None) -> str:
    """Every message of an exception, its causes and contexts, and the argv of CommandFailed ones."""
    texts = []
    while exc is not None:
        texts.append(repr(exc) + str(exc) + " ".join(getattr(exc, "argv", [])))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(texts)


def assert_no_password(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for text in texts:
        assert APP_PASSWORD not in text
    for record in caplog.records:
        assert APP_PASSWORD not in record.getMessage()
        assert APP_PASSWORD not in str(record.__dict__)


@pytest.fixture
def recorded_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """The (argv, env) of every command the backup module runs (they still run for real)."""
    calls: list[tuple[list[str], dict[str, str]]] = []

    def recording(argv: list[str], **kwargs: Any) -> Any:
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return run(argv, **kwargs)

    monkeypatch.setattr(backup_module, "run", recording)
    return calls


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup_task, "RETRY_DELAYS", [0.05, 0.05])


def test_backup_end_to_end(postgres: Postgres, s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture,  # noqa: F811
                           recorded_runs: list[tuple[list[str], dict[str, str]]]) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    record = backup_database.fn(env="staging", dsn=SecretStr(postgres.dsn), bucket=s3.bucket, prefix="db", keep=5,
                                endpoint_url=s3.endpoint_url, workdir=str(tmp_path / "work"))
    seconds = time.monotonic() - started

    assert record.verified and record.env == "staging" and record.bucket == s3.bucket
    assert record.table_counts == live_counts(postgres) == {"audit.events": 5, "boards": 3, "items": 42}
    client = s3_client(s3.endpoint_url, "us-east-1")
    head = client.head_object(Bucket=s3.bucket, Key=record.key)
    assert head["Metadata"]["sha256"] == record.sha256 and head["ContentLength"] == record.size
    body = client.get_object(Bucket=s3.bucket, Key=record.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == record.sha256 and body[:5] == b"PGDMP"  # custom-format dump
    assert list_backups(client, s3.bucket, "db/staging") == [record.key]
    assert re.match(KEY_RE, record.key) and record.sha256[:12] in record.key
    assert not list((tmp_path / "work").iterdir())  # the local dump (production data) is removed
    assert scratch_databases(postgres) == []
    # pg_dump and pg_restore ran; the password went through the environment, never argv
    assert [Path(argv[0]).name for argv, _ in recorded_runs] == ["pg_dump", "pg_restore"]
    assert all(env["PGPASSWORD"] == APP_PASSWORD for _, env in recorded_runs)
    assert_no_password(caplog, *(" ".join(argv) for argv, _ in recorded_runs))
    assert any("restore check of staging passed" in r.getMessage() for r in caplog.records)
    print(f"\nend-to-end backup: {record.size} bytes in {seconds:.2f}s, key {record.key}")


def test_counts_match_the_dump_under_concurrent_writes(postgres: Postgres, tmp_path: Path) -> None:  # noqa: F811
    stop = threading.Event()
    inserted = [0]

    def writer() -> None:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO items (board_id, title) VALUES (1, 'concurrent')")
                inserted[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while inserted[0] < 50:
            time.sleep(0.01)
        before = postgres.sql("SELECT clock_timestamp()")[0][0]
        started = time.monotonic()
        counts, sha256, size = dump_database(postgres.dsn, tmp_path / "live.dump")
        seconds = time.monotonic() - started
        after = postgres.sql("SELECT clock_timestamp()")[0][0]
        time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    during = postgres.sql(f"SELECT count(*) FROM items WHERE created_at BETWEEN '{before}' AND '{after}'")[0][0]
    final = live_counts(postgres)["items"]
    assert isinstance(during, int) and during > 0, "no insert ran while the dump was taken"
    assert final > counts["items"]
    # the restored copy has exactly the counted rows: counts and dump come from the same snapshot
    verify_restore(tmp_path / "live.dump", postgres.admin_dsn, counts)
    assert (sha256, size) == backup_module.file_digest(tmp_path / "live.dump")
    print(f"\nsnapshot dump: {size} bytes in {seconds:.2f}s; items {counts['items']} in the dump, "
          f"{during} inserted while it ran, {final} at the end")


def test_restore_mismatch_is_reported_and_scratch_dropped(postgres: Postgres, tmp_path: Path) -> None:  # noqa: F811
    counts, _, _ = dump_database(postgres.dsn, tmp_path / "db.dump")
    n = counts["items"]
    with pytest.raises(BackupFailed) as err:
        verify_restore(tmp_path / "db.dump", postgres.admin_dsn, {**counts, "items": n + 1, "ghost": 7})
    message = str(err.value)
    assert f"items has {n} rows in the restored copy, {n + 1} in the dump" in message
    assert "ghost is missing from the restored copy (7 rows in the dump)" in message
    assert "boards" not in message
    assert scratch_databases(postgres) == []


def test_a_broken_dump_fails_the_restore_check(postgres: Postgres, tmp_path: Path) -> None:  # noqa: F811
    dump = tmp_path / "broken.dump"
    dump.write_bytes(b"PGDMP not really")
    with pytest.raises(BackupFailed) as err:
        verify_restore(dump, postgres.admin_dsn, {"items": 1})
    assert "restore check failed: pg_restore" in str(err.value)
    assert isinstance(err.value.__cause__, CommandFailed)
    assert scratch_databases(postgres) == []


def test_a_role_without_createdb_cannot_check(postgres: Postgres, tmp_path: Path) -> None:  # noqa: F811
    postgres.sql(f"CREATE ROLE reader LOGIN PASSWORD '{APP_PASSWORD}'", postgres.admin_dsn)
    reader = postgres.dsn.replace("//sunday:", "//reader:")
    with pytest.raises(BackupFailed) as err:
        verify_restore(tmp_path / "never-read.dump", reader, {})
    assert "cannot create a scratch database" in str(err.value) and "permission denied" in str(err.value)
    assert APP_PASSWORD not in chain(err.value)


def test_s3_unreachable_fails_clearly_after_retries(postgres: Postgres, tmp_path: Path,  # noqa: F811
                                                    caplog: pytest.LogCaptureFixture, fast_retries: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-not-a-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-not-a-secret")
    caplog.set_level(logging.INFO)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BackupFailed) as err:
        backup_database.fn(env="staging", dsn=SecretStr(postgres.dsn), bucket="b", prefix="db", keep=2,
                           endpoint_url=endpoint, workdir=str(tmp_path))
    message = str(err.value)
    assert message.startswith("backup of staging failed: S3 endpoint " + endpoint)
    assert "unreachable" in message and "gave up after 3 attempts" in message
    assert sum("S3 unreachable (attempt" in r.getMessage() for r in caplog.records) == 2
    assert not list(tmp_path.iterdir())
    assert_no_password(caplog, chain(err.value))
    assert "testing-not-a-secret" not in chain(err.value) + caplog.text
    print(f"\nS3 unreachable: failed after 3 attempts in {time.monotonic() - started:.2f}s: {message}")


def test_retention_keeps_the_newest(postgres: Postgres, s3: S3, tmp_path: Path) -> None:  # noqa: F811
    client = s3_client(s3.endpoint_url, "us-east-1")
    client.put_object(Bucket=s3.bucket, Key="db/staging/README.txt", Body=b"not a backup")
    client.put_object(Bucket=s3.bucket, Key="db/production/20000101T000000.000000Z-0123456789ab.dump", Body=b"x")
    records = []
    for _ in range(4):
        records.append(backup_database.fn(env="staging", dsn=SecretStr(postgres.dsn), bucket=s3.bucket, prefix="db",
                                          keep=2, endpoint_url=s3.endpoint_url, workdir=str(tmp_path)))
    assert list_backups(client, s3.bucket, "db/staging") == [records[3].key, records[2].key]
    left = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket)["Contents"])
    assert left == sorted(["db/staging/README.txt", "db/production/20000101T000000.000000Z-0123456789ab.dump",
                           records[2].key, records[3].key, manifest_key(records[2].key), manifest_key(records[3].key)])


def test_retention_plan() -> None:
    keys = ["k4", "k3", "k2", "k1"]
    assert plan_prune(keys, 2) == ["k2", "k1"]
    assert plan_prune(keys, 2, protect={"k1"}) == ["k2"]
    assert plan_prune(keys, 9) == []
    with pytest.raises(InputError):
        plan_prune(keys, 0)


def test_backup_keys_sort_by_time() -> None:
    from datetime import UTC, datetime, timedelta

    t = datetime(2025, 3, 1, 12, 0, 0, 5, tzinfo=UTC)
    a, b = backup_key("db/", "prod", "ab" * 32, t), backup_key("db", "prod", "00" * 32, t + timedelta(microseconds=1))
    assert a == "db/prod/20250301T120000.000005Z-abababababab.dump" and b > a


def test_the_password_never_leaks(postgres: Postgres, tmp_path: Path, caplog: pytest.LogCaptureFixture,  # noqa: F811
                                  recorded_runs: list[tuple[list[str], dict[str, str]]]) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_db = postgres.dsn.rsplit("/", 1)[0] + "/nope"
    texts: list[str] = []

    # pg_dump itself failing on a wrong database name: the password was in its environment, not argv
    with pytest.raises(CommandFailed) as cmd:
        run([pg_tool("pg_dump"), "--format=custom", "--no-password", f"--file={tmp_path / 'x.dump'}"],
            env=libpq_env(wrong_db))
    assert 'database "nope" does not exist' in cmd.value.stderr_tail
    texts += [chain(cmd.value)]

    # dump_database refusing a wrong database, a wrong password, and failing inside pg_dump
    with pytest.raises(BackupFailed) as err:
        dump_database(wrong_db, tmp_path / "x.dump")
    assert 'database "nope" does not exist' in str(err.value)
    texts += [chain(err.value)]
    with pytest.raises(BackupFailed) as err:
        dump_database(postgres.dsn.replace(APP_PASSWORD, "wrong-" + APP_PASSWORD[::-1]), tmp_path / "x.dump")
    assert "password authentication failed" in str(err.value) and APP_PASSWORD[::-1] not in str(err.value)
    texts += [chain(err.value)]
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(BackupFailed) as err:
        dump_database(postgres.dsn, tmp_path / "a-directory")
    assert str(err.value).startswith("pg_dump of 127.0.0.1:") and isinstance(err.value.__cause__, CommandFailed)
    texts += [chain(err.value)]
    # a DSN that does not parse is not echoed back
    with pytest.raises(BackupFailed) as err:
        dump_database(f"host=x password={APP_PASSWORD} broken", tmp_path / "x.dump")
    texts += [chain(err.value)]

    assert recorded_runs, "pg_dump ran"
    texts += [" ".join(argv) for argv, _ in recorded_runs]
    assert_no_password(caplog, *texts)


def test_database_down(postgres: Postgres, tmp_path: Path, s3: S3) -> None:  # noqa: F811
    port = free_port()  # nothing listens there: the database is down
    down = postgres.dsn.replace(f":{postgres.port}/", f":{port}/")
    with pytest.raises(CommandFailed) as cmd:
        run([pg_tool("pg_dump"), "--format=custom", "--no-password", f"--file={tmp_path / 'x.dump'}"],
            env=libpq_env(down))
    assert cmd.value.returncode == 1 and "Connection refused" in cmd.value.stderr_tail
    with pytest.raises(BackupFailed) as err:
        backup_database.fn(env="staging", dsn=down, bucket=s3.bucket, prefix="db", keep=2,
                           endpoint_url=s3.endpoint_url, workdir=str(tmp_path / "work"))
    message = str(err.value)
    assert message.startswith(f"backup of staging failed: cannot connect to database 127.0.0.1:{port}/sunday")
    assert "Connection refused" in message and APP_PASSWORD not in chain(err.value)
    assert "Contents" not in s3_client(s3.endpoint_url, "us-east-1").list_objects_v2(Bucket=s3.bucket)


def test_dsn_becomes_libpq_environment() -> None:
    env = libpq_env("postgresql://u:p%40ss@db.internal:6432/app?sslmode=require", dbname="scratch")
    assert env == {"PGHOST": "db.internal", "PGPORT": "6432", "PGUSER": "u", "PGPASSWORD": "p@ss",
                   "PGDATABASE": "scratch", "PGSSLMODE": "require"}
    with pytest.raises(BackupFailed, match="sslpassword"):
        libpq_env("host=x sslpassword=secret")


def databases(pg: Postgres) -> list[object]:
    return [r[0] for r in pg.sql("SELECT datname FROM pg_database WHERE datname NOT LIKE 'template%' ORDER BY 1")]


def test_a_backup_restores_into_a_new_database_checked_against_its_manifest(
        postgres: Postgres, s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture,  # noqa: F811
        recorded_runs: list[tuple[list[str], dict[str, str]]]) -> None:
    caplog.set_level(logging.DEBUG)
    record = backup_database.fn(env="staging", dsn=SecretStr(postgres.dsn), bucket=s3.bucket, prefix="db", keep=5,
                                endpoint_url=s3.endpoint_url, workdir=str(tmp_path / "work"))
    client = s3_client(s3.endpoint_url, "us-east-1")
    manifest = backup_module.read_manifest(client, s3.bucket, record.key)
    assert manifest["table_counts"] == record.table_counts and manifest["sha256"] == record.sha256
    postgres.sql("INSERT INTO items (board_id, title) SELECT 1, 'after the backup' FROM generate_series(1, 7)")
    before = databases(postgres)

    def restore(key: str, database: str) -> dict[str, Any]:
        result: dict[str, Any] = restore_database.fn(
            env="staging", key=key, prefix="db", owner_dsn=SecretStr(postgres.dsn), database=database,
            bucket=s3.bucket, endpoint_url=s3.endpoint_url, workdir=str(tmp_path / "work"))
        return result

    restored = restore(record.key, "restored_one")
    assert restored["table_counts"] == record.table_counts and record.table_counts["items"] > 0
    assert (restored["database"], restored["key"], restored["sha256"]) == ("restored_one", record.key, record.sha256)
    with psycopg.connect(postgres.dsn, dbname="restored_one", autocommit=True) as conn:
        assert backup_module.table_counts(conn) == record.table_counts  # the backup's rows, not the 7 written since
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'restored_one'")
        assert owner.fetchone() == ("sunday",)  # the application's role owns it, as it owns the first
    assert live_counts(postgres)["items"] == record.table_counts["items"] + 7  # the environment's: untouched
    assert not list((tmp_path / "work").iterdir())  # the downloaded dump is removed
    assert all(env["PGPASSWORD"] == APP_PASSWORD for _, env in recorded_runs)
    assert_no_password(caplog, *(" ".join(argv) for argv, _ in recorded_runs), str(restored))

    # a database of that name exists: refused, the existing one left as it is
    with pytest.raises(BackupFailed, match="cannot create database restored_one"):
        restore(record.key, "restored_one")
    # bytes that are not the stored backup's: refused before pg_restore, no database made
    stored = client.get_object(Bucket=s3.bucket, Key=record.key)
    client.put_object(Bucket=s3.bucket, Key=record.key, Body=stored["Body"].read() + b"tampered",
                      Metadata=stored["Metadata"])
    with pytest.raises(BackupFailed, match="is not the backup that was stored"):
        restore(record.key, "restored_two")
    # no manifest (a backup of an older version): its counts are unknown, so it is not restored
    client.delete_object(Bucket=s3.bucket, Key=manifest_key(record.key))
    with pytest.raises(BackupFailed, match="has no manifest"):
        restore(record.key, "restored_three")
    # a key that is not this environment's backup, or a name that is not a database's: input errors
    other = record.key.replace("db/staging/", "db/production/")
    with pytest.raises(InputError, match=r"--from: .* is not a backup of this environment"):
        restore(other, "restored_four")
    with pytest.raises(InputError, match=r"database: .* is not a valid database name"):
        restore(record.key, "Restored; DROP DATABASE sunday")
    missing = record.key.replace(record.key[-17:-5], "0" * 12)
    with pytest.raises(BackupFailed, match=r"no manifest|there is no backup"):
        restore(missing, "restored_five")
    assert databases(postgres) == sorted([*before, "restored_one"])  # every failed restore left nothing
    assert not list((tmp_path / "work").iterdir())


def test_a_restore_whose_counts_differ_drops_its_new_database(postgres: Postgres, tmp_path: Path) -> None:  # noqa: F811
    counts, _, _ = dump_database(postgres.dsn, tmp_path / "db.dump")
    before = databases(postgres)
    with pytest.raises(BackupFailed, match="restore into restored_x failed \\(dropped\\): items has"):
        backup_module.restore_into(tmp_path / "db.dump", postgres.dsn, "restored_x", {**counts, "items": 1})
    assert databases(postgres) == before


@pytest.mark.parametrize("key", [
    "db/sunday/staging/20261206T101010.123456Z-0123456789ab.json",  # a manifest, not a backup
    "db/sunday/production/20261206T101010.123456Z-0123456789ab.dump",  # another environment's
    "db/other/staging/20261206T101010.123456Z-0123456789ab.dump",  # another project's
    "db/sunday/staging/../production/20261206T101010.123456Z-0123456789ab.dump",
    "db/sunday/staging/20261206T101010.123456Z-0123456789ab.dump\n",
    "", "s3://bucket/db/sunday/staging/20261206T101010.123456Z-0123456789ab.dump",
])
def test_only_a_backup_of_the_environment_is_restored(key: str) -> None:
    with pytest.raises(InputError, match=r"^--from: "):
        check_backup_key(key, "db/sunday/staging")


def test_a_restored_database_is_named_by_when_and_which_backup() -> None:
    from datetime import UTC, datetime

    key = "db/sunday/staging/20261206T101010.123456Z-0123456789ab.dump"
    assert check_backup_key(key, "db/sunday/staging/") == key
    when = datetime(2026, 12, 6, 17, 5, 9, tzinfo=UTC)
    assert restored_database_name(key, when) == "restored_20261206t170509_01234567"


@pytest.mark.parametrize(("key", "says"), [
    ("db/sunday/production/20261206T101010.123456Z-0123456789ab.dump", "is not a backup of this environment"),
    ("../20261206T101010.123456Z-0123456789ab.dump", "is not a backup of this environment"),
])
def test_the_cli_refuses_a_backup_of_another_environment_before_any_run(tmp_path: Path, key: str, says: str) -> None:
    (tmp_path / "envs" / "sunday" / "staging").mkdir(parents=True)
    (tmp_path / "envs" / "sunday" / "staging" / "config.json").write_text("{}")  # staging was deployed here
    cli = str(ROOT / ".venv" / "bin" / "sunday-release")
    done = subprocess.run([cli, "restore", "--env", "staging", "--from", key], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "SUNDAY_HOME": str(tmp_path), "SUNDAY_ENV_ROOT": str(tmp_path / "envs"),
                               "PREFECT_API_URL": "http://127.0.0.1:9/api"})  # nothing answers there: no run started
    assert done.returncode == 2, done.stderr
    assert f"--from: {key!r} {says}: its backups are db/sunday/staging/" in done.stderr, done.stderr
