"""Verified database backups: a consistent pg_dump, a restore check, S3 upload with checksums, retention.

    dump_database    one REPEATABLE READ transaction exports its snapshot; the rows of every user
                     table are counted in it and pg_dump --snapshot dumps exactly that state
    verify_restore   pg_restore into a scratch database (always dropped) and compare the counts
    restore_into     pg_restore into a new database that is kept when its counts are the backup's
    upload           put the dump to S3 with its sha256 (S3 checks it), read back with head_object
    prune            keep the newest N backups of a prefix; never touches other objects
    list_backups     the backups of a prefix, newest first
    manifest         each backup's table counts, in a JSON object beside it (`manifest_key`)
    download         fetch a backup and check it is the object that was stored (sha256)

Passwords never reach argv or a message: the DSN is split into libpq's PG* environment variables
for pg_dump/pg_restore, and every message built from a database error is scrubbed of the password.
The S3 client is passed in (boto3's `s3` client, see `s3_client`), so this module has no AWS set-up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from sunday_release.errors import CommandFailed, InputError, PipelineError
from sunday_release.runner import run

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

__all__ = [
    "BackupFailed",
    "BackupRecord",
    "S3Client",
    "S3Unreachable",
    "backup_key",
    "check_backup_key",
    "compare_counts",
    "describe_backups",
    "download",
    "drop_database",
    "dump_database",
    "file_digest",
    "libpq_env",
    "list_backups",
    "manifest_key",
    "pg_tool",
    "plan_prune",
    "prune",
    "read_manifest",
    "restore_into",
    "s3_client",
    "table_counts",
    "upload",
    "utc_now",
    "verify_restore",
    "write_manifest",
]

# libpq connection keywords and the environment variables pg_dump / pg_restore read them from.
_LIBPQ_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "service": "PGSERVICE", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "connect_timeout": "PGCONNECT_TIMEOUT", "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "sslcompression": "PGSSLCOMPRESSION", "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME", "channel_binding": "PGCHANNELBINDING", "require_auth": "PGREQUIREAUTH",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
T = TypeVar("T")
_KEY = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{12}\.dump$")
_SINGLE_PUT_MAX = 5 * 1024**3  # S3's limit for one PUT; larger dumps go up in parts
_COUNT_TABLES = """
    SELECT schemaname, tablename FROM pg_catalog.pg_tables
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'pg\\_%'
    ORDER BY schemaname, tablename
"""


class BackupFailed(PipelineError):
    """A backup was not taken, not stored or did not restore to the same rows: names the step."""


class S3Unreachable(BackupFailed):
    """The S3 endpoint did not answer (connection refused, timeout): the one failure worth a retry."""


@dataclass(frozen=True)
class BackupRecord:
    """A stored, restore-checked backup: where it is, what it holds and its checksum."""

    env: str
    key: str
    bucket: str
    sha256: str
    size: int
    created: str
    table_counts: dict[str, int] = field(default_factory=dict)
    verified: bool = False


# ---------------------------------------------------------------------------------------------- DSNs


def _conninfo(dsn: str) -> dict[str, str]:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise BackupFailed("invalid database DSN (not shown: it may hold a password)") from None
    return {k: str(v) for k, v in params.items() if v is not None}


def libpq_env(dsn: str, dbname: str | None = None) -> dict[str, str]:
    """The PG* environment variables that make pg_dump/pg_restore connect like `dsn` (password included).

    Args:
        dsn: a libpq URI (`postgresql://user:pw@host:port/db`) or `key=value` string.
        dbname: connect to this database instead of the DSN's.

    Raises:
        BackupFailed: the DSN does not parse or has a keyword with no environment variable.
    """
    params = _conninfo(dsn)
    if dbname is not None:
        params["dbname"] = dbname
    unknown = sorted(set(params) - set(_LIBPQ_ENV))
    if unknown:
        raise BackupFailed(f"DSN keyword(s) {', '.join(unknown)} cannot be passed to pg_dump/pg_restore")
    return {_LIBPQ_ENV[k]: v for k, v in params.items()}


def _where(dsn: str, dbname: str | None = None) -> str:
    """host:port/db of a DSN, for messages (never the user's password)."""
    p = _conninfo(dsn)
    return f"{p.get('host', 'localhost')}:{p.get('port', '5432')}/{dbname or p.get('dbname', '')}"


def _scrub(text: str, dsn: str) -> str:
    """`text` without the DSN's password (or the DSN itself), for messages built from driver errors."""
    secrets = [dsn, _conninfo(dsn).get("password", "")]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "**********")
    return text


