"""Storage backends: PostgreSQL for real deployments, memory for tests."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, List, Optional, Protocol

from .models import Board, Item


class StoreUnavailable(Exception):
    """The backing database cannot be reached; rendered as HTTP 503."""


class Store(Protocol):
    def ping(self) -> bool: ...

    def list_boards(self) -> List[Board]: ...

    def create_board(self, name: str) -> Board: ...

    def get_board(self, board_id: int) -> Optional[Board]: ...

    def rename_board(self, board_id: int, name: str) -> Optional[Board]: ...

    def delete_board(self, board_id: int) -> bool: ...

    def create_item(self, board_id: int, title: str, status: str) -> Optional[Item]: ...

    def update_item(self, item_id: int, changes: Dict[str, str]) -> Optional[Item]: ...

    def delete_item(self, item_id: int) -> bool: ...


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class MemoryStore:
    """Thread-safe in-process store (unit tests, and runs without DATABASE_URL)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boards: Dict[int, Board] = {}
        self._items: Dict[int, Item] = {}
        self._next_board = 1
        self._next_item = 1

    def ping(self) -> bool:
        return True

    def list_boards(self) -> List[Board]:
        with self._lock:
            boards = sorted(self._boards.values(), key=lambda b: b.id)
            return [Board(b.id, b.name, b.created_at) for b in boards]

    def create_board(self, name: str) -> Board:
        with self._lock:
            board = Board(self._next_board, name, _now())
            self._boards[board.id] = board
            self._next_board += 1
            return Board(board.id, board.name, board.created_at)

    def get_board(self, board_id: int) -> Optional[Board]:
        with self._lock:
            board = self._boards.get(board_id)
            if board is None:
                return None
            items = [
                Item(i.id, i.board_id, i.title, i.status, i.created_at)
                for i in sorted(self._items.values(), key=lambda i: i.id)
                if i.board_id == board_id
            ]
            return Board(board.id, board.name, board.created_at, items)

    def rename_board(self, board_id: int, name: str) -> Optional[Board]:
        with self._lock:
            board = self._boards.get(board_id)
            if board is None:
                return None
            board.name = name
            return Board(board.id, board.name, board.created_at)

    def delete_board(self, board_id: int) -> bool:
        with self._lock:
            if self._boards.pop(board_id, None) is None:
                return False
            for item_id in [i.id for i in self._items.values() if i.board_id == board_id]:
                del self._items[item_id]
            return True

    def create_item(self, board_id: int, title: str, status: str) -> Optional[Item]:
        with self._lock:
            if board_id not in self._boards:
                return None
            item = Item(self._next_item, board_id, title, status, _now())
            self._items[item.id] = item
            self._next_item += 1
            return Item(item.id, item.board_id, item.title, item.status, item.created_at)

    def update_item(self, item_id: int, changes: Dict[str, str]) -> Optional[Item]:
        with self._lock:
            item = self._items.get(item_id)
            if item is None:
                return None
            if "title" in changes:
                item.title = changes["title"]
            if "status" in changes:
                item.status = changes["status"]
            return Item(item.id, item.board_id, item.title, item.status, item.created_at)

    def delete_item(self, item_id: int) -> bool:
        with self._lock:
            return self._items.pop(item_id, None) is not None


