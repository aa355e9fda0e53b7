"""The backup stage: a verified database backup (pg_dump → restore check → S3) before production changes."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prefect import task
from pydantic import SecretStr

from sunday_release import validate
from sunday_release.backup import (
    BackupFailed,
    BackupRecord,
    S3Client,
    S3Unreachable,
    backup_key,
    check_backup_key,
    describe_backups,
    download,
    dump_database,
    prune,
    read_manifest,
    restore_into,
    s3_client,
    upload,
    utc_now,
    verify_restore,
    write_manifest,
)
from sunday_release.errors import PipelineError
from sunday_release.targets.protocol import DeployTarget, RestorableDatabase
from tasks._common import RETRY_DELAYS, progress

__all__ = ["backup_database", "backup_for_environment", "backup_prefix", "backups_of_environment",
           "restore_database", "restore_for_environment", "with_retries"]

T = TypeVar("T")

RETRY_JITTER = 0.5


def _secret(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _s3(endpoint_url: str | None, region: str) -> S3Client:
    """S3 client. Credentials: the prefect-aws AwsCredentials block named by SUNDAY_AWS_CREDENTIALS_BLOCK,
    else boto3's default chain (env, profile, instance role)."""
    session: Any = None
    block = os.environ.get("SUNDAY_AWS_CREDENTIALS_BLOCK")
    if block:
        from prefect_aws import AwsCredentials

        session = AwsCredentials.load(block).get_boto3_session()
    return s3_client(endpoint_url, region, session=session)


def with_retries(call: Callable[[], T]) -> T:
    """`call()` (an exchange with S3), retried only while the endpoint is unreachable (RETRY_DELAYS, ±50 % jitter).

    The retry lives here rather than on a task decorator so that a flaky S3 repeats the exchange only:
    the dump and the restore check before it are not repeated.

    Raises:
        BackupFailed: S3 refused (not retried), or the endpoint stayed unreachable.
    """
    delays = list(RETRY_DELAYS)
    for attempt in range(1, len(delays) + 2):
        try:
            return call()
        except S3Unreachable as exc:
            if attempt > len(delays):
                raise BackupFailed(f"{exc} (gave up after {attempt} attempts)") from None
            delay = delays[attempt - 1] * (1 + random.uniform(-RETRY_JITTER, RETRY_JITTER))
            progress(f"S3 unreachable (attempt {attempt}), retrying in {delay:.1f}s", attempt=attempt)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _step(what: str, dump: Path) -> Iterator[None]:
    """A backup's or a restore's work on the local `dump`: a failure is BackupFailed naming `what`, and the file
    (the data of the environment) is removed whatever happens."""
    try:
        yield
    except BackupFailed as exc:
        raise BackupFailed(f"{what} failed: {exc}") from exc.__cause__
    except OSError as exc:  # the work directory: full, missing, not writable
        raise BackupFailed(f"{what} failed: {exc}") from exc
    finally:
        dump.unlink(missing_ok=True)


