"""Two workers on one machine share each environment's release record (issue 13): one deploy sequence, many checks.

Worker A is this test process's SUNDAY_HOME; worker B has a SUNDAY_HOME of its own and another host
name (`unshare --uts` + HOSTNAME) and runs the installed `sunday-release` CLI. Both see the machine's
SUNDAY_ENV_ROOT and SUNDAY_DB_ROOT, so the environment's database is the one copy of its history.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.conftest import APP, ROOT
from tests.test_cd import Env, ci_passed, deploy, status

pytestmark = pytest.mark.docker

SUNDAY_RELEASE = str(Path(sys.executable).parent / "sunday-release")
WORKER_B = "worker-b"


def as_worker_b(home: Path, env: Env, *args: str, api: str | None = None) -> subprocess.CompletedProcess[str]:
    """`sunday-release ARGS` as worker B: its own SUNDAY_HOME and host name, this machine's environments."""
    full_env = {**os.environ, **env.env, "SUNDAY_HOME": str(home), "HOSTNAME": WORKER_B}
    if api:
        full_env["PREFECT_API_URL"] = api
    return subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', WORKER_B, *args],
                          capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=900, check=False)


def outcomes(st: dict[str, object]) -> list[tuple[int, str, str]]:
    return [(h["revision"], h["outcome"], h["version"]) for h in st["history"]]  # type: ignore[union-attr,index]


def test_a_second_worker_sees_rolls_back_and_continues_the_release_history(
        prefect_api: str, docker_engine: str, make_repo: Callable[..., Path], git: Callable[..., str],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env()
    home_b = tmp_path / "worker-b-home"
    try:
        repo = make_repo(APP, edit=env.edit)
        v1 = ci_passed(repo, prefect_api, git)
        index = repo / "frontend" / "public" / "index.html"
        index.write_text(index.read_text().replace("</title>", " v2</title>", 1))
        git(repo, "commit", "-qam", "v2")
        v2 = ci_passed(repo, prefect_api, git)
        for version in (v1, v2):  # worker A
            done = deploy(env, repo, version, prefect_api)
            assert done.returncode == 0, done.stderr
        assert not (Path(os.environ["SUNDAY_HOME"]) / "projects").exists()  # nothing of it under A's SUNDAY_HOME
        stale_state, stale_config = (env.home / "state.json").read_text(), (env.home / "config.json").read_text()

        hostname = as_worker_b(home_b, env, "hostname")
        assert hostname.stdout.strip() == WORKER_B != socket.gethostname(), hostname.stderr
        seen = as_worker_b(home_b, env, SUNDAY_RELEASE, "status", "--env", env.name, "--project", env.project,
                           "--json")
        assert seen.returncode == 0, seen.stderr
        st = json.loads(seen.stdout)
        assert (st["live_color"], st["revision"], st["version"], st["serving"]) == ("green", 2, v2, True)
        assert outcomes(st) == [(1, "superseded", v1), (2, "live", v2)]

        back = as_worker_b(home_b, env, SUNDAY_RELEASE, "rollback", "--env", env.name, "--json", api=prefect_api)
        assert back.returncode == 0, back.stderr
        st = status(env)  # worker A
        assert (st["live_color"], st["revision"], st["version"]) == ("blue", 3, v1)
        assert outcomes(st)[-1] == (3, "live", v1)

        again = as_worker_b(home_b, env, SUNDAY_RELEASE, "cd", "--env", env.name, "--version", v2, "--repo",
                            str(repo), "--json", api=prefect_api)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["revision"] == 4
        assert not (home_b / "projects").exists()  # B kept nothing of the environment in its SUNDAY_HOME

        # the database's copy beats a stale cache (what the files held after revision 2)
        (env.home / "state.json").write_text(stale_state)
        from sunday_release.config import PipelineConfig

        cached = PipelineConfig.model_validate_json(stale_config)
        changed = cached.environments[env.name].model_copy(update={"watch_seconds": 999})
        (env.home / "config.json").write_text(cached.model_copy(update={
            "environments": {**cached.environments, env.name: changed}}).model_dump_json())
        st = status(env)
        assert (st["live_color"], st["revision"], st["version"]) == ("green", 4, v2)
        assert outcomes(st) == [(1, "superseded", v1), (2, "superseded", v2), (3, "superseded", v1), (4, "live", v2)]
        monkeypatch.setenv("SUNDAY_DB_ROOT", str(env.db_root))
        from flows.cd import saved_config, target_for

        config = saved_config(env.name, env.project)
        assert config.environments[env.name].watch_seconds == 2  # the database's, not the cache's 999

        # the application's role reaches its own database, never the record's
        target = target_for(config, env.name)
        with psycopg.connect(target.db.dsn(), connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("sunday",)
        with pytest.raises(psycopg.OperationalError, match='permission denied for database "sunday_release"'):
            psycopg.connect(target.db.dsn().rsplit("/", 1)[0] + "/sunday_release", connect_timeout=10)

        # a value the database refuses is bad input: quoted neither in the error nor in the server's log
        from sunday_release.errors import InputError
        from sunday_release.settings import Settings
        from sunday_release.targets import make_target

        canary = f"canary-{secrets.token_hex(8)}"
        bad = make_target(config.model_copy(update={"release_tags": f"^{canary}\x00$"}), env.name, Settings.from_env())
        with pytest.raises(InputError, match=r"PostgreSQL refused a value of the config \(SQLSTATE 22P05\); nothing "
                                             r"was written") as refused:
            bad.save_config()
        assert canary not in str(refused.value)
        assert canary not in (target.db.data / "server.log").read_text(errors="replace")
        assert canary not in (env.home / "config.json").read_text()  # neither is the cache touched
        assert saved_config(env.name, env.project).release_tags == config.release_tags
    finally:
        env.teardown()
        shutil.rmtree(home_b, ignore_errors=True)
