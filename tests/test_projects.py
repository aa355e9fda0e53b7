"""Two projects on one machine, each with a `staging`: isolated environments, port ownership, one run per env."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import APP, DOCKER, ROOT, _git
from tests.test_cd import Env, ci_passed, deploy, status
from tests.test_ci_flow import CLI, sunday

K6 = str(Path(sys.executable).parent / "k6")
SCRIPT = ROOT / "infra" / "local" / "k6" / "constant_load.js"


# --- fast: the port registry and which project a command means (no Docker) ------------------------------------


def _target(home: Path, project: str, port: int, db_port: int | None = None, env: str = "staging") -> Any:
    from sunday_release.config import parse_config
    from sunday_release.targets.docker import DockerTarget

    config = parse_config({"project": project, "services": {"api": {"context": "api", "port": 8000, "route": "/"}},
                           "environments": {env: {"port": port, **({"db_port": db_port} if db_port else {})}}})
    return DockerTarget(config, env, config.environments[env], home, "docker", home / "db", env_root=home / "envs")


def test_a_port_of_another_environment_is_refused_naming_its_owner(tmp_path: Path) -> None:
    from sunday_release.errors import ConfigError

    _target(tmp_path, "shop", 8081).claim_ports()
    _target(tmp_path, "shop", 8081).claim_ports()  # the same environment again: its own ports
    with pytest.raises(ConfigError, match=r"environments\.staging\.port: port 8081 is already used by environment "
                                          r"shop/staging on this machine; nothing was stopped"):
        _target(tmp_path, "blog", 8081).claim_ports()
    with pytest.raises(ConfigError, match=r"environments\.staging\.db_port: port 9081 is already used by "
                                          r"environment shop/staging"):
        _target(tmp_path, "blog", 8090, db_port=9081).claim_ports()  # shop's database port (8081 + 1000)
    with pytest.raises(ConfigError, match="used by environment shop/staging"):
        _target(tmp_path, "shop", 8081, env="qa").claim_ports()  # another env of the same project too
    assert not list((tmp_path / "envs").glob("blog/*/ports.json"))  # a refused claim records nothing
    _target(tmp_path, "blog", 8090).claim_ports()  # its own ports: fine, and side by side with shop's staging
    assert json.loads((tmp_path / "envs" / "blog" / "staging" / "ports.json").read_text()) == {
        "environments.staging.port": 8090, "environments.staging.db_port": 9090}


def test_ports_of_older_layouts_are_taken_only_while_something_listens(tmp_path: Path) -> None:
    import socket

    from sunday_release.errors import ConfigError

    before_projects = tmp_path / "envs" / "staging"  # SUNDAY_HOME/envs/ENV
    before_projects.mkdir(parents=True)
    before_env_root = tmp_path / "projects" / "old" / "envs" / "qa"  # SUNDAY_HOME/projects/PROJECT/envs/ENV
    before_env_root.mkdir(parents=True)
    listeners = [socket.socket(), socket.socket()]
    for listener in listeners:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
    old, older = (listener.getsockname()[1] for listener in listeners)
    before_projects.joinpath("config.json").write_text(json.dumps({"project": "old", "environments": {
        "staging": {"port": older, "db_port": None, "target": "docker"}}}))
    before_env_root.joinpath("ports.json").write_text(json.dumps({"environments.qa.port": old,
                                                                  "environments.qa.db_port": old + 1}))
    try:  # running: their ports are taken
        with pytest.raises(ConfigError, match=rf"port {old} is already used by environment old/qa \(older layout, "
                                              rf"{before_env_root}\)"):
            _target(tmp_path, "shop", old).claim_ports()
        with pytest.raises(ConfigError, match=rf"port {older} is already used by environment old/staging "
                                              r"\(deployed before projects"):
            _target(tmp_path, "blog", older).claim_ports()
    finally:
        for listener in listeners:
            listener.close()
    _target(tmp_path, "shop", old).claim_ports()  # stopped (nothing listens): the ports are free
    _target(tmp_path, "blog", older).claim_ports()
    with socket.socket() as router:  # shop's own router listens now: its own claim under the env root
        router.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        router.bind(("127.0.0.1", old))
        router.listen()
        _target(tmp_path, "shop", old).claim_ports()
    assert (before_env_root / "ports.json").is_file() and (before_projects / "config.json").is_file()  # left alone


def test_names_of_an_environment_include_its_project(tmp_path: Path) -> None:
    shop, blog = _target(tmp_path, "shop", 8081), _target(tmp_path, "blog", 8082)
    assert shop.container_name("api", "blue", 0) == "sunday-shop-staging-api-blue-0"
    assert shop.root != blog.root and shop.db.root != blog.db.root and shop.key == "shop/staging"
    from flows.cd import limit_name

    assert limit_name("shop", "staging") != limit_name("blog", "staging") != limit_name("blog", "production")


def test_which_project_a_command_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sunday_release.errors import InputError
    from sunday_release.settings import Settings

    monkeypatch.setenv("SUNDAY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SUNDAY_ENV_ROOT", str(tmp_path / "envs"))
    settings = Settings.from_env()
    assert settings.env_dir("shop", "staging") == tmp_path / "envs" / "shop" / "staging"
    with pytest.raises(InputError, match="'staging' has never been deployed on this machine"):
        settings.resolve_project("staging", None)
    for project in ("shop", "blog"):
        settings.env_dir(project, "staging").mkdir(parents=True)
        settings.env_dir(project, "staging").joinpath("config.json").write_text("{}")
    settings.env_dir("shop", "production").mkdir(parents=True)
    settings.env_dir("shop", "production").joinpath("config.json").write_text("{}")
    assert settings.resolve_project("production", None) == "shop"
    assert settings.resolve_project("staging", "blog") == "blog"
    with pytest.raises(InputError, match=r"'staging' exists in several projects \(blog, shop\): choose one with "
                                         r"--project"):
        settings.resolve_project("staging", None)
    with pytest.raises(InputError, match=r"'production' of project 'blog' has never been deployed"):
        settings.resolve_project("production", "blog")


# --- real: two copies of the sample app on the Docker engine --------------------------------------------------


def _repo(root: Path, env: Env) -> Path:
    repo = root / env.project
    shutil.copytree(APP, repo, ignore=shutil.ignore_patterns("__pycache__", ".mypy_cache", ".pytest_cache"))
    env.edit(repo)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "v1"]):
        _git(repo, *args)
    return repo


class Apps:
    """Projects alpha and beta (random suffixes), each with its own `staging`; beta has two versions."""

    def __init__(self, root: Path, api: str) -> None:
        suffix = secrets.token_hex(2)
        self.alpha = Env(project=f"alpha-{suffix}", name="staging")
        self.beta = Env(project=f"beta-{suffix}", name="staging")
        self.root = root
        self.alpha_repo, self.beta_repo = _repo(root, self.alpha), _repo(root, self.beta)
        self.alpha_v1 = ci_passed(self.alpha_repo, api, _git)
        self.beta_v1 = ci_passed(self.beta_repo, api, _git)
        index = self.beta_repo / "frontend" / "public" / "index.html"
        index.write_text(index.read_text().replace("</title>", " beta v2</title>", 1))
        _git(self.beta_repo, "commit", "-qam", "v2")
        self.beta_v2 = ci_passed(self.beta_repo, api, _git)


@pytest.fixture(scope="module")
def apps(prefect_api: str, docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    """Both projects built by CI and deployed (v1) to their `staging`, torn down afterwards."""
    built = Apps(tmp_path_factory.mktemp("projects"), prefect_api)
    try:
        for env, repo, version in ((built.alpha, built.alpha_repo, built.alpha_v1),
                                   (built.beta, built.beta_repo, built.beta_v1)):
            done = deploy(env, repo, version, prefect_api)
            assert done.returncode == 0, done.stderr
        yield built
    finally:
        built.alpha.teardown()
        built.beta.teardown()


def _containers(env: Env) -> set[str]:
    """Id, state and start time of every container of `env`: any stop, restart or replacement changes it."""
    ids = env.container_ids()
    out = subprocess.run([DOCKER, "inspect", "-f", "{{.Id}} {{.State.Status}} {{.State.StartedAt}}", *ids],
                         capture_output=True, text=True, check=True).stdout
    return set(out.splitlines())


def test_two_projects_with_a_staging_each_never_touch_each_other(prefect_api: str, apps: Apps,
                                                                 tmp_path: Path) -> None:
    alpha, beta = apps.alpha, apps.beta
    before = _containers(alpha)
    assert before and all(" running " in c for c in before)
    summary = tmp_path / "k6.json"
    load = subprocess.Popen([K6, "run", "--quiet", "-e", f"BASE_URL={alpha.url}", "-e", "VUS=10", "-e",
                             "DURATION=20m", "--summary-export", str(summary), str(SCRIPT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        second = deploy(beta, apps.beta_repo, apps.beta_v2, prefect_api)
        assert second.returncode == 0, second.stderr
        assert "beta v2</title>" in httpx.get(f"{beta.url}/").text
        back = sunday("rollback", "--env", "staging", "--project", beta.project, "--json", api=prefect_api,
                      env=beta.env)
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout)["version"] == apps.beta_v1
        scaled = sunday("scale", "--env", "staging", "--project", beta.project, "--service", "backend",
                        "--replicas", "3", api=prefect_api, env=beta.env)
        assert scaled.returncode == 0, scaled.stderr
        time.sleep(3)
    finally:
        load.send_signal(signal.SIGINT)
        _, err = load.communicate(timeout=60)
    metrics = json.loads(summary.read_text())["metrics"]
    requests, failed = metrics["http_reqs"]["count"], metrics["http_req_failed"]
    assert requests > 500, err
    assert failed["passes"] == 0, f"{failed['passes']} of {requests} requests to {alpha.project} failed"
    assert metrics["checks"]["fails"] == 0
    assert _containers(alpha) == before  # not one of alpha's containers was stopped, restarted or replaced

    st = status(alpha)
    assert st["project"] == alpha.project and st["serving"] is True and st["version"] == apps.alpha_v1
    assert [h["outcome"] for h in st["history"]] == ["live"]  # type: ignore[union-attr,index]
    assert st["replicas"] and all(r["name"].startswith(f"sunday-{alpha.project}-staging-")  # type: ignore[index]
                                  for r in st["replicas"])  # type: ignore[union-attr]
    st = status(beta)
    assert [h["outcome"] for h in st["history"]] == ["superseded", "superseded", "live"]  # type: ignore[union-attr,index]
    assert len([r for r in st["replicas"] if r["service"] == "backend"]) == 3  # type: ignore[union-attr,index]

    ambiguous = sunday("status", "--env", "staging", env=alpha.env)
    assert ambiguous.returncode == 2
    assert alpha.project in ambiguous.stderr and beta.project in ambiguous.stderr and "--project" in ambiguous.stderr
    for command in (["rollback", "--env", "staging"], ["scale", "--env", "staging", "--service", "backend",
                                                       "--replicas", "2"]):
        refused = sunday(*command, api=prefect_api, env=alpha.env)
        assert refused.returncode == 2 and "--project" in refused.stderr, refused.stderr
    assert _containers(alpha) == before


def test_a_port_held_by_another_project_is_refused_before_anything_stops(prefect_api: str, apps: Apps) -> None:
    alpha = apps.alpha
    before = _containers(alpha)
    gamma = Env(project=f"gamma-{secrets.token_hex(2)}", name="staging")
    gamma.port = alpha.port  # the clash: alpha's router port
    try:
        repo = _repo(apps.root, gamma)
        done = deploy(gamma, repo, _git(repo, "rev-parse", "HEAD"), prefect_api)
        assert done.returncode == 2, done.stderr
        assert f"environments.staging.port: port {alpha.port} is already used by environment " \
               f"{alpha.project}/staging" in done.stderr
        assert gamma.container_ids() == []
        assert _containers(alpha) == before and httpx.get(f"{alpha.url}/api/boards").status_code == 200

        gamma.port, gamma.db_port = apps.beta.port + 17, alpha.db_port  # now alpha's database port
        (repo / "sunday-release.yaml").unlink()
        shutil.copy(APP / "sunday-release.yaml", repo / "sunday-release.yaml")
        gamma.edit(repo)
        _git(repo, "commit", "-qam", "other ports")
        done = deploy(gamma, repo, _git(repo, "rev-parse", "HEAD"), prefect_api)
        assert done.returncode == 2 and f"port {alpha.db_port} is already used by environment " \
               f"{alpha.project}/staging" in done.stderr, done.stderr
        assert _containers(alpha) == before
    finally:
        gamma.teardown()


def test_one_run_per_environment_and_none_waits_for_another(prefect_api: str, apps: Apps) -> None:
    from flows.cd import environment_slot

    alpha, beta = apps.alpha, apps.beta
    with environment_slot(alpha.project, "staging"):  # a deploy of alpha/staging is running
        waiting = subprocess.Popen([*CLI, "scale", "--env", "staging", "--project", alpha.project, "--service",
                                    "backend", "--replicas", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, **alpha.env, "PREFECT_API_URL": prefect_api})
        assert waiting.stderr is not None
        seen = []
        for line in waiting.stderr:
            seen.append(line)
            if f"waiting: another deploy, rollback or scale of {alpha.project}/staging" in line:
                break
        else:
            pytest.fail("the second run of alpha/staging did not wait:\n" + "".join(seen))
        other = sunday("scale", "--env", "staging", "--project", beta.project, "--service", "backend",
                       "--replicas", "2", api=prefect_api, env=beta.env)  # another project's staging: no wait
        assert other.returncode == 0, other.stderr
        time.sleep(2)
        assert waiting.poll() is None  # still waiting for alpha's slot
        backends = [r for r in status(alpha)["replicas"] if r["service"] == "backend"]  # type: ignore[union-attr,index]
        assert len(backends) == 1  # and nothing of it ran
    rest = waiting.stderr.read()
    assert waiting.wait(300) == 0, "".join(seen) + rest
    backends = [r for r in status(alpha)["replicas"] if r["service"] == "backend"]  # type: ignore[union-attr,index]
    assert len(backends) == 2 and all(r["health"] == "healthy" for r in backends)