@task(name="backup-database", task_run_name="backup[{env}]", persist_result=True)
def backup_database(
    env: str,
    dsn: SecretStr | str,
    bucket: str,
    prefix: str,
    keep: int,
    endpoint_url: str | None,
    workdir: str,
    admin_dsn: SecretStr | str | None = None,
    region: str = "us-east-1",
) -> BackupRecord:
    """Take a verified backup of an environment's database and keep the newest `keep` in S3.

    Order: dump (counts from the same snapshot) → restore check in a scratch database → upload of
    the manifest (the table counts, `KEY.json`) and of the dump (each retried while S3 is unreachable)
    → retention. The restore check comes before the upload so
    that S3 only ever holds verified backups and retention never counts an unverified one;
    nothing is deleted unless the new backup is verified and stored. The local dump is removed
    whatever happens (it holds the data of production).

    Args:
        env: the environment (part of the key: `{prefix}/{env}/…`).
        dsn: the database (a SecretStr keeps the password out of the run's recorded inputs).
        bucket: the S3 bucket.
        prefix: key prefix of the backups.
        keep: backups of this environment to keep (at least 1).
        endpoint_url: an S3-compatible endpoint, or None for AWS.
        workdir: where the dump is written.
        admin_dsn: a role allowed to CREATE DATABASE for the restore check (default: `dsn`).
        region: the bucket's region.

    Returns:
        The stored backup, verified.

    Raises:
        BackupFailed: any step failed; the message names it.
    """
    env = validate.name(env, "--env")  # part of a file name and of the S3 key
    if keep < 1:
        raise BackupFailed(f"backup retention must keep at least 1 backup, not {keep}")
    database = _secret(dsn)
    admin = _secret(admin_dsn) if admin_dsn is not None else database
    created = utc_now()
    dump = Path(workdir) / f"{env}-{created.strftime('%Y%m%dT%H%M%S%fZ')}.dump"
    with _step(f"backup of {env}", dump):
        started = time.monotonic()
        counts, sha256, size = dump_database(database, dump)
        progress(f"dumped {env}: {size} bytes, {sum(counts.values())} rows in {len(counts)} tables "
                 f"({time.monotonic() - started:.1f}s)", size=size)
        started = time.monotonic()
        verify_restore(dump, admin, counts)
        progress(f"restore check of {env} passed ({time.monotonic() - started:.1f}s)")
        client = _s3(endpoint_url, region)
        key = backup_key(prefix, env, sha256, created)
        # the manifest first: a listed backup always has its table counts, which a restore checks against
        with_retries(lambda: write_manifest(client, bucket, key, sha256, counts, created.isoformat()))
        with_retries(lambda: upload(client, bucket, key, dump, sha256,
                                    metadata={"env": env, "created": created.isoformat()}))
        progress(f"uploaded s3://{bucket}/{key} (sha256 {sha256[:12]})", key=key)
        deleted = prune(client, bucket, f"{prefix.strip('/')}/{env}", keep, protect={key})
        if deleted:
            progress(f"retention kept {keep} backups of {env}, deleted {len(deleted)}: {', '.join(deleted)}")
    return BackupRecord(env=env, key=key, bucket=bucket, sha256=sha256, size=size, created=created.isoformat(),
                        table_counts=counts, verified=True)


def backup_for_environment(env: str, target: DeployTarget) -> BackupRecord:
    """The verified backup an environment requires before a deploy, configured from the environment.

    The database is the target's (`DeployTarget.database()`): the docker target's own PostgreSQL (the database its
    containers use), or for the kubernetes target the URL in the Prefect Secret block
    `environments.ENV.database_url_secret`. SUNDAY_BACKUP_BUCKET (required), SUNDAY_BACKUP_PREFIX (default `db`; keys
    are `PREFIX/PROJECT/ENV/…`, so two projects' environments never prune each other's backups), SUNDAY_S3_ENDPOINT (a
    local S3 endpoint; unset for AWS), AWS_REGION (default us-east-1). The environment's
    `backup_keep` sets the retention. A missing bucket or database stops the deploy before anything starts.
    """
    bucket = _bucket(f"{env} requires a verified backup but SUNDAY_BACKUP_BUCKET is not set: nothing was deployed")
    database = target.database()
    if database is None:
        raise BackupFailed(f"{env} requires a verified backup but its {target.env.target} target has no database "
                           f"to back up: set environments.{env}.database_url_secret to the Prefect Secret block "
                           "holding its URL; nothing was deployed")
    target.ensure_database()
    try:
        dsn = database.dsn()
    except PipelineError as exc:
        raise BackupFailed(f"backup of {env} failed: {database.name}: {exc}") from None
    progress(f"backing up {database.name}")
    return backup_database(env, dsn, bucket, _project_prefix(target.config.project), target.env.backup_keep,
                           _endpoint(), str(_workdir(target)), region=_region())


