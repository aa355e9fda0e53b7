"""A small client of the OCI distribution API: image references, manifests, tags that never move.

- `parse_image_ref` (pure): `debian:bookworm-slim`, `ghcr.io/org/x:tag`, `host:5000/a/b@sha256:…`
  → registry host, repository, tag or digest (Docker Hub names as the docker CLI reads them).
- `RegistryAuth`: Basic credentials, or the Distribution token flow (a `401` with
  `WWW-Authenticate: Bearer realm=…,service=…,scope=…` → a token from the realm, cached per scope).
- `RegistryClient.put_tag` / `claim_tag`: check-then-write of a tag under a lock per
  (registry, repository, tag) (`TagLock`; `host_tag_lock` by default, the tasks pass Prefect's).

The side-effect seam is the httpx transport (`transport=`), as in httpx itself: tests against
the real registry use the default, a fake of a remote registry passes its own.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import re
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.auth
import docker.errors
import docker.utils
import httpx

from sunday_release.errors import InputError, PipelineError, TagExists
from sunday_release.tls import tls_context

__all__ = [
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "DOCKER_HUB",
    "Descriptor",
    "ImageRef",
    "PublishedImage",
    "RegistryAuth",
    "RegistryAuthFailed",
    "RegistryClient",
    "RegistryUnavailable",
    "TagLock",
    "host_tag_lock",
    "manifest_list",
    "parse_image_ref",
    "validate_repository",
]

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
MANIFEST_TYPES = (*INDEX_TYPES, "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.manifest.v1+json")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-fA-F0-9]{32,}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
DOCKER_HUB = "registry-1.docker.io"  # where the docker CLI sends `docker.io` names
_DOCKER_HUB_NAMES = {docker.auth.INDEX_NAME, "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


class RegistryUnavailable(PipelineError):
    """The registry did not answer (connection refused, timeout, 5xx)."""


class DeletesDisabled(PipelineError):
    """The registry does not delete manifests (its configuration), so nothing can be removed from it."""


class RegistryAuthFailed(PipelineError):
    """The registry (or its token service) refused the credentials: names the registry, never a secret."""


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
class ImageRef:
    """Where an image is: the registry host to talk to, the repository, a tag and/or a digest."""

    registry: str  # "registry-1.docker.io", "ghcr.io", "localhost:5000"
    repository: str  # "library/debian"
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag (default `latest`)."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return (f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else ""))


def parse_image_ref(value: str, where: str = "") -> ImageRef:
    """Parse an image reference as the docker CLI does (pure); InputError naming `value` (and `where`) if bad.

    `debian:bookworm-slim` is Docker Hub's `library/debian` (host `registry-1.docker.io`); a first
    path part with a `.` or a `:`, or `localhost`, is a registry host (`ghcr.io/org/x:tag`,
    `localhost:5000/base/debian:bookworm`); `@sha256:…` pins a digest (a tag beside it is kept
    but the digest wins). The split is `docker.utils.parse_repository_tag` and
    `docker.auth.resolve_repository_name`, the docker SDK's own.
    """

    def bad(why: str) -> InputError:
        return InputError(f"{where + ': ' if where else ''}{value!r} is not a valid image reference: {why}")

    if not value or value != value.strip() or any(c.isspace() for c in value):
        raise bad("it is empty or contains white space")
    if "://" in value:
        raise bad("a reference has no scheme (write `ghcr.io/org/image:tag`, not a URL)")
    name, digest = value, None
    if "@" in value:
        name, digest = value.rsplit("@", 1)
        if not _DIGEST.match(digest):
            raise bad(f"{digest!r} is not a digest (algorithm:hex, e.g. sha256:…)")
    repo, tag = docker.utils.parse_repository_tag(name)
    if not repo:
        raise bad("no repository")
    try:
        host, path = docker.auth.resolve_repository_name(repo)
    except docker.errors.InvalidRepository as exc:
        raise bad(str(exc)) from None
    if host in _DOCKER_HUB_NAMES:
        host = DOCKER_HUB
        path = path if "/" in path else f"library/{path}"
    if not _HOST.match(host):
        raise bad(f"{host!r} is not a registry host (name or address, optional :port)")
    if not _REPO.match(path) or len(path) > 255:
        raise bad(f"{path!r} is not a repository name (lower-case letters, digits, . _ - and /)")
    if tag is not None and not _TAG.match(tag):
        raise bad(f"{tag!r} is not a tag ([A-Za-z0-9_.-], at most 128 characters)")
    return ImageRef(host, path, tag, digest)


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


_CHALLENGE = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')
_SCOPE_PATH = re.compile(r"^/v2/(?P<repo>.+)/(?:manifests|blobs|tags)/")
_TOKEN_LEEWAY = 10  # seconds: a token this close to its expiry is fetched again


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` → ("bearer", {"realm": …, "service": …}) (pure)."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): quoted or bare for k, quoted, bare in _CHALLENGE.findall(params)}


def scope_of(method: str, path: str) -> str | None:
    """The token scope a registry API call needs: `repository:NAME:pull` (reads) or `:pull,push` (pure)."""
    match = _SCOPE_PATH.match(path)
    if not match:
        return None
    return f"repository:{match['repo']}:{'pull' if method in ('GET', 'HEAD') else 'pull,push'}"


def _may_send_credentials(realm: httpx.URL) -> bool:
    """Credentials go to a token service over https, or over http on this host only (a realm comes from
    the registry's answer: a plain-http one elsewhere would expose them)."""
    return realm.scheme == "https" or realm.host in ("localhost", "127.0.0.1", "::1")


class RegistryAuth(httpx.Auth):
    """Credentials for a registry: Basic, or the Distribution token flow when the registry asks for it.

    Without a token, Basic credentials are sent up front (ECR, a registry behind htpasswd). A `401`
    with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` gets a token from the realm (with the
    Basic credentials when there are any, anonymously otherwise: Docker Hub's public images, GHCR,
    Harbor); the token is cached per scope until `expires_in` and the request is sent again with
    `Authorization: Bearer`. The token service's refusal is RegistryAuthFailed.
    """

    requires_response_body = True

    def __init__(self, registry: str, credentials: tuple[str, str] | None = None) -> None:
        self.registry = registry
        self._user = credentials[0] if credentials else None
        self._basic = ("Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
                       if credentials else None)
        self._tokens: dict[str, tuple[str, float]] = {}  # scope → (token, time.monotonic() it expires)
        self._bearer = False  # the registry has asked for tokens: stop sending Basic up front

    def _cached(self, scope: str | None) -> str | None:
        token, expires = self._tokens.get(scope or "", ("", 0.0))
        return token if token and time.monotonic() < expires else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        scope = scope_of(request.method, request.url.path)
        if token := self._cached(scope):
            request.headers["Authorization"] = f"Bearer {token}"
        elif self._basic is not None and not self._bearer:
            request.headers["Authorization"] = self._basic
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("www-authenticate", ""))
        if scheme == "bearer" and params.get("realm"):
            self._bearer = True
            want = params.get("scope") or scope
            query = {"service": params["service"]} if params.get("service") else {}
            if want:
                query["scope"] = want
            token_request = httpx.Request("GET", params["realm"], params=query)
            if self._basic is not None and _may_send_credentials(token_request.url):
                token_request.headers["Authorization"] = self._basic
            token_response = yield token_request
            fetched = self._token(token_response, params["realm"], want)
            self._tokens[scope or want or ""] = fetched
            request.headers["Authorization"] = f"Bearer {fetched[0]}"
            yield request
        elif scheme == "basic" and self._basic is not None and "Authorization" not in request.headers:
            request.headers["Authorization"] = self._basic
            yield request

    def _token(self, response: httpx.Response, realm: str, scope: str | None) -> tuple[str, float]:
        url = httpx.URL(realm)
        service = f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}{url.path}"  # never a query
        who = f"user {self._user!r}" if self._user else "anonymous access"
        if response.status_code in (401, 403):
            raise RegistryAuthFailed(f"registry {self.registry}: the token service {service} refused {who} "
                                     f"({response.status_code}) for {scope or 'the registry'}: check the "
                                     "registry credentials (docker login)")
        if response.status_code >= 500:
            raise RegistryUnavailable(f"registry {self.registry}: the token service {service} answered "
                                      f"{response.status_code}")
        try:
            data = response.json()
            token = str(data.get("token") or data.get("access_token") or "")
            lifetime = float(data.get("expires_in") or 60)  # the spec's default
        except (ValueError, AttributeError, TypeError):
            token, lifetime = "", 0.0
        if response.status_code != 200 or not token:
            raise RegistryAuthFailed(f"registry {self.registry}: the token service {service} answered "
                                     f"{response.status_code} without a token")
        return token, time.monotonic() + max(lifetime - _TOKEN_LEEWAY, 1.0)


