"""The local development stack (`sunday-release dev`): its config, plan and .env (fast), and one real run on a copy
of the sample app, with prometheus and mail added to its postgres, redis and s3 (docker): up, the backend's tests
from the host against it, reuse, status, data kept by a plain down, then down --volumes leaving nothing labelled
with the test's project."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import smtplib
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from adapters import cli
from adapters.devstack import probe, write_private
from sunday_release.config import load_config, parse_config
from sunday_release.devstack import (
    PROJECT_LABEL,
    Endpoint,
    decide,
    env_file_text,
    is_our_env_file,
    plan,
    run_argv,
    urls,
    variables,
)
from sunday_release.errors import ConfigError
from tests.conftest import APP, DOCKER, ROOT, free_port

_BASE = {"project": "shop", "services": {"api": {"context": "api", "port": 8000}}}


def _stack(dev: object) -> object:
    return parse_config({**_BASE, "dev": dev}).dev


# --- config -----------------------------------------------------------------------------------------------------

def test_a_bare_kind_is_declared_with_its_defaults() -> None:
    stack = parse_config({**_BASE, "dev": {"postgres": None, "redis": {}, "s3": {"buckets": ["uploads"]}}}).dev
    assert stack is not None and list(stack.kinds()) == ["postgres", "redis", "s3"]
    assert stack.postgres is not None and stack.postgres.database == "dev"


def test_a_dumped_config_reads_back_with_the_same_kinds() -> None:
    config = parse_config({**_BASE, "dev": {"redis": None, "s3": {"buckets": ["uploads"]}}})
    dumped = config.model_dump(mode="json")
    assert dumped["dev"] == {"redis": {}, "s3": {"buckets": ["uploads"]}}
    assert parse_config(dumped) == config and parse_config(json.loads(config.model_dump_json())) == config
    assert parse_config(_BASE).model_dump(mode="json")["dev"] is None


@pytest.mark.parametrize(("dev", "path", "says"), [
    ({"mysql": {}}, "dev.mysql", "unknown key 'mysql'; expected one of: postgres, redis, s3, prometheus, mail"),
    ({"redis": {"port": 1}}, "dev.redis.port", "unknown key 'port'; it takes none"),
    ({"s3": {"bucket": ["a"]}}, "dev.s3.bucket", "unknown key 'bucket'; expected one of: buckets"),
    ({"s3": {"buckets": ["Up..loads"]}}, "dev.s3.buckets[0]", "expected an S3 bucket name"),
    ({"postgres": {"database": "my-db"}}, "dev.postgres.database", "should match pattern"),
    ({"prometheus": {"targets": ["http://x:1/metrics"]}}, "dev.prometheus.targets[0]", "should match pattern"),
    ({}, "dev", "declares no dependency"),
    (["postgres"], "dev", "valid dictionary"),
])
def test_a_bad_dev_section_names_its_path(dev: object, path: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        _stack(dev)
    assert err.value.path == path and says in err.value.message


def test_the_sample_app_declares_postgres_redis_and_s3() -> None:
    stack = load_config(APP).dev
    assert stack is not None and list(stack.kinds()) == ["postgres", "redis", "s3"]


def test_the_s3_image_pins_the_versions_of_the_lock() -> None:
    lock = dict(line.split("==", 1) for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line)
    lock = {name.lower().replace("_", "-"): version for name, version in lock.items()}
    pins = [line for line in (ROOT / "infra/dev/s3/requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert pins and all(re.sub(r"\[.*\]", "", pin.split("==")[0]) in lock for pin in pins)
    assert {pin: lock[re.sub(r"\[.*\]", "", pin.split("==")[0])] for pin in pins} == {
        pin: pin.split("==")[1] for pin in pins}


# --- plan, argv, .env -------------------------------------------------------------------------------------------

def test_the_plan_names_and_labels_by_project_and_binds_only_loopback() -> None:
    stack = parse_config({**_BASE, "dev": {"postgres": {"database": "shop"}, "s3": {"buckets": ["a1b", "c2d"]},
                                           "prometheus": {"targets": ["host.docker.internal:8000"]}}}).dev
    assert stack is not None
    pg, s3, prom = plan("shop", stack)
    assert (pg.container, pg.volume, s3.volume) == ("sunday-dev-shop-postgres", "sunday-dev-shop-postgres", None)
    argv = run_argv(pg, "sunday-dev/postgres:k1")
    assert argv[:4] == ["run", "--detach", "--pull", "never"]
    assert "sunday.dev=shop" in argv and "127.0.0.1::5432" in argv and "sunday-dev-shop-postgres:/data" in argv
    assert argv[-1] == "sunday-dev/postgres:k1" and pg.settings == (("database", "shop"),)
    assert run_argv(prom, "img")[-2:] == ["img", "host.docker.internal:8000"]
    assert "host.docker.internal:host-gateway" in run_argv(prom, "img")
    assert plan("other", stack)[0].container == "sunday-dev-other-postgres"  # two projects never share one


def test_up_reuses_only_a_running_container_started_the_same_way() -> None:
    stack = parse_config({**_BASE, "dev": {"redis": {}}}).dev
    assert stack is not None
    (redis,) = plan("shop", stack)
    assert decide(redis, "img:1", None, None) == "start"
    assert decide(redis, "img:1", True, redis.spec("img:1")) == "reuse"
    assert decide(redis, "img:2", True, redis.spec("img:1")) == "replace"  # a new image
    assert decide(redis, "img:1", False, redis.spec("img:1")) == "replace"  # stopped


def test_passwords_reach_the_env_file_and_nothing_printed() -> None:
    endpoints = [Endpoint("postgres", 5001, SecretStr("pw-0c7e"), {"database": "shop"}),
                 Endpoint("redis", 5002, SecretStr("pw-9a1f")), Endpoint("s3", 5003, None, {"buckets": "a,b"}),
                 Endpoint("mail", 5004)]
    assert urls(endpoints) == {"postgres": "postgresql://dev:***@127.0.0.1:5001/shop",
                               "redis": "redis://:***@127.0.0.1:5002/0", "s3": "http://127.0.0.1:5003",
                               "mail": "smtp://127.0.0.1:5004"}
    values = variables(endpoints)
    assert values["DATABASE_URL"] == "postgresql://dev:pw-0c7e@127.0.0.1:5001/shop"
    assert values["REDIS_URL"] == "redis://:pw-9a1f@127.0.0.1:5002/0"
    assert (values["AWS_ENDPOINT_URL_S3"], values["S3_BUCKETS"], values["SMTP_PORT"]) == (
        "http://127.0.0.1:5003", "a,b", "5004")
    text = env_file_text("shop", values)
    assert is_our_env_file(text) and "PGPASSWORD=pw-0c7e\n" in text and not is_our_env_file("A=1\n")
    assert "pw-0c7e" not in repr(endpoints)


@pytest.mark.parametrize("kind", ["postgres", "redis", "s3", "prometheus", "mail"])
def test_a_probe_of_nothing_says_why_and_raises_nothing(kind: str) -> None:
    problem = probe(Endpoint(kind, free_port(), SecretStr("pw-5e2d"), {"database": "dev"}))
    assert problem and "pw-5e2d" not in problem


def test_the_env_file_is_private_from_its_first_byte(tmp_path: Path) -> None:
    path = tmp_path / ".env.dev"
    path.write_text("old\n")
    path.chmod(0o644)
    write_private(path, "A=1\n")
    assert path.read_text() == "A=1\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".env.dev"]


# --- bad input: exit 2, nothing started (the fast tier refuses any docker call) ---------------------------------

def _repo(tmp_path: Path, config: str) -> Path:
    tmp_path.joinpath("sunday-release.yaml").write_text(config)
    return tmp_path


def test_bad_input_exits_2_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dev", "up", "--repo", str(tmp_path / "missing")]) == 2
    assert "--repo" in capsys.readouterr().err
    plain = "project: shop\nservices: {api: {context: api, port: 8000}}\n"
    assert cli.main(["dev", "up", "--repo", str(_repo(tmp_path, plain))]) == 2
    assert "sunday-release.yaml: dev: no `dev:` section" in capsys.readouterr().err
    assert cli.main(["dev", "status", "--repo", str(tmp_path)]) == 2
    capsys.readouterr()
    _repo(tmp_path, plain + "dev: {postgres: {}, mongodb: {}}\n")
    assert cli.main(["dev", "up", "--repo", str(tmp_path)]) == 2
    assert "dev.mongodb: unknown key 'mongodb'" in capsys.readouterr().err
    _repo(tmp_path, plain + "dev: {postgres: {}}\n")
    assert cli.main(["dev", "up", "--volumes", "--repo", str(tmp_path)]) == 2
    assert "--volumes: only with `dev down`" in capsys.readouterr().err
    tmp_path.joinpath(".env.dev").write_text("MINE=1\n")
    assert cli.main(["dev", "up", "--repo", str(tmp_path)]) == 2
    assert "was not written by `sunday-release dev up`" in capsys.readouterr().err
    assert tmp_path.joinpath(".env.dev").read_text() == "MINE=1\n"


# --- the real thing ----------------------------------------------------------------------------------------------

def _labelled(kind: str, project: str) -> list[str]:
    """The ids of the containers (running or not) or volumes labelled with `project`."""
    listed = [DOCKER, kind, "ls", "--quiet", *(["--all"] if kind == "container" else [])]
    return subprocess.run([*listed, "--filter", f"label={PROJECT_LABEL}={project}"], check=True, capture_output=True,
                          text=True).stdout.split()


@pytest.fixture
def sample_app(docker_engine: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A copy of the sample app under a project of its own; whatever the test leaves labelled with it is removed."""
    project = f"devtest-{secrets.token_hex(3)}"
    repo = tmp_path / "app"
    shutil.copytree(APP, repo, ignore=shutil.ignore_patterns("node_modules", "__pycache__", ".*_cache", ".env.dev"))
    config = repo / "sunday-release.yaml"
    text = re.sub(r"(?m)^project: .*$", f"project: {project}", config.read_text())
    # the kinds the sample app does not use, started beside its own (a few CPU-seconds more)
    config.write_text(text.replace("\ndev:\n", "\ndev:\n  prometheus: {}\n  mail:\n", 1))
    try:
        yield repo, project
    finally:
        if containers := _labelled("container", project):
            subprocess.run([docker_engine, "rm", "--force", *containers], capture_output=True, check=False)
        if volumes := _labelled("volume", project):
            subprocess.run([docker_engine, "volume", "rm", *volumes], capture_output=True, check=False)


