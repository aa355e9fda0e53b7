"""A service's `secrets:`: references in the config, values read at deploy time (adapters/secrets.py) from AWS
Secrets Manager (moto_server: AWS itself cannot run here) and Prefect Secret blocks (a real server), written only
to the containers' 0600 env files (the docker target). The whole path through CD, rotation and a missing secret,
searched for leaks: tests/test_secrets_canary.py."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from pydantic import SecretStr

from adapters.secrets import resolve_secret_ref
from sunday_release.config import PipelineConfig, parse_config
from sunday_release.errors import ConfigError, PipelineError
from sunday_release.targets.docker import DockerTarget
from tests.pg import S3, s3  # noqa: F401 (a fixture)

CONFIG = """
project: shop
services:
  api:
    context: api
    port: 8000
    env: {LOG_LEVEL: info}
    secrets: {API_TOKEN: "aws-sm://shop/api#token", SMTP_PASSWORD: "prefect-secret://smtp-password"}
environments:
  staging: {port: 18081}
"""


def _config(text: str = CONFIG) -> PipelineConfig:
    return parse_config(yaml.safe_load(text))


@pytest.mark.parametrize(("secrets", "says"), [
    ('{API_TOKEN: "vault://kv/api"}', "services.api.secrets.API_TOKEN: expected a secret reference"),
    ('{API_TOKEN: "aws-sm://"}', "services.api.secrets.API_TOKEN: expected a secret reference"),
    ('{API_TOKEN: "prefect-secret://Has_Capitals"}', "services.api.secrets.API_TOKEN: expected a secret reference"),
    ('{"bad name": "prefect-secret://x"}', "services.api.secrets"),
    ('{LOG_LEVEL: "prefect-secret://x"}', "LOG_LEVEL: in both `env` and `secrets`"),
    ('{DATABASE_URL: "prefect-secret://x"}', "DATABASE_URL: set by the pipeline itself"),
])
def test_a_bad_secret_reference_is_refused_naming_where(secrets: str, says: str) -> None:
    text = CONFIG.replace('{API_TOKEN: "aws-sm://shop/api#token", SMTP_PASSWORD: "prefect-secret://smtp-password"}',
                          secrets)
    with pytest.raises(ConfigError) as err:
        _config(text)
    assert says in str(err.value)


def test_the_docker_target_writes_secrets_only_to_the_0600_env_file_and_never_starts_without_them(
        tmp_path: Path) -> None:
    config = _config()
    target = DockerTarget(config, "staging", config.environments["staging"], tmp_path / "home", "/usr/bin/docker",
                          tmp_path / "db", env_root=tmp_path / "envs")
    with pytest.raises(PipelineError, match="api: the secrets API_TOKEN, SMTP_PASSWORD were not resolved"):
        target._env_file("api", "v1", "blue")
    target.use_secrets({"api": {"API_TOKEN": SecretStr("t0k3n"), "SMTP_PASSWORD": SecretStr("pa55")}})
    path = target._env_file("api", "v1", "blue")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    lines = path.read_text().splitlines()
    assert {"LOG_LEVEL=info", "API_TOKEN=t0k3n", "SMTP_PASSWORD=pa55", "APP_VERSION=v1"} <= set(lines)
    target.use_secrets({"api": {"API_TOKEN": SecretStr("rotated"), "SMTP_PASSWORD": SecretStr("pa55")}})
    assert "API_TOKEN=rotated" in target._env_file("api", "v2", "green").read_text()  # each deploy's own values


@pytest.fixture
def secrets_manager(s3: S3, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:  # noqa: F811
    """moto_server's Secrets Manager, where boto3 (and so prefect-aws) looks for it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", s3.endpoint_url)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    yield boto3.client("secretsmanager", endpoint_url=s3.endpoint_url, region_name="eu-west-1")


def test_aws_secrets_manager_references_are_read_rotated_and_refused_by_name(secrets_manager: object) -> None:
    client = secrets_manager
    client.create_secret(Name="shop/api", SecretString=json.dumps({"token": "first", "n": 1}))  # type: ignore
    client.create_secret(Name="shop/plain", SecretString="plain-value")  # type: ignore
    client.create_secret(Name="shop/lines", SecretString="one\ntwo")  # type: ignore
    assert resolve_secret_ref("aws-sm://shop/api#token").get_secret_value() == "first"
    assert resolve_secret_ref("aws-sm://shop/plain").get_secret_value() == "plain-value"
    client.put_secret_value(SecretId="shop/api", SecretString=json.dumps({"token": "second"}))  # type: ignore
    assert resolve_secret_ref("aws-sm://shop/api#token").get_secret_value() == "second"  # the current version
    for ref, says in [("aws-sm://shop/missing", "aws-sm://shop/missing: no such secret in AWS Secrets Manager"),
                      ("aws-sm://shop/api#nope", "aws-sm://shop/api#nope: the secret has no string under the key"),
                      ("aws-sm://shop/api#n", "the secret has no string under the key 'n'"),
                      ("aws-sm://shop/plain#token", "the secret is not a JSON object"),
                      ("aws-sm://shop/lines", "aws-sm://shop/lines: the secret is more than one line")]:
        with pytest.raises(PipelineError) as err:
            resolve_secret_ref(ref)
        assert says in str(err.value)
        assert "second" not in str(err.value) and "plain-value" not in str(err.value)  # never a value


def test_prefect_secret_block_references_are_read_from_the_runs_server(prefect_api: str) -> None:
    from prefect.blocks.system import Secret

    Secret(value="smtp-pa55").save("test-smtp-password", overwrite=True)
    assert resolve_secret_ref("prefect-secret://test-smtp-password").get_secret_value() == "smtp-pa55"
    with pytest.raises(PipelineError, match="prefect-secret://test-nothing-here: no Secret block 'test-nothing-here'"):
        resolve_secret_ref("prefect-secret://test-nothing-here")
