"""Content keys, manifest lists and immutable tags (the registry tests use a real docker-registry)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from sunday_release.content_key import content_key
from sunday_release.errors import InputError, TagExists
from sunday_release.registry import Descriptor, RegistryClient, RegistryUnavailable, manifest_list, validate_repository
from tests.conftest import Registry


def _context(tmp_path: Path) -> Path:
    ctx = tmp_path / "svc"
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM base\nCOPY . /app\n")
    (ctx / "src" / "main.py").write_text("print('hi')\n")
    return ctx


def _key(ctx: Path, **overrides: object) -> str:
    args: dict[str, object] = {"build_args": {"BASE_IMAGE": "b"}, "platforms": ["linux/amd64", "linux/arm64"],
                               "target": None, "extra": ["sha256:base"]}
    args.update(overrides)
    return content_key(ctx, ctx / "Dockerfile", **args)  # type: ignore[arg-type]


def test_content_key_is_stable_and_ignores_caches_and_git(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    key = _key(ctx)
    assert key == _key(ctx) and len(key) == 24
    (ctx / "__pycache__").mkdir()
    (ctx / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (ctx / ".git").mkdir()
    (ctx / ".git" / "HEAD").write_text("ref: refs/heads/x\n")
    assert _key(ctx) == key
    assert _key(ctx, platforms=["linux/arm64", "linux/amd64"]) == key  # order does not matter


@pytest.mark.parametrize("change", ["file", "new-file", "dockerfile", "mode", "build-arg", "platforms", "target",
                                    "base-digest"])
def test_content_key_goes_stale_on_every_input(tmp_path: Path, change: str) -> None:
    ctx = _context(tmp_path)
    before = _key(ctx)
    overrides: dict[str, object] = {}
    if change == "file":
        (ctx / "src" / "main.py").write_text("print('hello')\n")
    elif change == "new-file":
        (ctx / "src" / "extra.py").write_text("")
    elif change == "dockerfile":
        (ctx / "Dockerfile").write_text("FROM base\nCOPY . /srv\n")
    elif change == "mode":
        (ctx / "src" / "main.py").chmod(0o755)
    elif change == "build-arg":
        overrides["build_args"] = {"BASE_IMAGE": "b", "X": "1"}
    elif change == "platforms":
        overrides["platforms"] = ["linux/amd64"]
    elif change == "target":
        overrides["target"] = "runtime"
    else:
        overrides["extra"] = ["sha256:newbase"]
    assert _key(ctx, **overrides) != before


def test_manifest_list_body() -> None:
    body, media_type = manifest_list([Descriptor("application/vnd.docker.distribution.manifest.v2+json",
                                                 "sha256:" + "b" * 64, 10, "linux/arm64"),
                                      Descriptor("application/vnd.docker.distribution.manifest.v2+json",
                                                 "sha256:" + "a" * 64, 12, "linux/amd64")])
    data = json.loads(body)
    assert media_type == data["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert [m["platform"]["architecture"] for m in data["manifests"]] == ["amd64", "arm64"]
    with pytest.raises(ValueError):
        manifest_list([])


@pytest.mark.parametrize("name", ["Upper/case", "a//b", "-x", "a/", "spa ce"])
def test_bad_repository_names(name: str) -> None:
    with pytest.raises(InputError):
        validate_repository(name)


def _push_config_blob(reg: Registry, repo: str, content: bytes) -> Descriptor:
    """Upload a blob and return a (config-only) image manifest descriptor body for it."""
    import hashlib

    import httpx

    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    start = httpx.post(f"http://{reg.address}/v2/{repo}/blobs/uploads/")
    location = start.headers["location"]
    sep = "&" if "?" in location else "?"
    url = location if location.startswith("http") else f"http://{reg.address}{location}"
    httpx.put(f"{url}{sep}digest={digest}", content=content).raise_for_status()
    return Descriptor("application/vnd.docker.container.image.v1+json", digest, len(content))


def _manifest(config: Descriptor) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
                       "layers": []}).encode()


def test_tags_are_immutable(registry: Registry) -> None:
    one = _manifest(_push_config_blob(registry, "team/app", b'{"architecture":"amd64","os":"linux"}'))
    two = _manifest(_push_config_blob(registry, "team/app", b'{"architecture":"arm64","os":"linux"}'))
    media = "application/vnd.docker.distribution.manifest.v2+json"
    with RegistryClient(registry.address) as client:
        digest = client.put_tag("team/app", "v1.0.0", one, media)
        assert client.put_tag("team/app", "v1.0.0", one, media) == digest  # same content: a no-op
        with pytest.raises(TagExists) as err:
            client.put_tag("team/app", "v1.0.0", two, media)
        assert "v1.0.0" in str(err.value) and digest in str(err.value) and "refusing" in str(err.value)
        head = client.head("team/app", "v1.0.0")
        assert head is not None and head.digest == digest  # not overwritten
        assert client.head("team/app", "missing") is None
    again = pickle.loads(pickle.dumps(err.value))
    assert str(again) == str(err.value)


def test_unreachable_registry_is_a_clear_error(registry: Registry) -> None:
    registry.stop()
    with RegistryClient(registry.address) as client, pytest.raises(RegistryUnavailable, match="did not answer"):
        client.head("team/app", "v1")
