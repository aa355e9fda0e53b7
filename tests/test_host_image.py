"""DockerTarget.host_image: the platform's manifest of a release's manifest list, asked again on a registry's 5xx."""

from __future__ import annotations

import platform
from typing import Any

import pytest

from sunday_release.registry import INDEX_TYPES, Descriptor, RegistryUnavailable
from sunday_release.targets import docker as target

LIST = "sha256:" + "1" * 64
AMD, ARM = "sha256:" + "2" * 64, "sha256:" + "3" * 64
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


class FlakyRegistry:
    """A registry client that answers 500 `failures` times, then the manifest list (a fake: no registry)."""

    calls = 0
    failures = 0

    def __init__(self, registry: str) -> None:
        pass

    def __enter__(self) -> FlakyRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def head(self, repository: str, ref: str) -> Descriptor:
        FlakyRegistry.calls += 1
        if FlakyRegistry.calls <= FlakyRegistry.failures:
            raise RegistryUnavailable(f"registry localhost:5000 answered 500 to GET {repository}/manifests/{ref}")
        return Descriptor(INDEX_TYPES[0], ref, 100)

    def platforms(self, repository: str, ref: str) -> list[Descriptor]:
        return [Descriptor("m", AMD, 1, "linux/amd64"), Descriptor("m", ARM, 1, "linux/arm64")]


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> type[FlakyRegistry]:
    FlakyRegistry.calls = 0
    monkeypatch.setattr(target, "RegistryClient", FlakyRegistry)
    monkeypatch.setattr(target.time, "sleep", lambda _s: None)
    return FlakyRegistry


def _host_image(image: str) -> Any:
    return target.DockerTarget.host_image(target.DockerTarget.__new__(target.DockerTarget), image)


@pytest.mark.parametrize("failures", [0, 1, 2])
def test_a_registry_5xx_is_asked_again_before_a_deploy_gives_up(flaky: type[FlakyRegistry], failures: int) -> None:
    flaky.failures = failures
    expected = {"amd64": AMD, "arm64": ARM}[ARCH]
    assert _host_image(f"localhost:5000/sunday/backend@{LIST}") == f"localhost:5000/sunday/backend@{expected}"
    assert flaky.calls == failures + 1


def test_a_registry_that_keeps_failing_fails_the_start(flaky: type[FlakyRegistry]) -> None:
    flaky.failures = 3
    with pytest.raises(RegistryUnavailable, match="answered 500"):
        _host_image(f"localhost:5000/sunday/backend@{LIST}")
    assert flaky.calls == 3
