"""Image references, auth challenges and token scopes: pure parsing, no Docker, no network."""

from __future__ import annotations

import httpx
import pytest

from sunday_release.errors import ConfigError, InputError
from sunday_release.registry import DOCKER_HUB, ImageRef, RegistryClient, parse_challenge, parse_image_ref, scope_of
from tasks.images import _base_digest

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("value", "expected"), [
    ("debian:bookworm-slim", ImageRef(DOCKER_HUB, "library/debian", "bookworm-slim")),
    ("debian", ImageRef(DOCKER_HUB, "library/debian")),
    ("bitnami/redis:7.2", ImageRef(DOCKER_HUB, "bitnami/redis", "7.2")),
    ("docker.io/library/debian:12", ImageRef(DOCKER_HUB, "library/debian", "12")),
    ("docker.io/debian:12", ImageRef(DOCKER_HUB, "library/debian", "12")),
    ("index.docker.io/debian", ImageRef(DOCKER_HUB, "library/debian")),
    ("ghcr.io/org/x:tag", ImageRef("ghcr.io", "org/x", "tag")),
    ("ghcr.io/org/team/x", ImageRef("ghcr.io", "org/team/x")),
    ("localhost:5000/base/debian:bookworm", ImageRef("localhost:5000", "base/debian", "bookworm")),
    ("localhost/base/debian", ImageRef("localhost", "base/debian")),
    ("127.0.0.1:5000/a:v1.2.3", ImageRef("127.0.0.1:5000", "a", "v1.2.3")),
    ("harbor.example.com:8443/proj/app:1", ImageRef("harbor.example.com:8443", "proj/app", "1")),
    (f"debian@{DIGEST}", ImageRef(DOCKER_HUB, "library/debian", None, DIGEST)),
    (f"ghcr.io/org/x:tag@{DIGEST}", ImageRef("ghcr.io", "org/x", "tag", DIGEST)),
    (f"localhost:5000/base/debian@{DIGEST}", ImageRef("localhost:5000", "base/debian", None, DIGEST)),
])
def test_references_resolve_to_registry_repository_and_reference(value: str, expected: ImageRef) -> None:
    ref = parse_image_ref(value)
    assert ref == expected
    assert ref.reference == (expected.digest or expected.tag or "latest")


def test_reference_round_trips_through_str() -> None:
    ref = parse_image_ref(f"ghcr.io/org/x:tag@{DIGEST}")
    assert str(ref) == f"ghcr.io/org/x:tag@{DIGEST}"
    assert parse_image_ref(str(ref)) == ref
    assert str(parse_image_ref("debian:bookworm-slim")) == f"{DOCKER_HUB}/library/debian:bookworm-slim"


@pytest.mark.parametrize(("value", "why"), [
    ("", "empty"),
    (" debian", "white space"),
    ("https://ghcr.io/org/x:tag", "no scheme"),
    ("Debian:12", "not a repository name"),
    ("ghcr.io/Org/x", "not a repository name"),
    ("debian:bad tag", "white space"),
    ("debian:-x", "not a tag"),
    ("debian@sha256:short", "not a digest"),
    ("debian@latest", "not a digest"),
    ("-bad.io/x", "hyphen"),
    ("ghcr.io/", "not a repository name"),
    ("a//b", "not a repository name"),
    ("ghcr.io:port/x", "not a registry host"),
])
def test_bad_references_name_the_value_and_where_it_came_from(value: str, why: str) -> None:
    with pytest.raises(InputError) as err:
        parse_image_ref(value, "--image")
    message = str(err.value)
    assert message.startswith(f"--image: {value!r} is not a valid image reference")
    assert why in message


def test_a_bad_base_image_is_a_config_error_before_any_network() -> None:
    with pytest.raises(ConfigError) as err:
        _base_digest("https://ghcr.io/org/base:1")
    assert (err.value.file, err.value.path) == ("sunday-release.yaml", "base_image")
    assert "'https://ghcr.io/org/base:1'" in str(err.value)


def test_a_pinned_base_image_is_its_own_digest() -> None:
    assert _base_digest(f"debian:bookworm-slim@{DIGEST}") == DIGEST  # no registry asked (none reachable here)


@pytest.mark.parametrize(("header", "expected"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/debian:pull"',
     ("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                 "scope": "repository:library/debian:pull"})),
    ('Basic realm="Registry Realm"', ("basic", {"realm": "Registry Realm"})),
    ("Bearer realm=https://h/t,service=s", ("bearer", {"realm": "https://h/t", "service": "s"})),
    ("", ("", {})),
])
def test_challenges(header: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_challenge(header) == expected


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("HEAD", "/v2/team/app/manifests/v1", "repository:team/app:pull"),
    ("GET", "/v2/library/debian/manifests/sha256:ab", "repository:library/debian:pull"),
    ("PUT", "/v2/team/app/manifests/v1", "repository:team/app:pull,push"),
    ("POST", "/v2/team/app/blobs/uploads/", "repository:team/app:pull,push"),
    ("GET", "/v2/", None),
])
def test_scopes(method: str, path: str, scope: str | None) -> None:
    assert scope_of(method, path) == scope


@pytest.mark.parametrize(("realm", "sends"), [("https://auth.example.com/token", True),
                                              ("http://127.0.0.1:9/token", True),
                                              ("http://auth.example.com/token", False)])
def test_credentials_go_only_to_a_safe_token_realm(realm: str, sends: bool) -> None:
    """A fake remote registry (httpx.MockTransport): its challenge names the realm the client asks."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            seen.append(request.headers.get("authorization"))
            return httpx.Response(200, json={"token": "t0k", "expires_in": 300})
        if request.headers.get("authorization") != "Bearer t0k":
            return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})
        return httpx.Response(404)

    with RegistryClient("registry.example.com", auth=("ci", "pw"), transport=httpx.MockTransport(handler)) as client:
        assert client.head("team/app", "v1") is None
    assert len(seen) == 1 and (seen[0] is not None) == sends
