"""The workers' shared result storage (`make server`): buckets and blocks on a real S3 endpoint (moto_server)."""

from __future__ import annotations

import boto3
from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.settings import (
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
    PREFECT_RESULTS_PERSIST_BY_DEFAULT,
    temporary_settings,
)
from prefect.states import State
from prefect_aws import S3Bucket

from deployments.result_storage import STORAGE_BLOCK, register_result_storage
from tests.pg import S3, s3  # noqa: F401

RESULTS = "sunday-results"


@task(cache_policy=INPUTS + TASK_SOURCE)  # no flow-run id: a second run finds the first one's result
def double(x: int) -> int:
    return 2 * x


@flow
def doubles(x: int) -> State[int]:
    return double(x, return_state=True)


def test_result_storage_block_round_trips_a_task_result_through_s3(prefect_api: str, s3: S3) -> None:  # noqa: F811
    slug = register_result_storage(s3.endpoint_url, RESULTS, also_create=[s3.bucket, "sunday-more"])
    assert slug == f"s3-bucket/{STORAGE_BLOCK}"
    assert register_result_storage(s3.endpoint_url, RESULTS) == slug  # again: buckets exist, blocks overwritten
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    assert {RESULTS, s3.bucket, "sunday-more"} <= {b["Name"] for b in client.list_buckets()["Buckets"]}
    block = S3Bucket.load(STORAGE_BLOCK)
    assert block.bucket_name == RESULTS
    assert block.credentials.aws_client_parameters.endpoint_url == s3.endpoint_url  # type: ignore[union-attr]

    with temporary_settings(updates={PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: slug,
                                     PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}):
        first = doubles(21)
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=RESULTS).get("Contents", [])]
        assert keys, "no result was written to the results bucket"
        second = doubles(21)
    assert first.is_completed() and not first.name == "Cached"
    assert second.name == "Cached"
    assert second.result() == 42
