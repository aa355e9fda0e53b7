from __future__ import annotations

import http.client
import re
import threading
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from sunday_api.server import ROUTES, make_server, route_name, route_of
from sunday_api.store import PostgresStore

from .conftest import Client


def _get_all(port: int, requests: List[Tuple[str, str]]) -> str:
    """The requests, then GET /metrics, on one keep-alive connection: each is counted before the next
    is read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for method, path in requests:
            conn.request(method, path, body=b'{"name": "x"}' if method == "POST" else None,
                         headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        return response.read().decode()
    finally:
        conn.close()


def _samples(text: str, name: str) -> Dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{name}(\{{.*\}}) (\S+)$", text, re.M)}


def test_requests_are_counted_by_route_pattern_and_status(client: Client) -> None:
    text = _get_all(client.port, [("GET", "/api/boards"), ("POST", "/api/boards"), ("GET", "/api/boards/1"),
                                  ("GET", "/api/boards/999"), ("GET", "/no/such/path"),
                                  ("GET", "/wp-admin.php")])
    counts = _samples(text, "http_requests_total")
    assert counts == {
        '{method="GET",route="/api/boards",status="200"}': 1.0,
        '{method="POST",route="/api/boards",status="201"}': 1.0,
        '{method="GET",route="/api/boards/{board_id}",status="200"}': 1.0,
        '{method="GET",route="/api/boards/{board_id}",status="404"}': 1.0,
        '{method="GET",route="unmatched",status="404"}': 2.0,  # any path no route takes: one series
    }
    durations = _samples(text, "http_request_duration_seconds_count")
    assert durations['{method="GET",route="unmatched"}'] == 2.0
    buckets = _samples(text, "http_request_duration_seconds_bucket")
    assert '{le="0.5",method="GET",route="/api/boards"}' in buckets


def test_the_scrape_is_not_counted_and_the_memory_store_has_no_pool(client: Client) -> None:
    _get_all(client.port, [])
    text = _get_all(client.port, [])
    assert _samples(text, "http_requests_total") == {}
    assert "db_pool" not in text


def test_server_errors_are_counted_as_5xx(unready_client: Client) -> None:
    text = _get_all(unready_client.port, [("GET", "/readyz"), ("GET", "/api/boards")])
    counts = _samples(text, "http_requests_total")
    assert counts['{method="GET",route="/readyz",status="503"}'] == 1.0
    assert counts['{method="GET",route="/api/boards",status="503"}'] == 1.0


def test_every_route_has_a_name_without_regex() -> None:
    names = [route_of(pattern) for pattern, _ in ROUTES]
    assert "/api/items/{item_id}" in names and "/api/boards/{board_id}/items" in names
    assert all(not set(name) & set("()?<>^$\\") for name in names)
    assert route_name("/api/boards/12/items") == "/api/boards/{board_id}/items"
    assert route_name("/api/boards/12/items/x") == "unmatched"


class _Cursor:
    def __enter__(self) -> "_Cursor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class _Connection:
    closed = 0

    def __enter__(self) -> "_Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def cursor(self) -> _Cursor:
        return _Cursor()


@pytest.fixture
def pooled() -> Iterator[Tuple[PostgresStore, Client]]:
    """A PostgresStore on a database nobody serves (its pool connects lazily), behind a server."""
    store = PostgresStore("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1", max_connections=4)
    server = make_server(store, "1", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield store, Client(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_the_pool_reports_connections_in_use(pooled: Tuple[PostgresStore, Client],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, client = pooled
    text = _get_all(client.port, [("GET", "/api/boards")])  # the database refuses: 503, nothing left in use
    assert _samples(text, "http_requests_total")['{method="GET",route="/api/boards",status="503"}'] == 1.0
    assert _samples(text, "db_pool_connections") == {'{state="in_use"}': 0.0}
    assert "db_pool_max_connections 4.0" in text
    monkeypatch.setattr(store._pool, "getconn", lambda: _Connection())
    monkeypatch.setattr(store._pool, "putconn", lambda conn, close=False: None)
    with store._cursor():
        with store._cursor():
            assert store.connections_in_use() == 2
        assert store.connections_in_use() == 1
    with pytest.raises(RuntimeError):
        with store._cursor():
            raise RuntimeError("a query failed")
    assert store.connections_in_use() == 0
