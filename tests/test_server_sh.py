"""`make server`'s settings from the environment are checked before anything starts (infra/local/server.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _server_sh(action: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "infra" / "local" / "server.sh"), action], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "SUNDAY_PLATFORM_DIR": str(tmp_path / "platform"),
                                                      **env})


@pytest.mark.parametrize("seconds", ["0", "0.0", "0.05", "61", "60.5", ".5", "1.", "05", "-1", " 1", "1;id", "$(id)",
                                     "abc", "1.2.3", "1e3"])
def test_a_worker_query_interval_out_of_range_is_refused_before_anything_starts(seconds: str, tmp_path: Path) -> None:
    done = _server_sh("start", tmp_path, SUNDAY_WORKER_QUERY_SECONDS=seconds)
    assert done.returncode == 2
    assert f"SUNDAY_WORKER_QUERY_SECONDS: expected seconds from 0.1 to 60 (e.g. 1, 0.5), got '{seconds}'" \
        in done.stderr, done.stderr
    assert not (tmp_path / "platform").exists()  # nothing started


@pytest.mark.parametrize("seconds", ["", "0.1", "0.5", "1", "2", "59.999", "60"])
def test_a_worker_query_interval_in_range_is_taken(seconds: str, tmp_path: Path) -> None:
    done = _server_sh("no-such-action", tmp_path, SUNDAY_WORKER_QUERY_SECONDS=seconds)  # past the checks, no start
    assert done.returncode == 2 and "usage:" in done.stderr and "SUNDAY_WORKER_QUERY_SECONDS" not in done.stderr
