"""A small client of the OCI distribution API: read manifests, write tags that never move.

The side-effect seam is the httpx transport (`transport=`), as in httpx itself: tests against
the real registry use the default, a fake of a remote registry passes its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from sunday_release.errors import InputError, PipelineError, TagExists

__all__ = [
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "Descriptor",
    "PublishedImage",
    "RegistryClient",
    "RegistryUnavailable",
    "manifest_list",
    "validate_repository",
]

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
MANIFEST_TYPES = (*INDEX_TYPES, "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.manifest.v1+json")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class RegistryUnavailable(PipelineError):
    """The registry did not answer (connection refused, timeout, 5xx)."""


def validate_repository(name: str) -> str:
    """Return `name` if it is a valid repository path (`team/service`), else InputError."""
    if not _REPO.match(name) or len(name) > 255:
        raise InputError(f"{name!r} is not a valid image repository name (lower-case, digits, . _ - and /)")
    return name


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a valid image tag, else InputError."""
    if not _TAG.match(tag):
        raise InputError(f"{tag!r} is not a valid image tag ([A-Za-z0-9_.-], at most 128 characters)")
    return tag


@dataclass(frozen=True)
class Descriptor:
    """What a manifest list points at: one platform's manifest (or a whole list)."""

    media_type: str
    digest: str
    size: int
    platform: str | None = None  # "linux/arm64"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            os_, arch, *variant = self.platform.split("/")
            out["platform"] = {"architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {})}
        return out


@dataclass(frozen=True)
class PublishedImage:
    """A service's image in the registry: a manifest list under immutable tags."""

    service: str
    registry: str
    repository: str  # "sunday/backend"
    digest: str  # of the manifest list
    platforms: tuple[Descriptor, ...]
    tags: tuple[str, ...]
    cached: bool
    key: str

    @property
    def ref(self) -> str:
        return f"{self.registry}/{self.repository}@{self.digest}"

    def platform_ref(self, platform: str) -> str:
        digest = next(d.digest for d in self.platforms if d.platform == platform)
        return f"{self.registry}/{self.repository}@{digest}"


def manifest_list(platforms: list[Descriptor]) -> tuple[bytes, str]:
    """The body and media type of a Docker manifest list of per-platform manifests (pure)."""
    if not platforms or any(d.platform is None for d in platforms):
        raise ValueError("a manifest list needs at least one descriptor, each with a platform")
    body = {"schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [d.as_json() for d in sorted(platforms, key=lambda d: d.platform or "")]}
    return json.dumps(body, indent=3).encode(), DOCKER_LIST


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class RegistryClient:
    """Manifests of one registry (`localhost:5000`, `123.dkr.ecr.eu-west-1.amazonaws.com`)."""

    def __init__(self, registry: str, *, auth: tuple[str, str] | None = None, insecure: bool | None = None,
                 transport: httpx.BaseTransport | None = None, timeout: float = 30) -> None:
        local = registry.split(":")[0] in ("localhost", "127.0.0.1")
        scheme = "http" if (insecure if insecure is not None else local) else "https"
        self.registry = registry
        self._http = httpx.Client(base_url=f"{scheme}://{registry}/v2/", auth=auth, transport=transport,
                                  timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise RegistryUnavailable(f"registry {self.registry} did not answer: {exc}") from None
        if response.status_code >= 500:
            raise RegistryUnavailable(f"registry {self.registry} answered {response.status_code} to {method} {url}")
        return response

    def head(self, repo: str, ref: str) -> Descriptor | None:
        """The descriptor `repo:ref` (tag or digest) points at, or None when there is none."""
        r = self._request("HEAD", f"{repo}/manifests/{ref}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise PipelineError(f"registry {self.registry}: HEAD {repo}:{ref} answered {r.status_code}")
        return Descriptor(r.headers["content-type"].split(";")[0], r.headers["docker-content-digest"],
                          int(r.headers.get("content-length", 0)))

    def get(self, repo: str, ref: str) -> tuple[bytes, str]:
        """The manifest body and media type of `repo:ref`."""
        r = self._request("GET", f"{repo}/manifests/{ref}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if r.status_code != 200:
            raise PipelineError(f"registry {self.registry}: GET {repo}:{ref} answered {r.status_code}")
        return r.content, r.headers["content-type"].split(";")[0]

    def platforms(self, repo: str, ref: str) -> list[Descriptor]:
        """The per-platform manifests of the manifest list `repo:ref`."""
        body, media_type = self.get(repo, ref)
        if media_type not in INDEX_TYPES:
            raise PipelineError(f"{self.registry}/{repo}:{ref} is not a manifest list ({media_type})")
        out = []
        for m in json.loads(body)["manifests"]:
            p = m.get("platform", {})
            platform = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
            out.append(Descriptor(m["mediaType"], m["digest"], m["size"], platform or None))
        return out

    def put_tag(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        """Point the immutable `tag` at `body`; return its digest.

        A tag that already points at the same manifest is left alone; one that points at
        anything else is never overwritten (TagExists).
        """
        validate_tag(tag)
        digest = digest_of(body)
        existing = self.head(repo, tag)
        if existing is not None:
            if existing.digest == digest:
                return digest
            raise TagExists(f"{self.registry}/{repo}:{tag}", existing.digest, digest)
        r = self._request("PUT", f"{repo}/manifests/{tag}", content=body, headers={"Content-Type": media_type})
        if r.status_code not in (200, 201):
            raise PipelineError(f"registry {self.registry}: PUT {repo}:{tag} answered {r.status_code}: "
                                f"{r.text[:300]}")
        return digest