@task(name="restore-database", task_run_name="restore[{env}]", persist_result=True)
def restore_database(env: str, key: str, prefix: str, owner_dsn: SecretStr | str, database: str, bucket: str,
                     endpoint_url: str | None, workdir: str, region: str = "us-east-1") -> dict[str, Any]:
    """Restore backup `key` of `env` into the new database `database`, checked against the backup's manifest.

    Order: the manifest (the table counts taken with the dump) → download, its sha256 checked against the stored
    object's → pg_restore into `database` (created by the owner role, from template0) → the table counts compared
    with the manifest's. On any failure the new database is dropped; the local copy of the dump is always removed.
    Nothing here touches the database the environment uses.

    Args:
        env: the environment; `key` must be one of its backups (`{prefix}/{env}/…`).
        key: the backup's S3 key, as `sunday-release backups` lists it.
        prefix: the project's backup prefix (`SUNDAY_BACKUP_PREFIX/PROJECT`).
        owner_dsn: the role that creates and owns the new database (a SecretStr keeps the password out of the run).
        database: the new database's name; it must not exist.
        bucket: the S3 bucket.
        endpoint_url: an S3-compatible endpoint, or None for AWS.
        workdir: where the dump is downloaded.
        region: the bucket's region.

    Returns:
        {key, database, sha256, size, created, table_counts}.

    Raises:
        InputError: `key` is not a backup of `env`, or `database` not a valid name.
        BackupFailed: any step failed; the message names it.
    """
    env = validate.name(env, "--env")
    key = check_backup_key(key, f"{prefix.strip('/')}/{env}")
    database = validate.database_name(database, "database")
    client = _s3(endpoint_url, region)
    dump = Path(workdir) / f"restore-{database}.dump"
    with _step(f"restore of {key}", dump):
        manifest = with_retries(lambda: read_manifest(client, bucket, key))
        started = time.monotonic()
        sha256, size = with_retries(lambda: download(client, bucket, key, dump))
        progress(f"downloaded s3://{bucket}/{key}: {size} bytes, sha256 {sha256[:12]} "
                 f"({time.monotonic() - started:.1f}s)", size=size)
        if sha256 != manifest.get("sha256"):
            raise BackupFailed(f"the manifest of {key} describes another dump (sha256 {manifest.get('sha256')})")
        started = time.monotonic()
        counts = restore_into(dump, _secret(owner_dsn), database, manifest["table_counts"])
        progress(f"restored into {database}: {sum(counts.values())} rows in {len(counts)} tables, as the backup's "
                 f"manifest says ({time.monotonic() - started:.1f}s)")
    return {"key": key, "database": database, "sha256": sha256, "size": size, "created": manifest.get("created", ""),
            "table_counts": counts}


def restore_for_environment(env: str, key: str, target: DeployTarget, owner: RestorableDatabase,
                            database: str) -> dict[str, Any]:
    """`restore_database` for an environment, configured as its backups are (`backup_for_environment`)."""
    bucket = _bucket("SUNDAY_BACKUP_BUCKET is not set: it names the bucket the backups are in; nothing was restored")
    target.ensure_database()
    return restore_database(env, key, _project_prefix(target.config.project), owner.owner_dsn(), database, bucket,
                            _endpoint(), str(_workdir(target)), region=_region())


def _bucket(missing: str) -> str:
    bucket = os.environ.get("SUNDAY_BACKUP_BUCKET")
    if not bucket:
        raise BackupFailed(missing)
    return bucket


def _endpoint() -> str | None:
    return os.environ.get("SUNDAY_S3_ENDPOINT") or None


def _region() -> str:
    return os.environ.get("AWS_REGION", "us-east-1")


def _workdir(target: DeployTarget) -> Path:
    """Where dumps of the environment wait for S3 (or for pg_restore): ENV_ROOT/PROJECT/ENV/backups."""
    workdir = target.root / "backups"
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _project_prefix(project: str) -> str:
    """`SUNDAY_BACKUP_PREFIX/PROJECT` (default prefix `db`): a project's backups, never another's."""
    return f"{os.environ.get('SUNDAY_BACKUP_PREFIX', 'db').strip('/')}/{project}"


def backup_prefix(project: str, env: str) -> str:
    """Where the backups of `project/env` are: `SUNDAY_BACKUP_PREFIX/PROJECT/ENV`."""
    return f"{_project_prefix(project)}/{validate.name(env, '--env')}"


def backups_of_environment(project: str, env: str) -> list[dict[str, Any]]:
    """The verified backups of `project/env` in SUNDAY_BACKUP_BUCKET, newest first (key, size, stored)."""
    bucket = os.environ.get("SUNDAY_BACKUP_BUCKET")
    if not bucket:
        raise PipelineError("SUNDAY_BACKUP_BUCKET is not set: it names the bucket the backups are in")
    return describe_backups(_s3(_endpoint(), _region()), bucket, backup_prefix(project, env))
