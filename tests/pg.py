"""Shared fixtures: a real PostgreSQL 15 server and a real S3 endpoint (moto_server), both torn down.

Import the fixtures into a test module: `from tests.pg import postgres, s3  # noqa: F401`.

initdb and postgres refuse to run as root; when the tests run as root, the server's commands run
as the `postgres` OS user (`runuser -u postgres --`) in a temp dir chowned to it. The server listens
on 127.0.0.1 only, on a free port, with its unix socket inside its data dir, password (scram) auth.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sunday_release.runner import run
from tests.conftest import free_port, refuse_in_fast_tier

PG_BIN = Path(os.environ.get("SUNDAY_PG_BIN", "/usr/lib/postgresql/15/bin"))
ADMIN_PASSWORD = "adm1n-Pa55-9f3e"
APP_PASSWORD = "s3cr3t-Pa55-7c1d"  # distinctive, so a leak is found by a plain substring search
BUCKET = "sunday-backups"

SCHEMA = """
CREATE TABLE boards (
    id          BIGSERIAL PRIMARY KEY,
    name        VARCHAR(100) NOT NULL CHECK (length(name) >= 1),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE items (
    id          BIGSERIAL PRIMARY KEY,
    board_id    BIGINT NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    title       VARCHAR(200) NOT NULL CHECK (length(title) >= 1),
    status      TEXT NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'doing', 'done')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE SCHEMA audit;
CREATE TABLE audit.events (id BIGSERIAL PRIMARY KEY, what TEXT NOT NULL);
INSERT INTO boards (name) SELECT 'board ' || g FROM generate_series(1, 3) g;
INSERT INTO items (board_id, title, status)
    SELECT 1 + g % 3, 'item ' || g, (ARRAY['todo', 'doing', 'done'])[1 + g % 3] FROM generate_series(1, 42) g;
INSERT INTO audit.events (what) SELECT 'event ' || g FROM generate_series(1, 5) g;
"""


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Postgres:
    """A running server: `dsn` is the app role (password), `admin_dsn` the superuser (password)."""

    root: Path
    port: int
    dsn: str
    admin_dsn: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    def sql(self, statement: str, dsn: str | None = None) -> list[tuple[object, ...]]:
        with psycopg.connect(dsn or self.dsn, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def dump(self) -> str:
        """`pg_dump` of the database of `dsn`, as SQL text: every row it holds."""
        return run([str(PG_BIN / "pg_dump"), "--no-owner", "-d", self.dsn], timeout=120).stdout

    def stop(self) -> None:
        run(_as_postgres([str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w"]),
            check=False, timeout=60)


def start_postgres(user: str = "sunday", db: str = "sunday", password: str = APP_PASSWORD,
                   schema: bool = True) -> Postgres:
    """initdb + pg_ctl start on a free port of 127.0.0.1, then a role with a password and its database (with the
    sample app's tables unless `schema` is false)."""
    root = Path(tempfile.mkdtemp(prefix="sunday-pg-"))
    port = free_port()
    pg = Postgres(root, port, f"postgresql://{user}:{password}@127.0.0.1:{port}/{db}",
                  f"postgresql://postgres:{ADMIN_PASSWORD}@127.0.0.1:{port}/postgres")
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        pwfile = root / "pwfile"
        pwfile.write_text(ADMIN_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(pg.data), "-U", "postgres", f"--pwfile={pwfile}",
                          "--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"]), timeout=120)
        with (pg.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{pg.data}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        run(_as_postgres([str(PG_BIN / "pg_ctl"), "start", "-D", str(pg.data), "-l", str(root / "server.log"),
                          "-w", "-t", "60"]), timeout=90)
        pg.sql(f"CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{password}'", pg.admin_dsn)
        pg.sql(f"CREATE DATABASE {db} OWNER {user}", pg.admin_dsn)
        if schema:
            pg.sql(SCHEMA)
    except BaseException:
        stop_postgres(pg)
        raise
    return pg


def stop_postgres(pg: Postgres) -> None:
    if (pg.data / "postmaster.pid").exists():
        pg.stop()
    shutil.rmtree(pg.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL 15 server of the module's own with the sample schema; stopped and removed afterwards."""
    refuse_in_fast_tier("PostgreSQL (postgres)")
    pg = start_postgres()
    try:
        yield pg
    finally:
        stop_postgres(pg)


@dataclass(frozen=True)
class S3:
    endpoint_url: str
    bucket: str


def _answers(url: str) -> bool:
    import httpx

    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A real S3 endpoint (`moto_server` on a free port) with an empty bucket; terminated afterwards.

    moto stands in for AWS S3, which cannot run here; the client talks real HTTP to it.
    """
    import boto3

    refuse_in_fast_tier("moto_server (s3)")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-not-a-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-not-a-secret")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("SUNDAY_AWS_CREDENTIALS_BLOCK", raising=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on {url}")
            time.sleep(0.1)
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield S3(url, BUCKET)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