class PostgresStore:
    """PostgreSQL store over psycopg2 with a small thread-safe connection pool."""

    def __init__(self, dsn: str, max_connections: int = 10) -> None:
        import psycopg2.pool

        self._dsn = dsn
        # Connections open lazily (the API starts while the database is down) and are then kept:
        # raising minconn after construction keeps up to max_connections idle ones for reuse.
        self._pool = psycopg2.pool.ThreadedConnectionPool(0, max_connections, dsn)
        self._pool.minconn = max_connections
        # More concurrent requests than connections wait for one instead of failing with PoolError.
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        self._in_use = 0  # connections handed out now (the pool's use, for /metrics)
        self._in_use_lock = threading.Lock()

    def connections_in_use(self) -> int:
        return self._in_use

    def _count(self, delta: int) -> None:
        with self._in_use_lock:
            self._in_use += delta

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        import psycopg2

        with self._slots:
            try:
                conn = self._pool.getconn()
            except psycopg2.OperationalError as exc:
                raise StoreUnavailable(str(exc).strip()) from exc
            self._count(1)
            try:
                with self._connection(conn) as cur:
                    yield cur
            finally:
                self._count(-1)

    @contextmanager
    def _connection(self, conn: Any) -> Iterator[Any]:
        import psycopg2

        broken = False
        try:
            with conn:  # commits on success, rolls back on error
                with conn.cursor() as cur:
                    yield cur
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise StoreUnavailable(str(exc).strip()) from exc
        except Exception:
            broken = bool(conn.closed)
            raise
        finally:
            self._pool.putconn(conn, close=broken)

    @staticmethod
    def _ts(value: Any) -> str:
        if isinstance(value, datetime):
            return value.astimezone(timezone.utc).isoformat(timespec="seconds")
        return str(value)

    def _board(self, row: Any) -> Board:
        return Board(int(row[0]), str(row[1]), self._ts(row[2]))

    def _item(self, row: Any) -> Item:
        return Item(int(row[0]), int(row[1]), str(row[2]), str(row[3]), self._ts(row[4]))

    def ping(self) -> bool:
        try:
            with self._cursor() as cur:
                cur.execute("SELECT 1")
                return bool(cur.fetchone()[0] == 1)
        except Exception:
            return False

    def list_boards(self) -> List[Board]:
        with self._cursor() as cur:
            cur.execute("SELECT id, name, created_at FROM boards ORDER BY id")
            return [self._board(row) for row in cur.fetchall()]

    def create_board(self, name: str) -> Board:
        with self._cursor() as cur:
            cur.execute("INSERT INTO boards (name) VALUES (%s) RETURNING id, name, created_at", (name,))
            return self._board(cur.fetchone())

    def get_board(self, board_id: int) -> Optional[Board]:
        with self._cursor() as cur:
            cur.execute("SELECT id, name, created_at FROM boards WHERE id = %s", (board_id,))
            row = cur.fetchone()
            if row is None:
                return None
            board = self._board(row)
            cur.execute(
                "SELECT id, board_id, title, status, created_at FROM items WHERE board_id = %s ORDER BY id",
                (board_id,),
            )
            board.items = [self._item(r) for r in cur.fetchall()]
            return board

    def rename_board(self, board_id: int, name: str) -> Optional[Board]:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE boards SET name = %s WHERE id = %s RETURNING id, name, created_at", (name, board_id)
            )
            row = cur.fetchone()
            return None if row is None else self._board(row)

    def delete_board(self, board_id: int) -> bool:
        with self._cursor() as cur:
            cur.execute("DELETE FROM boards WHERE id = %s", (board_id,))
            return bool(cur.rowcount > 0)

    def create_item(self, board_id: int, title: str, status: str) -> Optional[Item]:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO items (board_id, title, status) SELECT id, %s, %s FROM boards WHERE id = %s "
                "RETURNING id, board_id, title, status, created_at",
                (title, status, board_id),
            )
            row = cur.fetchone()
            return None if row is None else self._item(row)

    def update_item(self, item_id: int, changes: Dict[str, str]) -> Optional[Item]:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE items SET title = COALESCE(%s, title), status = COALESCE(%s, status) "
                "WHERE id = %s RETURNING id, board_id, title, status, created_at",
                (changes.get("title"), changes.get("status"), item_id),
            )
            row = cur.fetchone()
            return None if row is None else self._item(row)

    def delete_item(self, item_id: int) -> bool:
        with self._cursor() as cur:
            cur.execute("DELETE FROM items WHERE id = %s", (item_id,))
            return bool(cur.rowcount > 0)


def store_from_env(database_url: Optional[str]) -> Store:
    if database_url:
        return PostgresStore(database_url)
    return MemoryStore()
