"""What the test harness itself leaves behind: nothing."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os


def _home_seen_by_a_spawned_helper() -> tuple[str, bool]:
    import tests.conftest as conftest  # what unpickling a test module's function imports in the helper

    return str(conftest._HOME), conftest._HOME.exists()


def test_a_process_a_test_spawns_takes_the_tests_home_and_makes_none() -> None:
    """multiprocessing's spawn re-imports the test's modules (and so this conftest) in each helper: a helper that
    made a home of its own would leave a /tmp/sunday-tests-* behind, since only pytest's session removes one."""
    before = set(os.listdir("/tmp"))
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        home, exists = pool.submit(_home_seen_by_a_spawned_helper).result(timeout=120)
    from tests.conftest import _HOME

    assert (home, exists) == (str(_HOME), True)
    made = {name for name in set(os.listdir("/tmp")) - before if name.startswith("sunday-tests-")}
    assert not made, f"a spawned helper made {made}"