@contextmanager
def _connect(dsn: str, *, dbname: str | None = None, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    kwargs: dict[str, Any] = {"dbname": dbname} if dbname else {}
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=10, **kwargs)
    except psycopg.Error as exc:
        raise BackupFailed(f"cannot connect to database {_where(dsn, dbname)}: "
                           f"{_scrub(str(exc).strip(), dsn)}") from None
    with conn:
        yield conn


def pg_tool(name: str) -> str:
    """The path of a PostgreSQL client program: $SUNDAY_PG_BIN/name, else PostgreSQL 15's, else PATH.

    Debian's /usr/bin/pg_dump is a wrapper that picks a version by cluster; the pinned directory is
    what the server of the environment runs, so the dump format always matches.
    """
    for directory in (os.environ.get("SUNDAY_PG_BIN"), "/usr/lib/postgresql/15/bin"):
        if directory and os.access(Path(directory) / name, os.X_OK):
            return str(Path(directory) / name)
    return shutil.which(name) or name


# -------------------------------------------------------------------------------------- dump, restore


def table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows of every user table seen by `conn`'s transaction: `table` for public, else `schema.table`."""
    counts: dict[str, int] = {}
    tables = conn.execute(_COUNT_TABLES).fetchall()
    for schema, table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table))).fetchone()
        counts[table if schema == "public" else f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def dump_database(dsn: str, out: Path, *, timeout: float = 3600) -> tuple[dict[str, int], str, int]:
    """Dump a database (custom format) and count its rows, both from one snapshot.

    A REPEATABLE READ transaction exports its snapshot and counts the rows of every user table;
    pg_dump runs with `--snapshot` while that transaction is held open, so the counts describe
    the dump exactly, whatever is written meanwhile. The password reaches pg_dump through
    PGPASSWORD, never argv.

    Args:
        dsn: the database to dump.
        out: the dump file to write.
        timeout: seconds pg_dump may take.

    Returns:
        (table counts, sha256 hex of the dump, size of the dump in bytes).

    Raises:
        BackupFailed: no connection, or pg_dump failed (its CommandFailed is the cause).
    """
    env = libpq_env(dsn)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _connect(dsn) as conn:
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            snapshot = str(row[0]) if row else ""
            counts = table_counts(conn)
            argv = [pg_tool("pg_dump"), "--format=custom", f"--snapshot={snapshot}", "--no-password",
                    f"--file={out}"]
            try:
                run(argv, env=env, timeout=timeout)
            except CommandFailed as exc:
                raise BackupFailed(f"pg_dump of {_where(dsn)} failed ({_status(exc)}): "
                                   f"{_scrub(exc.stderr_tail, dsn)}") from exc
        except psycopg.Error as exc:
            raise BackupFailed(f"snapshot of {_where(dsn)} failed: {_scrub(str(exc).strip(), dsn)}") from None
        finally:
            if not conn.closed:
                conn.rollback()
    sha256, size = file_digest(out)
    return counts, sha256, size


def _status(exc: CommandFailed) -> str:
    return "timed out" if exc.returncode is None else f"exit {exc.returncode}"


def compare_counts(restored: Mapping[str, int], expected: Mapping[str, int]) -> list[str]:
    """What differs between the counts of the restored copy and those of the dump ([] when alike)."""
    problems = []
    for table in sorted(set(expected) | set(restored)):
        if table not in restored:
            problems.append(f"{table} is missing from the restored copy ({expected[table]} rows in the dump)")
        elif table not in expected:
            problems.append(f"{table} is in the restored copy ({restored[table]} rows) but not in the dump")
        elif restored[table] != expected[table]:
            problems.append(f"{table} has {restored[table]} rows in the restored copy, {expected[table]} in the dump")
    return problems


def _restore_counts(dump: Path, admin_dsn: str, dbname: str, timeout: float, what: str, *,
                    keep: bool) -> dict[str, int]:
    """Create `dbname` (from template0), pg_restore `dump` into it and count its rows; the database is dropped
    afterwards unless `keep`, and whenever something failed.

    Raises:
        BackupFailed: the database could not be created, pg_restore failed or the rows could not be counted;
            `what` begins the message.
    """
    with _connect(admin_dsn) as admin:
        try:
            admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(dbname)))
        except psycopg.Error as exc:
            label = f"database {dbname}" if keep else f"a scratch database ({dbname})"
            raise BackupFailed(f"{what} failed: cannot create {label} on {_where(admin_dsn)}: "
                               f"{_scrub(str(exc).strip(), admin_dsn)}") from None
        kept = False
        try:
            argv = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--no-password",
                    f"--dbname={dbname}", str(dump)]
            try:
                run(argv, env=libpq_env(admin_dsn, dbname=dbname), timeout=timeout)
            except CommandFailed as exc:
                raise BackupFailed(f"{what} failed: pg_restore into {dbname} ({_status(exc)}): "
                                   f"{_scrub(exc.stderr_tail, admin_dsn)}") from exc
            with _connect(admin_dsn, dbname=dbname) as copy:
                try:
                    counts = table_counts(copy)
                except psycopg.Error as exc:
                    raise BackupFailed(f"{what} failed: counting rows in {dbname}: "
                                       f"{_scrub(str(exc).strip(), admin_dsn)}") from None
            kept = keep
            return counts
        finally:
            if not kept:
                _drop(admin, dbname)


