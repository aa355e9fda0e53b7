from __future__ import annotations

import http.client
import json
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from sunday_api.models import Board
from sunday_api.server import make_server
from sunday_api.store import MemoryStore, StoreUnavailable


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> Tuple[int, Any, Dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            hdrs = {"Content-Type": "application/json"}
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            text = resp.read()
            payload = json.loads(text) if text else None
            return resp.status, payload, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()


class Unready(MemoryStore):
    def ping(self) -> bool:
        raise RuntimeError("db down")

    def list_boards(self) -> List[Board]:
        raise StoreUnavailable("connection refused")


def _serve(store: MemoryStore, version: str = "1.2.3") -> Iterator[Client]:
    server = make_server(store, version, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Client(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def client(store: MemoryStore) -> Iterator[Client]:
    yield from _serve(store)


@pytest.fixture
def unready_client() -> Iterator[Client]:
    yield from _serve(Unready())
