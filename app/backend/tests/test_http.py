from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.conftest import Client


def test_healthz_reports_version(client: Client) -> None:
    status, body, headers = client.request("GET", "/healthz")
    assert status == 200
    assert body == {"status": "ok", "version": "1.2.3"}
    assert headers["content-type"] == "application/json"


def test_readyz_ok(client: Client) -> None:
    assert client.request("GET", "/readyz")[:2] == (200, {"status": "ready"})


def test_readyz_unavailable_when_db_fails(unready_client: Client) -> None:
    assert unready_client.request("GET", "/readyz")[:2] == (503, {"status": "unavailable"})
    # liveness does not depend on the database
    assert unready_client.request("GET", "/healthz")[0] == 200


def test_database_outage_is_503_json(unready_client: Client) -> None:
    assert unready_client.request("GET", "/api/boards")[:2] == (503, {"error": "database unavailable"})


def test_create_and_list_boards(client: Client) -> None:
    status, board, _ = client.request("POST", "/api/boards", {"name": "Sprint 1"})
    assert status == 201
    assert board["name"] == "Sprint 1" and isinstance(board["id"], int)
    status, body, _ = client.request("GET", "/api/boards")
    assert status == 200
    assert [b["name"] for b in body["boards"]] == ["Sprint 1"]


def test_board_detail_includes_items(client: Client) -> None:
    _, board, _ = client.request("POST", "/api/boards", {"name": "B"})
    status, item, _ = client.request("POST", f"/api/boards/{board['id']}/items", {"title": "Do it"})
    assert status == 201 and item["status"] == "todo" and item["board_id"] == board["id"]
    status, detail, _ = client.request("GET", f"/api/boards/{board['id']}")
    assert status == 200
    assert [i["title"] for i in detail["items"]] == ["Do it"]


def test_rename_board(client: Client) -> None:
    _, board, _ = client.request("POST", "/api/boards", {"name": "Old"})
    status, body, _ = client.request("PATCH", f"/api/boards/{board['id']}", {"name": "New"})
    assert (status, body["name"]) == (200, "New")


def test_edit_and_delete_item(client: Client) -> None:
    _, board, _ = client.request("POST", "/api/boards", {"name": "B"})
    _, item, _ = client.request("POST", f"/api/boards/{board['id']}/items", {"title": "x", "status": "doing"})
    status, body, _ = client.request("PATCH", f"/api/items/{item['id']}", {"title": "y", "status": "done"})
    assert status == 200 and (body["title"], body["status"]) == ("y", "done")
    status, body, _ = client.request("DELETE", f"/api/items/{item['id']}")
    assert (status, body) == (204, None)
    assert client.request("DELETE", f"/api/items/{item['id']}")[0] == 404


def test_delete_board_removes_it(client: Client) -> None:
    _, board, _ = client.request("POST", "/api/boards", {"name": "Gone"})
    assert client.request("DELETE", f"/api/boards/{board['id']}")[0] == 204
    status, body, _ = client.request("GET", f"/api/boards/{board['id']}")
    assert status == 404 and body == {"error": "board not found"}


def test_validation_error_is_400_json(client: Client) -> None:
    status, body, _ = client.request("POST", "/api/boards", {"name": "x" * 101})
    assert status == 400 and "name" in body["error"]
    _, board, _ = client.request("POST", "/api/boards", {"name": "B"})
    path = f"/api/boards/{board['id']}/items"
    status, body, _ = client.request("POST", path, {"title": "t", "status": "nope"})
    assert status == 400 and "status" in body["error"]


def test_bad_json_is_400(client: Client) -> None:
    status, body, _ = client.request("POST", "/api/boards", raw=b"{not json")
    assert status == 400 and body == {"error": "invalid JSON body"}


def test_item_on_unknown_board_is_404(client: Client) -> None:
    assert client.request("POST", "/api/boards/4242/items", {"title": "t"})[0] == 404


def test_unknown_path_is_404_json(client: Client) -> None:
    status, body, _ = client.request("GET", "/nope")
    assert status == 404 and "error" in body


def test_wrong_method_is_405_with_allow(client: Client) -> None:
    status, body, headers = client.request("DELETE", "/api/boards")
    assert status == 405 and body == {"error": "method not allowed"}
    assert headers["allow"] == "GET, POST"


def test_oversized_body_is_413(client: Client) -> None:
    raw = b'{"name": "' + b"x" * (64 * 1024) + b'"}'
    status, body, _ = client.request("POST", "/api/boards", raw=raw)
    assert status == 413 and "error" in body


def test_non_numeric_id_is_404(client: Client) -> None:
    assert client.request("GET", "/api/boards/abc")[0] == 404


def test_query_string_is_ignored_for_routing(client: Client) -> None:
    assert client.request("GET", "/healthz?probe=1")[0] == 200


def test_request_is_logged_to_stderr_as_json(client: Client, capfd: pytest.CaptureFixture[str]) -> None:
    client.request("GET", "/healthz?x=1")
    seen = ""
    deadline = time.monotonic() + 30  # the server thread logs right after replying; 30 s only bounds a hang
    while time.monotonic() < deadline:
        seen += capfd.readouterr().err
        if '"path": "/healthz"' in seen:
            break
        time.sleep(0.01)
    line = json.loads(next(li for li in seen.splitlines() if '"path": "/healthz"' in li))
    fields = ("level", "msg", "method", "route", "status", "version")
    assert {k: line[k] for k in fields} == {"level": "info", "msg": "request", "method": "GET",
                                            "route": "/healthz", "status": 200, "version": "1.2.3"}
    assert line["duration_ms"] >= 0 and line["time"].endswith("+00:00")


def test_keep_alive_connection_serves_multiple_requests(client: Client) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()