def _drop(admin: psycopg.Connection[Any], dbname: str) -> None:
    """DROP DATABASE IF EXISTS `dbname` WITH (FORCE) on `admin`'s server (its sessions are ended)."""
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def drop_database(admin_dsn: str, dbname: str) -> None:
    """Drop `dbname` (if it exists, its sessions ended) on the server of `admin_dsn`, a role that owns it.

    Raises:
        BackupFailed: no connection, or the server refused.
    """
    with _connect(admin_dsn) as admin:
        try:
            _drop(admin, dbname)
        except psycopg.Error as exc:
            raise BackupFailed(f"cannot drop database {dbname} on {_where(admin_dsn)}: "
                               f"{_scrub(str(exc).strip(), admin_dsn)}") from None


def verify_restore(dump: Path, admin_dsn: str, expected: Mapping[str, int], *, timeout: float = 3600) -> None:
    """Restore `dump` into a scratch database and check that every table has the expected rows.

    The scratch database (`sunday_verify_<random>`, from template0) is dropped afterwards, whether
    the check passed or not.

    Args:
        dump: a custom-format dump (pg_dump -Fc).
        admin_dsn: a role allowed to CREATE DATABASE on the server that does the check.
        expected: the table counts taken with the dump.
        timeout: seconds pg_restore may take.

    Raises:
        BackupFailed: pg_restore failed, or the counts differ (each differing table is named).
    """
    scratch = f"sunday_verify_{uuid.uuid4().hex[:12]}"
    restored = _restore_counts(dump, admin_dsn, scratch, timeout, "restore check", keep=False)
    problems = compare_counts(restored, expected)
    if problems:
        raise BackupFailed("restore check failed: " + "; ".join(problems))


