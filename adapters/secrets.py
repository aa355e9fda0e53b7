"""Secrets for the flows: Prefect Secret blocks of the run's server (a kubernetes environment's database URL), and
the references of the services' `secrets:` (`prefect-secret://BLOCK`, `aws-sm://NAME[#key]`), read at deploy time.

AWS Secrets Manager is read through prefect-aws (`AwsSecret`) with boto3's default credentials: on a worker that is
its pod's role (IRSA) or the environment's (OIDC; docs/production.md), never a key in the config. The region is
AWS_REGION (or AWS_DEFAULT_REGION, else us-east-1); AWS_ENDPOINT_URL_SECRETS_MANAGER points boto3 elsewhere (the
tests' moto_server). Errors name the reference, never a value.
"""

from __future__ import annotations

import json
import os

from prefect.blocks.system import Secret
from pydantic import SecretStr

from sunday_release.errors import PipelineError

__all__ = ["read_secret_block", "resolve_secret_ref"]


def read_secret_block(name: str) -> SecretStr:
    """The value of the Prefect Secret block `name` (on the run's Prefect server), kept secret."""
    try:  # `_sync` (async_dispatch): the sync path even when called from async code
        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError:  # Prefect's answer to a missing block document
        raise PipelineError(f"no Secret block {name!r} on the Prefect server") from None
    if not isinstance(block, Secret):  # the typing says "or a coroutine"; `_sync` rules it out
        raise PipelineError(f"the Secret block {name!r} was not loaded synchronously")
    value = block.get()
    if not isinstance(value, str) or not value:
        raise PipelineError(f"the Secret block {name!r} must hold a non-empty string")
    return SecretStr(value)


def _aws_secret(name: str, ref: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError
    from prefect_aws import AwsCredentials
    from prefect_aws.secrets_manager import AwsSecret

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        value = AwsSecret(aws_credentials=AwsCredentials(region_name=region), secret_name=name).read_secret(
            _sync=True)  # type: ignore[call-arg]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        if code == "ResourceNotFoundException":
            raise PipelineError(f"{ref}: no such secret in AWS Secrets Manager ({region})") from None
        raise PipelineError(f"{ref}: AWS Secrets Manager refused to read it: {code}") from None
    except BotoCoreError as exc:  # no credentials, no endpoint
        raise PipelineError(f"{ref}: AWS Secrets Manager could not be asked: {type(exc).__name__}") from None
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise PipelineError(f"{ref}: the secret is binary, not text") from None
    return str(value)


def resolve_secret_ref(ref: str) -> SecretStr:
    """The value a service's `secrets:` reference names, read now (config.SecretRef's grammar, checked again).

    Raises:
        PipelineError: the secret (or the key of a JSON secret) does not exist, cannot be read, is empty or is more
            than one line (a container's environment file takes one line a variable).
    """
    if ref.startswith("prefect-secret://"):
        try:
            value = read_secret_block(ref.removeprefix("prefect-secret://")).get_secret_value()
        except PipelineError as exc:
            raise PipelineError(f"{ref}: {exc}") from None
    elif ref.startswith("aws-sm://"):
        name, _, key = ref.removeprefix("aws-sm://").partition("#")
        value = _aws_secret(name, ref)
        if key:
            try:
                found = json.loads(value).get(key) if isinstance(json.loads(value), dict) else None
            except ValueError:
                raise PipelineError(f"{ref}: the secret is not a JSON object, so it has no key {key!r}") from None
            if not isinstance(found, str):
                raise PipelineError(f"{ref}: the secret has no string under the key {key!r}")
            value = found
    else:
        raise PipelineError(f"{ref!r} is not a secret reference (aws-sm://NAME[#key], prefect-secret://BLOCK)")
    if not value:
        raise PipelineError(f"{ref}: the secret is empty")
    if any(c in value for c in "\n\r\0"):
        raise PipelineError(f"{ref}: the secret is more than one line (a container's environment takes one)")
    return SecretStr(value)
