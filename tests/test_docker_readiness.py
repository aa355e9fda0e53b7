"""Readiness on the docker target: a replica is ready when its `health_path` answers 2xx from the host."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sunday_release.targets.docker import answers
from tests.conftest import free_port


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/healthz": 200, "/down": 503, "/moved": 301}.get(self.path, 404)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        if code == 301:
            self.send_header("Location", "/healthz")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_2xx_is_ready_anything_else_is_not(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy of the environment is never asked
    monkeypatch.setenv("NO_PROXY", "")
    assert answers(endpoint, "/healthz")
    assert not answers(endpoint, "/down")  # 503: up but not ready
    assert not answers(endpoint, "/missing")  # 404: the wrong path is not a health check
    assert not answers(endpoint, "/moved")  # a redirect is not followed: the path itself must answer


def test_nothing_listening_is_not_ready() -> None:
    assert not answers(f"127.0.0.1:{free_port()}", "/healthz")