def restore_into(dump: Path, admin_dsn: str, dbname: str, expected: Mapping[str, int], *,
                 timeout: float = 3600) -> dict[str, int]:
    """Restore `dump` into the new database `dbname`, kept only when every table has the backup's rows.

    Args:
        dump: a custom-format dump (pg_dump -Fc).
        admin_dsn: the role that will own the new database (allowed to CREATE DATABASE).
        dbname: the database to create; it must not exist.
        expected: the table counts taken with the dump (its manifest).
        timeout: seconds pg_restore may take.

    Returns:
        The restored database's table counts (the backup's).

    Raises:
        BackupFailed: it exists already, pg_restore failed or the counts differ; the new database is dropped.
    """
    restored = _restore_counts(dump, admin_dsn, dbname, timeout, "restore", keep=True)
    problems = compare_counts(restored, expected)
    if problems:
        drop_database(admin_dsn, dbname)
        raise BackupFailed(f"restore into {dbname} failed (dropped): " + "; ".join(problems))
    return restored


# ------------------------------------------------------------------------------------------------ S3


_DATA_LOADER: list[Any] = []


def _botocore_session() -> Any:
    """A new botocore session (credentials and settings read afresh: boto3's default chain) sharing one loader of
    the service models, which otherwise each new session reads from disk again (~50 ms; the restore's S3 work is
    ~100 ms)."""
    import botocore.session

    created = botocore.session.Session()
    if not _DATA_LOADER:
        _DATA_LOADER.append(created.get_component("data_loader"))
    created.register_component("data_loader", _DATA_LOADER[0])
    return created


def s3_client(endpoint_url: str | None, region: str, session: Any = None) -> S3Client:
    """boto3's S3 client: `endpoint_url` for an S3-compatible endpoint (moto, MinIO), None for AWS.

    Retries are left to the caller (one attempt here), so a dead endpoint fails within seconds.

    Args:
        endpoint_url: the endpoint, or None for AWS.
        region: the bucket's region.
        session: a boto3 Session (e.g. from a prefect-aws AwsCredentials block); default boto3's chain.
    """
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=120, retries={"max_attempts": 1, "mode": "standard"})
    factory = session if session is not None else boto3.session.Session(botocore_session=_botocore_session())
    client: S3Client = factory.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    return client


def backup_key(prefix: str, env: str, sha256: str, when: datetime) -> str:
    """`{prefix}/{env}/{UTC timestamp}-{sha256[:12]}.dump`; keys sort by time."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{prefix.strip('/')}/{env}/{stamp}-{sha256[:12]}.dump"


@contextmanager
def _s3_errors(client: S3Client, action: str) -> Iterator[None]:
    """Turn botocore's errors into BackupFailed; S3Unreachable when the endpoint did not answer."""
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

    endpoint = client.meta.endpoint_url
    try:
        yield
    except (ConnectionError, HTTPClientError) as exc:
        raise S3Unreachable(f"S3 endpoint {endpoint} unreachable: {exc}") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"S3 {action} failed at {endpoint}: {err.get('Code', '?')}: {err.get('Message', '')}"
        raise (S3Unreachable(message) if status >= 500 else BackupFailed(message)) from None
    except BotoCoreError as exc:  # no credentials, bad parameters: not worth a retry
        raise BackupFailed(f"S3 {action} failed at {endpoint}: {exc}") from None


def upload(client: S3Client, bucket: str, key: str, path: Path, sha256: str, *,
           metadata: Mapping[str, str] | None = None, single_put_max: int = _SINGLE_PUT_MAX) -> None:
    """Upload a dump and check what S3 stored: its size, its `sha256` metadata and S3's own checksum.

    Up to `single_put_max` bytes go up in one PUT carrying ChecksumSHA256, which S3 checks against
    the bytes it received; larger files go up in parts (each part checksummed by S3).

    Args:
        client: boto3's S3 client.
        bucket: the bucket.
        key: the object key.
        path: the file.
        sha256: its sha256 (hex), stored as the object's `sha256` metadata.
        metadata: more metadata to store.
        single_put_max: the largest file sent in one PUT.

    Raises:
        S3Unreachable: the endpoint did not answer (worth a retry).
        BackupFailed: S3 refused the object, or what it stored is not the file.
    """
    size = path.stat().st_size
    meta = {**(metadata or {}), "sha256": sha256}
    checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
    with _s3_errors(client, f"upload of s3://{bucket}/{key}"):
        if size <= single_put_max:
            with path.open("rb") as body:
                client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta, ChecksumSHA256=checksum)
        else:
            from boto3.s3.transfer import TransferConfig

            client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": meta, "ChecksumAlgorithm": "SHA256"},
                               Config=TransferConfig(multipart_threshold=single_put_max))
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    stored_sha = head.get("Metadata", {}).get("sha256")
    stored_checksum = head.get("ChecksumSHA256")
    if head.get("ContentLength") != size or stored_sha != sha256:
        raise BackupFailed(f"S3 object s3://{bucket}/{key} is not the dump: {head.get('ContentLength')} bytes, "
                           f"sha256 {stored_sha}; expected {size} bytes, sha256 {sha256}")
    if stored_checksum and "-" not in stored_checksum and stored_checksum != checksum:  # "-N": multipart
        raise BackupFailed(f"S3 object s3://{bucket}/{key} has checksum {stored_checksum}, expected {checksum}")


