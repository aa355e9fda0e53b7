"""`kill -9` of a deploy at any step, then a re-run: one color live and serving, never none.

The killed run's slot of the environment's concurrency limit is a lease: the re-run waits until it
expires (at most about a minute), then reconciles.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import APP, DOCKER, ROOT, _git
from tests.test_cd import Env, ci_passed, deploy, status

pytestmark = pytest.mark.docker


def _deploy_and_kill(env: Env, repo: Path, version: str, api: str, marker: str) -> str:
    """Start `cd` and SIGKILL it as soon as its progress shows `marker`; return what it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "cd", "--env", env.name, "--version",
                             version, "--repo", str(repo)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env.env, "PREFECT_API_URL": api})
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


@pytest.fixture(scope="module")
def two_versions(prefect_api: str, docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Path, str, str, Env]]:
    """One repository with two versions that passed CI (built once for every kill point)."""
    env = Env()
    repo = tmp_path_factory.mktemp("crash") / "repo"
    shutil.copytree(APP, repo, ignore=shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache"))
    env.edit(repo)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "v1"]):
        _git(repo, *args)
    v1 = ci_passed(repo, prefect_api, _git)
    index = repo / "frontend" / "public" / "index.html"
    index.write_text(index.read_text().replace("</title>", " v2</title>", 1))
    _git(repo, "commit", "-qam", "v2")
    v2 = ci_passed(repo, prefect_api, _git)
    yield repo, v1, v2, env
    env.teardown()


@pytest.mark.parametrize("marker", ["migrate[backend]", "start[green]", "switch[green]"])
def test_a_killed_deploy_leaves_one_color_serving_and_a_rerun_completes(
        prefect_api: str, two_versions: tuple[Path, str, str, Env], marker: str) -> None:
    repo, v1, v2, shared = two_versions
    env = Env()
    env.port, env.db_port = shared.port, shared.db_port  # the repository's config names these ports
    env.name = shared.name
    try:
        assert deploy(env, repo, v1, prefect_api).returncode == 0

        _deploy_and_kill(env, repo, v2, prefect_api, marker)
        assert httpx.get(f"{env.url}/api/boards").status_code == 200  # something still serves

        again = deploy(env, repo, v2, prefect_api)
        assert again.returncode == 0, again.stderr
        st = status(env)
        assert st["serving"] is True and st["version"] == v2
        live = st["live_color"]
        running = subprocess.run([DOCKER, "ps", "--format", "{{.Label \"sunday.color\"}}", "--filter",
                                  f"label=sunday.project={env.project}", "--filter", f"label=sunday.env={env.name}"],
                                 capture_output=True, text=True, check=True)
        assert set(running.stdout.split()) == {live}  # exactly one color runs
        outcomes = [h["outcome"] for h in st["history"]]  # type: ignore[union-attr,index]
        assert outcomes[-1] == "live" and outcomes.count("live") == 1
        assert "in-progress" not in outcomes, json.dumps(st["history"])
    finally:
        env.teardown()  # the next kill point starts from an empty environment of the same name
