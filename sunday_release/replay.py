"""The webhook receiver's replay store: signed bodies already accepted, in a SQLite file that survives restarts.

A webhook's signature covers its body only, so anyone who captured one signed push can send it again
with a fresh `X-GitHub-Delivery` header. The receiver therefore deduplicates on the SHA-256 of the
raw body (`body_key`), the part the signature covers. `ReplayStore` remembers those keys in
`SUNDAY_HOME/webhook/seen.sqlite3` (directory 0700, file 0600), bounded (`max_entries`, oldest
forgotten first) and with expiry (`ttl`). Bodies older than the expiry are not this store's job: CD
refuses to deploy a version older than the live one.

A key goes through two states: `claim` records it as *pending* while the receiver emits the event;
`confirm` makes it *done*; `release` forgets it when the emit failed, so the sender's redelivery is
accepted. A pending key whose receiver died mid-emit is forgotten after `pending_timeout`.
No Prefect here: this module is stdlib only and has its own tests (tests/test_replay.py).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from sunday_release.errors import InputError

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_TTL",
    "STORE_FILE",
    "ReplayStore",
    "body_key",
    "default_store_path",
]

STORE_FILE = "seen.sqlite3"
DEFAULT_TTL = 7 * 24 * 3600.0  # seconds a body stays refused after it was accepted
DEFAULT_MAX_ENTRIES = 100_000
PENDING_TIMEOUT = 300.0  # an emit takes seconds; a pending key this old belongs to a receiver that died

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: the oldest are evicted first
    key     TEXT NOT NULL UNIQUE,               -- hex SHA-256 of the raw body
    seen_at REAL NOT NULL,                      -- unix time of the claim
    done    INTEGER NOT NULL DEFAULT 0          -- 0 while the event is being emitted, 1 once it was
);
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (seen_at);
CREATE INDEX IF NOT EXISTS pending_by_time ON seen (seen_at) WHERE done = 0;
"""


def body_key(body: bytes) -> str:
    """The deduplication key of a delivery: the hex SHA-256 of its raw (signed) body."""
    return hashlib.sha256(body).hexdigest()


def default_store_path() -> Path:
    """`SUNDAY_HOME/webhook/seen.sqlite3` (SUNDAY_HOME defaults to ~/.sunday-release)."""
    home = Path(os.environ.get("SUNDAY_HOME", Path.home() / ".sunday-release")).expanduser()
    return home / "webhook" / STORE_FILE


class ReplayStore:
    """Keys of accepted bodies in a SQLite file; every method is atomic across threads and processes.

    Args:
        path: the SQLite file; its directory is created with mode 0700, the file with 0600.
        ttl: seconds a claimed key is remembered.
        max_entries: at most this many keys are kept; the oldest are forgotten first.
        pending_timeout: seconds after which a claim never confirmed nor released is forgotten.
        clock: unix time (tests move it).

    Raises:
        InputError: a limit is not positive, or the file cannot be opened as the store.
    """

    def __init__(self, path: Path, *, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 pending_timeout: float = PENDING_TIMEOUT, clock: Callable[[], float] = time.time) -> None:
        if not ttl > 0:
            raise InputError(f"replay ttl: expected a positive number of seconds, got {ttl}")
        if max_entries < 1:
            raise InputError(f"replay max_entries: expected a positive number, got {max_entries}")
        self.path = path
        self.ttl = ttl
        self.max_entries = max_entries
        self.pending_timeout = pending_timeout
        self._clock = clock
        self._lock = threading.Lock()
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(mode=0o700, parents=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)  # SQLite gives its -wal and -shm files the database file's mode
            # One connection shared by the receiver's threads under self._lock; isolation_level=None so
            # that the transactions below are exactly the BEGIN IMMEDIATE … COMMIT written here.
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            # WAL with synchronous=NORMAL: a commit survives the receiver's crash at once and the machine's
            # power loss after the next checkpoint, at ~1 ms a claim instead of two fsyncs (~30 ms).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise InputError(f"replay store {path}: cannot open it: {exc}") from None

    def claim(self, key: str) -> bool:
        """Record `key` as pending; False if it is already remembered (done, or pending elsewhere)."""
        now = self._clock()
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM seen WHERE seen_at < ?", (now - self.ttl,))
            self._db.execute("DELETE FROM seen WHERE done = 0 AND seen_at < ?", (now - self.pending_timeout,))
            inserted = self._db.execute("INSERT INTO seen (key, seen_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                                        (key, now)).rowcount == 1
            if inserted:
                (count,) = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()
                if count > self.max_entries:
                    self._db.execute("DELETE FROM seen WHERE id IN (SELECT id FROM seen ORDER BY id LIMIT ?)",
                                     (count - self.max_entries,))
            return inserted

    def confirm(self, key: str) -> None:
        """The event for `key` was emitted: remember it until it expires."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE seen SET done = 1 WHERE key = ?", (key,))

    def release(self, key: str) -> None:
        """Forget `key` (its event could not be emitted), so that a redelivery is accepted."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM seen WHERE key = ?", (key,))

    def __contains__(self, key: object) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM seen WHERE key = ? AND seen_at >= ?",
                                   (key, self._clock() - self.ttl)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE (the write lock at once, so that processes sharing the file serialise) … COMMIT."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