def _missing_is_none(call: Callable[[], T]) -> T | None:
    """`call()`, or None when S3 answers that the object does not exist (other errors propagate)."""
    from botocore.exceptions import ClientError

    try:
        return call()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def manifest_key(key: str) -> str:
    """The key of a backup's manifest (its table counts): `…-SHA.dump` → `…-SHA.json`, beside it."""
    return key.removesuffix(".dump") + ".json"


def check_backup_key(key: str, prefix: str) -> str:
    """`key` when it names a backup of the environment whose backups are under `prefix` (`{prefix}/{env}`).

    Raises:
        InputError: another environment's or project's key, or not a backup's name (`backup_key`); the message
            says which keys are.
    """
    base = prefix.strip("/") + "/"
    if not isinstance(key, str) or not key.startswith(base) or not _KEY.fullmatch(key[len(base):]):
        shown = key if isinstance(key, str) and len(key) <= 200 and key.isprintable() else "(not shown)"
        raise InputError(f"--from: {shown!r} is not a backup of this environment: its backups are "
                         f"{base}YYYYMMDDTHHMMSS.ffffffZ-SHA12.dump (sunday-release backups lists them)")
    return key


def write_manifest(client: S3Client, bucket: str, key: str, sha256: str, counts: Mapping[str, int],
                   created: str) -> None:
    """Store the backup's table counts beside it (`manifest_key`): what a restore checks the new database against.

    Raises:
        S3Unreachable: the endpoint did not answer.
        BackupFailed: S3 refused it.
    """
    body = json.dumps({"backup": key, "sha256": sha256, "created": created, "table_counts": dict(counts)},
                      sort_keys=True).encode()
    with _s3_errors(client, f"upload of s3://{bucket}/{manifest_key(key)}"):
        client.put_object(Bucket=bucket, Key=manifest_key(key), Body=body, ContentType="application/json")


