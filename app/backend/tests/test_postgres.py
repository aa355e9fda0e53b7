"""The PostgreSQL store and the API on it, against the database of DATABASE_URL.

`sunday-release dev up` writes it to .env.dev (README.md). Skipped without one: the pipeline's CI runs these
tests in the image, with no database.
"""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from sunday_api import migrate
from sunday_api.store import PostgresStore

from tests.conftest import Client, _serve

DATABASE_URL = os.environ.get("DATABASE_URL", "")
pytestmark = pytest.mark.skipif(not DATABASE_URL, reason="no DATABASE_URL (sunday-release dev up, README.md)")


@pytest.fixture(scope="module")
def pg() -> PostgresStore:
    import psycopg2

    conn = psycopg2.connect(DATABASE_URL)
    try:
        migrate.apply_all(conn, migrate.discover())
        assert migrate.apply_all(conn, migrate.discover()) == []  # idempotent
    finally:
        conn.close()
    return PostgresStore(DATABASE_URL, max_connections=2)


@pytest.fixture
def pg_client(pg: PostgresStore) -> Iterator[Client]:
    yield from _serve(pg)  # type: ignore[arg-type]


def test_board_and_items_round_trip(pg: PostgresStore) -> None:
    name = f"board {uuid.uuid4().hex[:8]}"
    board = pg.create_board(name)
    item = pg.create_item(board.id, "write the migration", "todo")
    assert item is not None
    updated = pg.update_item(item.id, {"status": "done"})
    assert updated is not None and updated.status == "done"
    got = pg.get_board(board.id)
    assert got is not None and got.name == name and got.items is not None
    assert [(i.title, i.status) for i in got.items] == [("write the migration", "done")]
    assert pg.delete_board(board.id) is True
    assert pg.get_board(board.id) is None and pg.update_item(item.id, {"status": "todo"}) is None


def test_api_is_ready_and_serves_boards(pg_client: Client) -> None:
    assert pg_client.request("GET", "/readyz")[:2] == (200, {"status": "ready"})
    status, created, _ = pg_client.request("POST", "/api/boards", {"name": "from the API"})
    assert status == 201
    status, boards, _ = pg_client.request("GET", "/api/boards")
    assert status == 200 and created["id"] in [b["id"] for b in boards["boards"]]
    assert pg_client.request("DELETE", f"/api/boards/{created['id']}")[0] == 204
