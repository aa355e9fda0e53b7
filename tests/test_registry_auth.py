"""Registry auth and tag races against the real `docker-registry`.

Token auth: the registry runs with `auth: token:` and trusts a certificate made here; its realm is
a small token issuer (an HTTP server in this process) that signs JWTs with that certificate's key,
grants what it is asked to `ci` / `s3cr3t-pw`, and to anonymous callers only `pull` of `base/*`
(as Docker Hub does for public images). Basic auth: the registry runs with `auth: htpasswd:`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import contextvars
import crypt
import datetime
import hashlib
import http.server
import json
import multiprocessing
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sunday_release.errors import TagExists
from sunday_release.registry import (
    Descriptor,
    RegistryAuth,
    RegistryAuthFailed,
    RegistryClient,
    TagLock,
    digest_of,
    host_tag_lock,
    manifest_list,
)
from tests.conftest import Registry, free_port

# every test here runs a docker-registry process (the tier of the `registry` fixture), some through own fixtures
pytestmark = pytest.mark.docker

USER, PASSWORD = "ci", "s3cr3t-pw"
SERVICE, ISSUER = "test-registry", "test-issuer"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _canonical(scope: str) -> str:
    """`repository:NAME:push,pull` → `repository:NAME:pull,push`: the registry's challenge lists a scope's
    actions in Go map order, which changes from one request to the next."""
    head, _, actions = scope.rpartition(":")
    return f"{head}:{','.join(sorted(actions.split(',')))}" if ":" in head else scope


class TokenIssuer:
    """The registry's realm: issues RS256 JWTs (`x5c` = the trusted certificate) for the scopes asked."""

    def __init__(self, root: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_file = root / "issuer.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: Counter[tuple[str, str]] = Counter()  # (user or "", scope) → token requests
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                user = issuer.user_of(self.headers.get("Authorization", ""))
                scope = query.get("scope", [""])[0]
                issuer.requests[(user or "", _canonical(scope))] += 1
                if user is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                    self.end_headers()
                    return
                body = json.dumps({"token": issuer.token(user, scope), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def user_of(header: str) -> str | None:
        """"" for anonymous, the user for good Basic credentials, None for bad ones."""
        if not header:
            return ""
        user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
        return user if (user, password) == (USER, PASSWORD) else None

    def token(self, user: str, scope: str) -> str:
        access = []
        if scope:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = actions.split(",") if user else (["pull"] if name.startswith("base/") else [])
            access.append({"type": kind, "name": name, "actions": [a for a in granted if a in actions.split(",")]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": hashlib.sha256(f"{now}{user}{scope}{time.monotonic()}".encode()).hexdigest(),
                  "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class AuthRegistry(Registry):
    """A real `docker-registry serve` whose config has an `auth:` section."""

    def __init__(self, root: Path, auth: str) -> None:
        super().__init__(root)
        self.config.write_text(self.config.read_text() + auth)

    def start(self) -> AuthRegistry:
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.address}/v2/", timeout=1).status_code == 401:
                    return self
            time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    tokens = TokenIssuer(tmp_path)
    try:
        yield tokens
    finally:
        tokens.stop()


@pytest.fixture
def token_registry(tmp_path: Path, issuer: TokenIssuer) -> Iterator[AuthRegistry]:
    """A registry with `auth: token:` whose realm is `issuer`, torn down afterwards."""
    reg = AuthRegistry(tmp_path / "registry", f"auth: {{token: {{realm: '{issuer.realm}', service: {SERVICE}, "
                                              f"issuer: {ISSUER}, rootcertbundle: '{issuer.cert_file}'}}}}\n")
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[AuthRegistry]:
    """A registry with `auth: htpasswd:` (bcrypt) for `ci`, torn down afterwards."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**4))}\n")
    reg = AuthRegistry(tmp_path / "registry", f"auth: {{htpasswd: {{realm: test, path: '{htpasswd}'}}}}\n")
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def _image_manifest(address: str, repo: str, config: bytes, auth: tuple[str, str] | None = None) -> bytes:
    """Upload `config` as a blob (through RegistryAuth) and return an image manifest body for it."""
    digest = digest_of(config)
    with httpx.Client(auth=RegistryAuth(address, auth), timeout=10) as http:
        start = http.post(f"http://{address}/v2/{repo}/blobs/uploads/")
        start.raise_for_status()
        location = start.headers["location"]
        url = location if location.startswith("http") else f"http://{address}{location}"
        http.put(f"{url}{'&' if '?' in url else '?'}digest={digest}", content=config).raise_for_status()
    return json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest,
                                  "size": len(config)}, "layers": []}).encode()


def test_token_auth_push_and_read_manifests_and_tags(token_registry: AuthRegistry, issuer: TokenIssuer) -> None:
    body = _image_manifest(token_registry.address, "team/app", b'{"architecture":"amd64","os":"linux"}',
                           (USER, PASSWORD))
    issuer.requests.clear()
    with RegistryClient(token_registry.address, auth=(USER, PASSWORD)) as client:
        digest = client.put_tag("team/app", "v1.0.0", body, MANIFEST)
        assert client.put_tag("team/app", "v1.0.0", body, MANIFEST) == digest  # same content: a no-op
        found = client.head("team/app", "v1.0.0")
        assert found is not None and found.digest == digest == digest_of(body)
        assert client.get("team/app", digest) == (body, MANIFEST)
        assert client.head("team/app", "missing") is None
        for _ in range(3):
            client.head("team/app", "v1.0.0")
    # one token per scope, then reused from the cache
    assert issuer.requests == {(USER, "repository:team/app:pull"): 1, (USER, "repository:team/app:pull,push"): 1}


def test_without_a_token_the_registry_refuses(token_registry: AuthRegistry) -> None:
    assert httpx.head(f"http://{token_registry.address}/v2/team/app/manifests/v1").status_code == 401
    with RegistryClient(token_registry.address) as client, pytest.raises(RegistryAuthFailed) as err:
        client.head("team/app", "v1")  # anonymous: the issuer grants nothing outside base/
    assert token_registry.address in str(err.value) and "401" in str(err.value)


def test_a_wrong_password_names_the_registry_and_no_secret(token_registry: AuthRegistry,
                                                           issuer: TokenIssuer) -> None:
    secret = "Wr0ng-pa55word-xyz"
    with RegistryClient(token_registry.address, auth=(USER, secret)) as client, \
            pytest.raises(RegistryAuthFailed) as err:
        client.head("team/app", "v1")
    message = str(err.value)
    assert f"registry {token_registry.address}" in message
    assert "token service" in message and issuer.realm in message and f"user {USER!r}" in message
    assert secret not in message and base64.b64encode(f"{USER}:{secret}".encode()).decode() not in message


def test_base_image_on_a_token_registry_feeds_the_content_key(token_registry: AuthRegistry, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The base image's digest is read anonymously (like Docker Hub's public images) and moves the key."""
    from sunday_release.config import Service
    from tasks.images import _base_digest, image_content_key
    from tasks.source import Checkout

    address = token_registry.address
    one = _image_manifest(address, "base/debian", b'{"architecture":"amd64","os":"linux","v":1}', (USER, PASSWORD))
    two = _image_manifest(address, "base/debian", b'{"architecture":"amd64","os":"linux","v":2}', (USER, PASSWORD))
    with httpx.Client(auth=RegistryAuth(address, (USER, PASSWORD))) as http:
        http.put(f"http://{address}/v2/base/debian/manifests/bookworm", content=one,
                 headers={"Content-Type": MANIFEST}).raise_for_status()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-login"))  # anonymous
    base = f"{address}/base/debian:bookworm"
    assert _base_digest(base) == digest_of(one)

    context = tmp_path / "checkout" / "svc"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM $BASE_IMAGE\n")
    checkout = Checkout("repo", "main", str(tmp_path / "checkout"), "a" * 40, "2026-01-01T00:00:00+00:00")
    spec = Service(context="svc", port=8080)
    key = image_content_key.fn("svc", spec, checkout, base)
    assert image_content_key.fn("svc", spec, checkout, base) == key
    with httpx.Client(auth=RegistryAuth(address, (USER, PASSWORD))) as http:  # the base tag moves (a new debian)
        http.put(f"http://{address}/v2/base/debian/manifests/bookworm", content=two,
                 headers={"Content-Type": MANIFEST}).raise_for_status()
    assert _base_digest(base) == digest_of(two)
    assert image_content_key.fn("svc", spec, checkout, base) != key


def test_docker_login_credentials_are_used(token_registry: AuthRegistry, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A private base image: the credentials `docker login` stored (DOCKER_CONFIG) get the token."""
    from tasks.images import _base_digest

    address = token_registry.address
    body = _image_manifest(address, "private/base", b'{"os":"linux"}', (USER, PASSWORD))
    with RegistryClient(address, auth=(USER, PASSWORD)) as client:
        client.put_tag("private/base", "1", body, MANIFEST)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps(
        {"auths": {address: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    assert _base_digest(f"{address}/private/base:1") == digest_of(body)
    (tmp_path / "docker" / "config.json").write_text("{}")
    with pytest.raises(RegistryAuthFailed, match=address):
        _base_digest(f"{address}/private/base:1")


def test_basic_auth_still_works(basic_registry: AuthRegistry) -> None:
    body = _image_manifest(basic_registry.address, "team/app", b'{"os":"linux"}', (USER, PASSWORD))
    with RegistryClient(basic_registry.address, auth=(USER, PASSWORD)) as client:
        digest = client.put_tag("team/app", "v1", body, MANIFEST)
        found = client.head("team/app", "v1")
        assert found is not None and found.digest == digest
    with RegistryClient(basic_registry.address, auth=(USER, "wrong")) as client, \
            pytest.raises(RegistryAuthFailed, match=basic_registry.address):
        client.head("team/app", "v1")


# --- two writers of one tag at once -------------------------------------------------------------


class _SlowReads(httpx.HTTPTransport):
    """Holds every HEAD answer for `delay` seconds: widens the window between a tag's check and its write."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "HEAD":
            time.sleep(self.delay)
        return response


def _write_tag(address: str, tag: str, body: bytes, delay: float, lock: str, start_at: float,
               claim: bool = False) -> str:
    """One CI run writing `tag`: "won DIGEST", "refused", or "claimed DIGEST". `lock`: a directory, "prefect", or ""."""
    if lock == "prefect":
        from tasks.images import _prefect_tag_lock  # (Prefect is imported only where it is used: fast spawns)

        tag_lock: TagLock = _prefect_tag_lock
    else:
        tag_lock = host_tag_lock(Path(lock)) if lock else lambda *_: contextlib.nullcontext()
    with RegistryClient(address, transport=_SlowReads(delay), tag_lock=tag_lock) as client:
        # made before the clock starts: building a client (its TLS context) is the slow part of a start under load
        time.sleep(max(0.0, start_at - time.time()))
        if claim:
            return f"claimed {client.claim_tag('team/app', tag, body, MANIFEST)}"
        try:
            return f"won {client.put_tag('team/app', tag, body, MANIFEST)}"
        except TagExists:
            return "refused"


def _race(registry: Registry, lock: str, *, claim: bool = False,
          pool: type[concurrent.futures.ProcessPoolExecutor | concurrent.futures.ThreadPoolExecutor]
          = concurrent.futures.ProcessPoolExecutor) -> tuple[list[str], str]:
    """Writer A (1 s per read) and writer B (4 s per read) start together.

    Unlocked, B checks before A writes and writes after A has checked its write: both "win".
    """
    one = _image_manifest(registry.address, "team/app", b'{"architecture":"amd64","os":"linux"}')
    two = _image_manifest(registry.address, "team/app", b'{"architecture":"arm64","os":"linux"}')
    kwargs: dict[str, Any] = {"mp_context": multiprocessing.get_context("spawn")} \
        if pool is concurrent.futures.ProcessPoolExecutor else {}
    with pool(max_workers=2, **kwargs) as executor:
        list(executor.map(time.sleep, [1, 1]))  # both workers up (each started on demand) before the clock starts
        start_at = time.time() + 2
        threads = pool is concurrent.futures.ThreadPoolExecutor

        def submit(*args: Any) -> concurrent.futures.Future[str]:
            if threads:  # a thread gets the caller's context (Prefect's settings: the test server), a copy each
                return executor.submit(contextvars.copy_context().run, _write_tag, *args)
            return executor.submit(_write_tag, *args)

        futures = [submit(registry.address, "v1", one, 1.0, lock, start_at, claim),
                   submit(registry.address, "v1", two, 4.0, lock, start_at, claim)]
        results = [f.result(timeout=120) for f in futures]
    with RegistryClient(registry.address) as client:
        head = client.head("team/app", "v1")
    assert head is not None
    return results, head.digest


def test_without_a_lock_both_writers_would_win(registry: Registry) -> None:
    """The control: the race the lock closes is real (B checks before A writes and writes after A checked)."""
    results, final = _race(registry, "")
    assert results[0].startswith("won") and results[1].startswith("won")
    assert results[0] != results[1] and results[0] != f"won {final}"  # A's tag was overwritten silently


def test_with_the_host_lock_exactly_one_writer_wins(registry: Registry, tmp_path: Path) -> None:
    results, final = _race(registry, str(tmp_path / "locks"))
    assert sorted(results) == ["refused", f"won {final}"]  # whichever took the lock first


def test_content_key_claims_agree_on_the_first_writer(registry: Registry, tmp_path: Path) -> None:
    """Two runs of one content key at once: both end up with the first writer's manifest list."""
    results, final = _race(registry, str(tmp_path / "locks"), claim=True)
    assert results == [f"claimed {final}", f"claimed {final}"]


def test_with_the_prefect_lock_exactly_one_writer_wins(registry: Registry, prefect_api: str) -> None:
    """The tasks' lock: a global concurrency limit on the Prefect server, so writers on any host take turns."""
    results, final = _race(registry, "prefect", pool=concurrent.futures.ThreadPoolExecutor)
    assert sorted(results) == ["refused", f"won {final}"]  # whichever got the slot first


def test_publish_adopts_a_content_key_published_meanwhile(registry: Registry) -> None:
    """publish_manifest of a key another run published first uses that run's list, and tags it."""
    from tasks.images import publish_manifest

    address = registry.address

    def platform_list(arch: str, variant: str) -> list[Descriptor]:
        body = _image_manifest(address, "team/svc", json.dumps({"architecture": arch, "os": "linux",
                                                                 "v": variant}).encode())
        with httpx.Client() as http:
            http.put(f"http://{address}/v2/team/svc/manifests/{digest_of(body)}", content=body,
                     headers={"Content-Type": MANIFEST}).raise_for_status()
        return [Descriptor(MANIFEST, digest_of(body), len(body), f"linux/{arch}")]

    first = publish_manifest.fn("svc", address, "team/svc", "k" * 24, platform_list("amd64", "a"), [])
    assert not first.cached and first.digest == digest_of(manifest_list(list(first.platforms))[0])
    second = publish_manifest.fn("svc", address, "team/svc", "k" * 24, platform_list("amd64", "b"), ["sha-abc"])
    assert second.cached and second.digest == first.digest and second.platforms == first.platforms
    with RegistryClient(address) as client:
        tagged = client.head("team/svc", "sha-abc")
    assert tagged is not None and tagged.digest == first.digest


def test_publish_in_a_task_takes_the_prefect_lock(registry: Registry, prefect_api: str) -> None:
    """In a task run, tag writes go through the repository's global concurrency limit on the server."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.images import publish_manifest

    body = _image_manifest(registry.address, "team/locked", b'{"architecture":"amd64","os":"linux"}')
    with httpx.Client() as http:
        http.put(f"http://{registry.address}/v2/team/locked/manifests/{digest_of(body)}", content=body,
                 headers={"Content-Type": MANIFEST}).raise_for_status()
    platforms = [Descriptor(MANIFEST, digest_of(body), len(body), "linux/amd64")]

    @flow
    def publish() -> str:
        return publish_manifest(  # type: ignore[no-any-return]
            "svc", registry.address, "team/locked", "l" * 24, platforms, ["sha-" + "b" * 40]).digest

    digest = publish()
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(f"sunday-tags {registry.address} team|locked")
    assert limit.limit == 1 and limit.active_slots == 0  # taken for each write, released after
    with RegistryClient(registry.address) as reg:
        tagged = reg.head("team/locked", "sha-" + "b" * 40)
    assert tagged is not None and tagged.digest == digest