TagLock = Callable[[str, str, str], AbstractContextManager[object]]
"""`lock(registry, repository, tag)`: held while a tag is checked and written, so writers take turns."""


def host_tag_lock(directory: Path) -> TagLock:
    """A TagLock for the processes of this host: an `flock` of DIR/HASH.lock per (registry, repository, tag)."""

    @contextmanager
    def lock(registry: str, repository: str, tag: str) -> Iterator[None]:
        directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(f"{registry}/{repository}:{tag}".encode()).hexdigest()[:32]
        with open(directory / f"{name}.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return lock


class RegistryClient:
    """Manifests of one registry (`localhost:5000`, `ghcr.io`, `123.dkr.ecr.eu-west-1.amazonaws.com`).

    `auth`: (user, password) for Basic auth or the token service; None for anonymous access (a
    token is still fetched when the registry asks, as Docker Hub does for public images).
    `tag_lock`: held around each check-then-write of a tag (default: `host_tag_lock` in
    `SUNDAY_HOME/locks/tags`, which serialises the writers of this host only).
    """

    def __init__(self, registry: str, *, auth: tuple[str, str] | None = None, insecure: bool | None = None,
                 transport: httpx.BaseTransport | None = None, timeout: float = 30,
                 tag_lock: TagLock | None = None) -> None:
        if not _HOST.match(registry):
            raise InputError(f"{registry!r} is not a registry host (name or address, optional :port)")
        local = registry.rsplit(":", 1)[0] in ("localhost", "127.0.0.1", "[::1]")
        scheme = "http" if (insecure if insecure is not None else local) else "https"
        self.registry = registry
        if tag_lock is None:
            from sunday_release.settings import Settings

            tag_lock = host_tag_lock(Settings.from_env().home / "locks" / "tags")
        self._tag_lock = tag_lock
        self._http = httpx.Client(base_url=f"{scheme}://{registry}/v2/", auth=RegistryAuth(registry, auth),
                                  transport=transport, timeout=timeout, verify=tls_context())

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
        if response.status_code in (401, 403):
            raise RegistryAuthFailed(f"registry {self.registry}: {method} {url} was refused ({response.status_code}"
                                     f"{' unauthorized' if response.status_code == 401 else ' denied'}): check the "
                                     "registry credentials (docker login) and their access to the repository")
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

    def tags(self, repo: str) -> list[str]:
        """Every tag of `repo` (the registry's pages followed); [] for a repository it does not know."""
        found: list[str] = []
        url: str | None = f"{repo}/tags/list?n=1000"
        while url is not None:
            r = self._request("GET", url)
            if r.status_code == 404:
                return found
            if r.status_code != 200:
                raise PipelineError(f"registry {self.registry}: GET {repo} tags answered {r.status_code}")
            found += list(r.json().get("tags") or [])
            following = r.links.get("next", {}).get("url")
            url = following.removeprefix("/v2/") if following else None
        return found

    def delete(self, repo: str, digest: str) -> bool:
        """Delete the manifest `digest` of `repo` and with it every tag pointing at it; False when it was gone.

        Raises:
            PipelineError: the registry refuses deletes (distribution: `storage.delete.enabled`).
        """
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise InputError(f"{digest!r} is not a sha256 digest")
        r = self._request("DELETE", f"{repo}/manifests/{digest}")
        if r.status_code == 404:
            return False
        if r.status_code == 405:
            raise DeletesDisabled(f"registry {self.registry} refuses deletes (DELETE {repo}@{digest[:19]} answered "
                                  "405: distribution's storage.delete.enabled is off)")
        if r.status_code not in (200, 202):
            raise PipelineError(f"registry {self.registry}: DELETE {repo}@{digest[:19]} answered {r.status_code}")
        return True

    def put_tag(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        """Point the immutable `tag` at `body`; return its digest.

        A tag that already points at the same manifest is left alone; one that points at
        anything else is never overwritten (TagExists). The check and the write happen under
        the tag lock, so of two writers of different content exactly one wins and the other
        gets TagExists.
        """
        digest = digest_of(body)
        existing = self.claim_tag(repo, tag, body, media_type)
        if existing != digest:
            raise TagExists(f"{self.registry}/{repo}:{tag}", existing, digest)
        return digest

    def claim_tag(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        """Point `tag` at `body` unless it already points somewhere; return the digest it points at.

        First writer wins: the caller compares the result with `digest_of(body)`. For a
        content-key tag another run's manifest list of the same key is as good as this one, so
        the caller adopts it. Residual race: a writer that does not take the same lock (a person's
        `docker push`, another host without the Prefect lock) can still move the tag between our
        check and our write; the read-back after the write turns that into TagExists rather than
        a silent win. A registry with server-side immutable tags (ECR, Harbor rules) closes it.
        """
        validate_tag(tag)
        digest = digest_of(body)
        with self._tag_lock(self.registry, repo, tag):
            existing = self.head(repo, tag)
            if existing is not None:
                return existing.digest
            r = self._request("PUT", f"{repo}/manifests/{tag}", content=body, headers={"Content-Type": media_type})
            if r.status_code not in (200, 201):
                raise PipelineError(f"registry {self.registry}: PUT {repo}:{tag} answered {r.status_code}: "
                                    f"{r.text[:300]}")
            written = self.head(repo, tag)
        if written is None or written.digest != digest:
            raise TagExists(f"{self.registry}/{repo}:{tag}", written.digest if written else "nothing", digest)
        return digest
