"""Amazon ECR as the registry: credentials from an ECR client (boto3 / prefect-aws), immutable repositories.

The ECR client is passed in (an `ecr` client of boto3, e.g. from prefect-aws `AwsCredentials
.get_boto3_session().client("ecr")`), so this module stays free of AWS set-up and is tested
against a fake of AWS.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Protocol

from sunday_release.errors import PipelineError

__all__ = ["EcrClient", "ecr_credentials", "ensure_repository", "is_ecr"]

_ECR = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


class EcrClient(Protocol):
    """The part of boto3's ECR client the pipeline uses."""

    def get_authorization_token(self, **kwargs: Any) -> dict[str, Any]: ...

    def describe_repositories(self, **kwargs: Any) -> dict[str, Any]: ...

    def create_repository(self, **kwargs: Any) -> dict[str, Any]: ...


def is_ecr(registry: str) -> bool:
    """True for `ACCOUNT.dkr.ecr.REGION.amazonaws.com`."""
    return bool(_ECR.match(registry))


def region_of(registry: str) -> str:
    match = _ECR.match(registry)
    if not match:
        raise ValueError(f"{registry!r} is not an ECR registry")
    return match["region"]


def ecr_credentials(registry: str, client: EcrClient) -> tuple[str, str]:
    """The (user, password) pair for docker login and the registry API, from an ECR token."""
    match = _ECR.match(registry)
    if not match:
        raise ValueError(f"{registry!r} is not an ECR registry")
    data = client.get_authorization_token(registryIds=[match["account"]])["authorizationData"]
    if not data:
        raise PipelineError(f"ECR returned no authorization data for {registry}")
    user, _, password = base64.b64decode(data[0]["authorizationToken"]).decode().partition(":")
    return user, password


def ensure_repository(client: EcrClient, name: str) -> None:
    """Create the ECR repository `name` (tags immutable, scan on push) unless it exists."""
    try:
        client.describe_repositories(repositoryNames=[name])
        return
    except Exception as exc:  # botocore's RepositoryNotFoundException is generated at run time
        if type(exc).__name__ != "RepositoryNotFoundException":
            raise
    client.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE",
                             imageScanningConfiguration={"scanOnPush": True})
