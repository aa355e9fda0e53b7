"""The backup stage: a verified database backup (pg_dump → restore check → S3) before production changes."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import SecretStr

from sunday_release import validate
from sunday_release.backup import (
    BackupFailed,
    BackupRecord,
    S3Client,
    S3Unreachable,
    backup_key,
    describe_backups,
    dump_database,
    prune,
    s3_client,
    upload,
    utc_now,
    verify_restore,
)
from sunday_release.errors import PipelineError
from sunday_release.targets.protocol import DeployTarget
from tasks._common import RETRY_DELAYS, progress

__all__ = ["backup_database", "backup_for_environment", "backups_of_environment", "upload_with_retries"]

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


def upload_with_retries(client: S3Client, bucket: str, key: str, path: Path, sha256: str,
                        metadata: dict[str, str]) -> int:
    """Upload, retrying only an unreachable endpoint (RETRY_DELAYS, ±50 % jitter); returns the attempts used.

    The retry lives here rather than on a task decorator so that a flaky S3 re-sends the file only:
    the dump and the restore check before it are not repeated.

    Raises:
        BackupFailed: S3 refused the object (not retried), or the endpoint stayed unreachable.
    """
    delays = list(RETRY_DELAYS)
    for attempt in range(1, len(delays) + 2):
        try:
            upload(client, bucket, key, path, sha256, metadata=metadata)
            return attempt
        except S3Unreachable as exc:
            if attempt > len(delays):
                raise BackupFailed(f"{exc} (gave up after {attempt} attempts)") from None
            delay = delays[attempt - 1] * (1 + random.uniform(-RETRY_JITTER, RETRY_JITTER))
            progress(f"S3 unreachable (attempt {attempt}), retrying in {delay:.1f}s", attempt=attempt)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


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

    Order: dump (counts from the same snapshot) → restore check in a scratch database → upload
    (retried while S3 is unreachable) → retention. The restore check comes before the upload so
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
    try:
        started = time.monotonic()
        counts, sha256, size = dump_database(database, dump)
        progress(f"dumped {env}: {size} bytes, {sum(counts.values())} rows in {len(counts)} tables "
                 f"({time.monotonic() - started:.1f}s)", size=size)
        started = time.monotonic()
        verify_restore(dump, admin, counts)
        progress(f"restore check of {env} passed ({time.monotonic() - started:.1f}s)")
        client = _s3(endpoint_url, region)
        key = backup_key(prefix, env, sha256, created)
        upload_with_retries(client, bucket, key, dump, sha256, {"env": env, "created": created.isoformat()})
        progress(f"uploaded s3://{bucket}/{key} (sha256 {sha256[:12]})", key=key)
        deleted = prune(client, bucket, f"{prefix.strip('/')}/{env}", keep, protect={key})
        if deleted:
            progress(f"retention kept {keep} backups of {env}, deleted {len(deleted)}: {', '.join(deleted)}")
    except BackupFailed as exc:
        raise BackupFailed(f"backup of {env} failed: {exc}") from exc.__cause__
    except OSError as exc:  # the work directory: full, missing, not writable
        raise BackupFailed(f"backup of {env} failed: {exc}") from exc
    finally:
        dump.unlink(missing_ok=True)
    return BackupRecord(env=env, key=key, bucket=bucket, sha256=sha256, size=size, created=created.isoformat(),
                        table_counts=counts, verified=True)


def backup_for_environment(env: str, target: DeployTarget) -> BackupRecord:
    """The verified backup an environment requires before a deploy, configured from the environment.

    The database is the target's (`DeployTarget.database()`): the docker target's own PostgreSQL, or
    for the kubernetes target the URL in the Prefect Secret block `environments.ENV.database_url_secret`.
    SUNDAY_BACKUP_BUCKET (required), SUNDAY_BACKUP_PREFIX (default `db`; keys are
    `PREFIX/PROJECT/ENV/…`, so two projects' environments never prune each other's backups), SUNDAY_S3_ENDPOINT (a
    local S3 endpoint; unset for AWS), AWS_REGION (default us-east-1). The environment's
    `backup_keep` sets the retention. A missing bucket or database stops the deploy before anything starts.
    """
    bucket = os.environ.get("SUNDAY_BACKUP_BUCKET")
    if not bucket:
        raise BackupFailed(f"{env} requires a verified backup but SUNDAY_BACKUP_BUCKET is not set: "
                           "nothing was deployed")
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
    workdir = target.root / "backups"
    workdir.mkdir(parents=True, exist_ok=True)
    progress(f"backing up {database.name}")
    prefix = _project_prefix(target.config.project)
    return backup_database(env, dsn, bucket, prefix,
                           target.env.backup_keep, os.environ.get("SUNDAY_S3_ENDPOINT") or None, str(workdir),
                           region=os.environ.get("AWS_REGION", "us-east-1"))


def _project_prefix(project: str) -> str:
    """`SUNDAY_BACKUP_PREFIX/PROJECT` (default prefix `db`): a project's backups, never another's."""
    return f"{os.environ.get('SUNDAY_BACKUP_PREFIX', 'db').strip('/')}/{project}"


def backups_of_environment(project: str, env: str) -> list[dict[str, Any]]:
    """The verified backups of `project/env` in SUNDAY_BACKUP_BUCKET, newest first (key, size, stored)."""
    bucket = os.environ.get("SUNDAY_BACKUP_BUCKET")
    if not bucket:
        raise PipelineError("SUNDAY_BACKUP_BUCKET is not set: it names the bucket the backups are in")
    client = _s3(os.environ.get("SUNDAY_S3_ENDPOINT") or None, os.environ.get("AWS_REGION", "us-east-1"))
    return describe_backups(client, bucket, f"{_project_prefix(project)}/{validate.name(env, '--env')}")