def read_manifest(client: S3Client, bucket: str, key: str) -> dict[str, Any]:
    """The manifest of backup `key`: {backup, sha256, created, table_counts}.

    Raises:
        BackupFailed: there is none (a backup taken before manifests existed cannot be checked, so it is not
            restored), or it does not describe `key`.
    """
    where = f"s3://{bucket}/{manifest_key(key)}"
    with _s3_errors(client, f"download of {where}"):
        body = _missing_is_none(lambda: client.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read())
    if body is None:
        raise BackupFailed(f"{key} has no manifest ({where}): its table counts are unknown, so a restore could not "
                           "be checked; take a new backup (sunday-release backup)")
    try:
        manifest = json.loads(body)
        counts = {str(t): int(n) for t, n in manifest["table_counts"].items()}
        if manifest["backup"] != key:
            raise ValueError(f"it describes {manifest['backup']}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupFailed(f"the manifest {where} is not valid: {exc}") from None
    return {**manifest, "table_counts": counts}


def download(client: S3Client, bucket: str, key: str, out: Path) -> tuple[str, int]:
    """Fetch backup `key` to `out` and check it is what was stored: its sha256 is the object's `sha256`
    metadata and begins as its name says.

    Returns:
        (sha256 hex, size in bytes).

    Raises:
        S3Unreachable: the endpoint did not answer.
        BackupFailed: no such backup, or the bytes are not the backup's (the file is removed).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with _s3_errors(client, f"download of s3://{bucket}/{key}"):
        found = _missing_is_none(lambda: client.get_object(Bucket=bucket, Key=key))
        if found is None:
            raise BackupFailed(f"there is no backup {key} in s3://{bucket} (sunday-release backups lists them)")
        with out.open("wb") as f:  # one pass: written and hashed as it arrives
            for block in found["Body"].iter_chunks(1 << 20):
                digest.update(block)
                f.write(block)
                size += len(block)
    sha256 = digest.hexdigest()
    stored = found.get("Metadata", {}).get("sha256", "")
    if sha256 != stored or not key.removesuffix(".dump").endswith(sha256[:12]):
        out.unlink(missing_ok=True)
        raise BackupFailed(f"s3://{bucket}/{key} is not the backup that was stored: its bytes have sha256 {sha256}, "
                           f"the object says {stored or 'nothing'}")
    return sha256, size


def list_backups(client: S3Client, bucket: str, prefix: str) -> list[str]:
    """The keys of the backups directly under `prefix` (`{prefix}/{env}`), newest first.

    Only keys named like `backup_key` count: other objects under the prefix are never listed.
    """
    base = prefix.strip("/") + "/"
    keys: list[str] = []
    with _s3_errors(client, f"listing of s3://{bucket}/{base}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            keys += [obj["Key"] for obj in page.get("Contents", []) if _KEY.match(obj["Key"][len(base):])]
    return sorted(keys, key=lambda k: k[len(base):], reverse=True)


def describe_backups(client: S3Client, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The backups under `prefix` (`{prefix}/{env}`), newest first: key, size in bytes and when S3 stored it."""
    base = prefix.strip("/") + "/"
    found: list[dict[str, Any]] = []
    with _s3_errors(client, f"listing of s3://{bucket}/{base}"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            found += [{"key": obj["Key"], "size": int(obj.get("Size", 0)), "stored": obj["LastModified"].isoformat()
                       if hasattr(obj.get("LastModified"), "isoformat") else str(obj.get("LastModified", ""))}
                      for obj in page.get("Contents", []) if _KEY.match(obj["Key"][len(base):])]
    return sorted(found, key=lambda b: b["key"][len(base):], reverse=True)


def plan_prune(keys: list[str], keep: int, protect: Collection[str] = ()) -> list[str]:
    """Which of `keys` (newest first) retention deletes: all but the newest `keep`, never a protected key."""
    if keep < 1:
        raise InputError(f"backup retention must keep at least 1 backup, not {keep}")
    return [k for k in keys[keep:] if k not in protect]


def prune(client: S3Client, bucket: str, prefix: str, keep: int, *, protect: Collection[str] = ()) -> list[str]:
    """Retention: keep the newest `keep` backups under `prefix`, delete the older ones.

    Args:
        client: boto3's S3 client.
        bucket: the bucket.
        prefix: `{prefix}/{env}`: the backups of one environment.
        keep: how many to keep (at least 1).
        protect: keys never deleted (the backup just made, whatever the clocks say).

    Returns:
        The deleted keys, newest first.

    Raises:
        InputError: keep < 1.
        BackupFailed: S3 refused a deletion.
    """
    doomed = plan_prune(list_backups(client, bucket, prefix), keep, protect)
    for start in range(0, len(doomed), 500):
        batch = doomed[start:start + 500]
        with _s3_errors(client, f"deletion under s3://{bucket}/{prefix}"):
            answer = client.delete_objects(  # each backup with its manifest
                Bucket=bucket, Delete={"Objects": [{"Key": k} for key in batch for k in (key, manifest_key(key))],
                                       "Quiet": True})
        if answer.get("Errors"):
            failed = ", ".join(f"{e.get('Key')} ({e.get('Code')})" for e in answer["Errors"])
            raise BackupFailed(f"retention could not delete {failed}")
    return doomed


def utc_now() -> datetime:
    """Now, in UTC (one place to read the clock)."""
    return datetime.now(UTC)
