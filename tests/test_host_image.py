"""DockerTarget.host_image: the platform's manifest of a release's manifest list, asked again on a registry's 5xx.

The registry is the machine's real one (localhost:5000, its base image is a two-platform manifest list); a proxy
in front of it answers 500 to the first requests, as docker-registry did in CI when it read a manifest's link
file while another push rewrote it.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sunday_release.registry import RegistryClient, RegistryUnavailable
from sunday_release.targets import docker as target
from tests.conftest import free_port

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


class FailingFirst(ThreadingHTTPServer):
    """Forwards to the real registry, after answering 500 to its first `failures` requests."""

    failures = 0
    seen = 0


class _Handler(BaseHTTPRequestHandler):
    server: FailingFirst

    def _forward(self) -> None:
        self.server.seen += 1
        if self.server.seen <= self.server.failures:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        upstream = httpx.request(self.command, f"http://127.0.0.1:5000{self.path}", timeout=30,
                                 headers={"Accept": self.headers.get("Accept", "*/*")})
        self.send_response(upstream.status_code)
        for name in ("Content-Type", "Docker-Content-Digest", "Content-Length"):
            if name in upstream.headers:
                self.send_header(name, upstream.headers[name])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(upstream.content)

    do_GET = do_HEAD = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(docker_engine: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FailingFirst]:
    server = FailingFirst(("127.0.0.1", free_port()), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(target.time, "sleep", lambda _s: None)  # the backoff, not what is tested
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _base_list() -> tuple[str, str]:
    """The base image's manifest list digest and this machine's platform manifest in it, from the registry."""
    with RegistryClient("localhost:5000") as client:
        found = client.head("base/debian", "bookworm")
        assert found is not None
        mine = [d.digest for d in client.platforms("base/debian", found.digest) if d.platform == f"linux/{ARCH}"]
    return found.digest, mine[0]


def _host_image(image: str) -> str:
    return target.DockerTarget.host_image(target.DockerTarget.__new__(target.DockerTarget), image)


@pytest.mark.parametrize("failures", [0, 1, 2])
def test_a_registry_5xx_is_asked_again_before_a_deploy_gives_up(proxy: FailingFirst, failures: int) -> None:
    listed, mine = _base_list()
    proxy.failures = failures
    name = f"127.0.0.1:{proxy.server_address[1]}/base/debian"
    assert _host_image(f"{name}@{listed}") == f"{name}@{mine}"
    assert proxy.seen == failures + 2  # the failed attempts, then HEAD and GET of the list


def test_a_registry_that_keeps_failing_fails_the_start(proxy: FailingFirst) -> None:
    listed, _ = _base_list()
    proxy.failures = 100
    with pytest.raises(RegistryUnavailable, match="answered 500"):
        _host_image(f"127.0.0.1:{proxy.server_address[1]}/base/debian@{listed}")
    assert proxy.seen == 3
