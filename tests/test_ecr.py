"""ECR code path against a FAKE of AWS (AWS itself cannot run here)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sunday_release.ecr import ecr_credentials, ensure_repository, is_ecr, region_of


class RepositoryNotFoundException(Exception):
    """Named like botocore's generated exception."""


class FakeEcrClient:
    """A fake of AWS ECR: tokens and repositories in memory."""

    def __init__(self) -> None:
        self.repositories: dict[str, dict[str, Any]] = {}
        self.token_calls: list[dict[str, Any]] = []

    def get_authorization_token(self, **kwargs: Any) -> dict[str, Any]:
        self.token_calls.append(kwargs)
        token = base64.b64encode(b"AWS:s3cr3t-token").decode()
        return {"authorizationData": [{"authorizationToken": token,
                                       "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"}]}

    def describe_repositories(self, **kwargs: Any) -> dict[str, Any]:
        names = kwargs["repositoryNames"]
        if names[0] not in self.repositories:
            raise RepositoryNotFoundException(names[0])
        return {"repositories": [self.repositories[names[0]]]}

    def create_repository(self, **kwargs: Any) -> dict[str, Any]:
        self.repositories[kwargs["repositoryName"]] = kwargs
        return {"repository": kwargs}


ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


def test_recognises_ecr_registries() -> None:
    assert is_ecr(ECR) and region_of(ECR) == "eu-west-1"
    assert not is_ecr("localhost:5000") and not is_ecr("ghcr.io")


def test_credentials_come_from_the_token_of_the_account() -> None:
    fake = FakeEcrClient()
    assert ecr_credentials(ECR, fake) == ("AWS", "s3cr3t-token")
    assert fake.token_calls == [{"registryIds": ["123456789012"]}]
    with pytest.raises(ValueError):
        ecr_credentials("localhost:5000", fake)


def test_repositories_are_created_immutable_once() -> None:
    fake = FakeEcrClient()
    ensure_repository(fake, "sunday/backend")
    ensure_repository(fake, "sunday/backend")
    assert list(fake.repositories) == ["sunday/backend"]
    assert fake.repositories["sunday/backend"]["imageTagMutability"] == "IMMUTABLE"
