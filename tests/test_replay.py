"""The replay store (pure, stdlib SQLite): claim / confirm / release, restarts, expiry, the bound, file modes,
and concurrent threads and processes."""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sunday_release.errors import InputError
from sunday_release.replay import DEFAULT_MAX_ENTRIES, DEFAULT_TTL, ReplayStore, body_key, default_store_path


class Clock:
    """A unix clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "webhook" / "seen.sqlite3"


def test_body_key_is_the_sha256_of_the_raw_body() -> None:
    assert body_key(b"Hello, World!") == hashlib.sha256(b"Hello, World!").hexdigest()
    assert body_key(b'{"a": 1}') != body_key(b'{"a":1}')  # the signed bytes, not the JSON they parse to


def test_the_default_store_is_under_sunday_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUNDAY_HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / "webhook" / "seen.sqlite3"
    assert (DEFAULT_TTL, DEFAULT_MAX_ENTRIES) == (7 * 24 * 3600, 100_000)


def test_a_key_is_claimed_once(path: Path) -> None:
    with ReplayStore(path) as store:
        assert store.claim("k1")
        assert not store.claim("k1")  # pending: a concurrent duplicate is refused too
        store.confirm("k1")
        assert not store.claim("k1")
        assert "k1" in store and "k2" not in store and len(store) == 1


def test_a_released_key_can_be_claimed_again(path: Path) -> None:
    with ReplayStore(path) as store:
        assert store.claim("k1")
        store.release("k1")
        assert "k1" not in store
        assert store.claim("k1")


def test_claims_survive_a_restart(path: Path) -> None:
    with ReplayStore(path) as store:
        assert store.claim("k1")
        store.confirm("k1")
    with ReplayStore(path) as reopened:
        assert not reopened.claim("k1")
        assert reopened.claim("k2")


def test_a_key_expires_after_the_ttl(path: Path) -> None:
    clock = Clock()
    with ReplayStore(path, ttl=3600, clock=clock) as store:
        assert store.claim("old")
        store.confirm("old")
        clock.now += 3599
        assert not store.claim("old") and "old" in store
        clock.now += 2
        assert "old" not in store
        assert store.claim("old")  # past the expiry it is new again (CD's version guard stops a deploy)
        assert len(store) == 1  # the expired row was deleted, not kept beside the new one


def test_a_pending_claim_of_a_receiver_that_died_lapses(path: Path) -> None:
    clock = Clock()
    with ReplayStore(path, pending_timeout=300, clock=clock) as store:
        assert store.claim("crashed")  # never confirmed nor released
        assert store.claim("emitted")
        store.confirm("emitted")
        clock.now += 301
        assert store.claim("crashed")
        assert not store.claim("emitted")


def test_the_store_is_bounded_and_forgets_the_oldest_first(path: Path) -> None:
    with ReplayStore(path, max_entries=5) as store:
        for i in range(5):
            assert store.claim(f"k{i}")
            store.confirm(f"k{i}")
        assert not store.claim("k0")  # a duplicate does not make it younger
        assert store.claim("k5")
        assert len(store) == 5
        assert "k0" not in store and all(f"k{i}" in store for i in range(1, 6))
        assert store.claim("k0")


def test_file_and_directory_modes(path: Path) -> None:
    with ReplayStore(path) as store:
        store.claim("k")
        assert sorted(p.name for p in path.parent.iterdir()) == ["seen.sqlite3", "seen.sqlite3-shm",
                                                                  "seen.sqlite3-wal"]
        for file in path.parent.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    ReplayStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # put back on open


def test_an_existing_directory_is_used_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ReplayStore(tmp_path / "seen.sqlite3").close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755  # e.g. a directory the operator chose


def test_concurrent_threads_claim_a_key_once(path: Path) -> None:
    with ReplayStore(path) as store:
        results: list[bool] = []
        barrier = threading.Barrier(16)

        def claim() -> None:
            barrier.wait()
            results.append(store.claim("same"))

        threads = [threading.Thread(target=claim) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert sorted(results) == [False] * 15 + [True]


def test_two_processes_on_one_file_claim_a_key_once(path: Path) -> None:
    ReplayStore(path).close()
    code = ("import sys\nfrom pathlib import Path\nfrom sunday_release.replay import ReplayStore\n"
            "store = ReplayStore(Path(sys.argv[1]))\n"
            "print(sum(store.claim(f'k{i}') for i in range(200)))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    won = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(won) == 200  # every key claimed by exactly one process
    with ReplayStore(path) as store:
        assert len(store) == 200


@pytest.mark.parametrize(("options", "problem"), [
    ({"ttl": 0}, "ttl"),
    ({"max_entries": 0}, "max_entries"),
])
def test_bad_limits_are_input_errors(path: Path, options: dict[str, float], problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        ReplayStore(path, **options)  # type: ignore[arg-type]


def test_a_file_that_is_not_a_store_is_an_input_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a sqlite database, " * 100)
    with pytest.raises(InputError, match="cannot open it"):
        ReplayStore(path)
