"""Shared result storage for workers: S3 buckets and the prefect-aws blocks that point at them.

Every worker of the platform persists task results to one S3 bucket (the `s3-bucket/sunday-results`
block), so a Retry that lands on another worker still finds what the first attempt completed.
`make server` runs this against its local S3 endpoint (moto_server, a stand-in for AWS S3):

    python -m deployments.result_storage --endpoint http://127.0.0.1:9000 --bucket sunday-results \\
        --also-create sunday-backups

It creates the buckets that are missing, saves the `AwsCredentials` block `sunday-s3` (endpoint in
`aws_client_parameters`) and the `S3Bucket` block `sunday-results`, and prints the slug to put in
PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK. Without `--endpoint` the blocks point at AWS itself and the
credentials come from boto3's default chain (instance role, profile, environment).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket
from pydantic import SecretStr

__all__ = ["CREDENTIALS_BLOCK", "STORAGE_BLOCK", "ensure_buckets", "main", "register_result_storage"]

CREDENTIALS_BLOCK = "sunday-s3"
STORAGE_BLOCK = "sunday-results"


def _credentials(endpoint_url: str | None, region: str) -> AwsCredentials:
    """Credentials for the endpoint: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when set, else boto3's chain."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    return AwsCredentials(aws_access_key_id=key, aws_secret_access_key=SecretStr(secret) if secret else None,
                          region_name=region, aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url))


def ensure_buckets(credentials: AwsCredentials, names: Sequence[str]) -> list[str]:
    """Create the buckets of `names` that do not exist yet (HEAD answers 404); returns the ones created."""
    from botocore.exceptions import ClientError

    client = credentials.get_s3_client()
    region = credentials.region_name or "us-east-1"
    where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    created = []
    for name in names:
        try:
            client.head_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            client.create_bucket(Bucket=name, **where)
            created.append(name)
    return created


def register_result_storage(endpoint_url: str | None, bucket: str, *, region: str = "us-east-1",
                            also_create: Sequence[str] = (), name: str = STORAGE_BLOCK) -> str:
    """Create the buckets, save the credentials and S3Bucket blocks (overwriting), return the block slug.

    Args:
        endpoint_url: an S3-compatible endpoint (moto_server, MinIO), or None for AWS.
        bucket: the results bucket.
        region: the buckets' region.
        also_create: more buckets to create if missing (e.g. the backups bucket); no block for them.
        name: the S3Bucket block's name (its credentials block: `sunday-s3`, or NAME-credentials for another).

    Returns:
        `s3-bucket/NAME` (`s3-bucket/sunday-results`), the value of PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK.
    """
    credentials = _credentials(endpoint_url, region)
    ensure_buckets(credentials, [bucket, *also_create])
    credentials.save(CREDENTIALS_BLOCK if name == STORAGE_BLOCK else f"{name}-credentials", overwrite=True)
    S3Bucket(bucket_name=bucket, credentials=credentials).save(name, overwrite=True)
    return f"s3-bucket/{name}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.result_storage", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="S3-compatible endpoint URL (omit for AWS)")
    parser.add_argument("--bucket", default=STORAGE_BLOCK, help="the results bucket (default %(default)s)")
    parser.add_argument("--also-create", action="append", default=[], metavar="BUCKET",
                        help="another bucket to create if missing (repeatable)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    args = parser.parse_args(argv)
    print(register_result_storage(args.endpoint, args.bucket, region=args.region, also_create=args.also_create))


if __name__ == "__main__":
    main()