def _dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adapters.cli", "dev", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=1800, check=False)


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_dev_stack_of_the_sample_app(sample_app: tuple[Path, str]) -> None:
    repo, project = sample_app
    host = subprocess.run(["/usr/bin/python3", "-c", "import psycopg2, pytest, prometheus_client"],
                          capture_output=True, text=True, check=False)
    if host.returncode != 0:
        pytest.fail(f"Debian's python3 cannot run the backend's tests ({host.stderr.strip().splitlines()[-1]}): "
                    "`make setup` installs python3-pytest, python3-psycopg2 and python3-prometheus-client")
    started = time.monotonic()
    up = _dev("up", "--repo", str(repo))
    assert up.returncode == 0, up.stderr
    assert re.findall(r"(?m)^(\w+) .*\((start), healthy\)$", up.stdout) == [
        (kind, "start") for kind in ("postgres", "redis", "s3", "prometheus", "mail")]
    env_file = repo / ".env.dev"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env = _env(env_file)
    password = env["PGPASSWORD"]
    assert len(password) >= 32 and password not in up.stdout + up.stderr
    assert env["S3_BUCKETS"] == "uploads" and env["REDIS_URL"].startswith("redis://:")
    with smtplib.SMTP(env["SMTP_HOST"], int(env["SMTP_PORT"]), timeout=10) as smtp:
        smtp.sendmail("app@sunday.test", ["dev@sunday.test"], "Subject: hello\r\n\r\nfrom the dev stack\r\n")

    # the backend's test suite from the host (Debian's python3, as in its image) against the dev PostgreSQL
    tests = subprocess.run(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests"],
                           cwd=repo / "backend", capture_output=True, text=True, timeout=300, check=False,
                           env={"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", **env})
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert re.search(r"\d+ passed", tests.stdout) and "skipped" not in tests.stdout, tests.stdout[-2000:]

    again = _dev("up", "--repo", str(repo), "--json")  # idempotent: everything reused, same ports
    assert again.returncode == 0, again.stderr
    assert [s["action"] for s in json.loads(again.stdout)["services"]] == ["reuse"] * 5
    assert "building" not in again.stderr and password not in again.stdout  # images kept by their content key
    assert _env(env_file) == env

    status = _dev("status", "--repo", str(repo))
    assert status.returncode == 0, status.stdout + status.stderr
    assert len(re.findall(r"(?m) running +healthy ", status.stdout)) == 5 and password not in status.stdout

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('survives a plain down')")
    down = _dev("down", "--repo", str(repo))
    assert down.returncode == 0 and _labelled("container", project) == [] and not env_file.exists()
    assert len(_labelled("volume", project)) == 4  # all keep their data but s3 (moto: in memory)

    back = _dev("up", "--repo", str(repo))
    assert back.returncode == 0, back.stderr
    env = _env(env_file)
    assert env["PGPASSWORD"] == password
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("survives a plain down",)]
    mails = subprocess.run([DOCKER, "exec", f"sunday-dev-{project}-mail", "ls", "/data/maildir/new"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(mails) == 1  # the message sent before the down, kept in its Maildir

    gone = _dev("down", "--volumes", "--repo", str(repo))
    assert gone.returncode == 0, gone.stderr
    assert "5 container(s)" in gone.stdout and "4 volume(s)" in gone.stdout
    assert _labelled("container", project) == [] and _labelled("volume", project) == []
    assert not env_file.exists()
    print(f"dev stack round trip: {time.monotonic() - started:.1f} s")
