"""`sunday-release --log-format json`: one JSON object a line on stderr, with what a log pipeline indexes by."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters import cli
from adapters.logs import write_prefect_logging_config
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _text_again() -> object:
    yield
    cli._LOG.update(json=False, project=None, env=None)


def test_an_error_is_one_json_object_naming_only_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--log-format", "json", "status", "--env", "../x"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and "'../x' is not a valid name" in record["message"]
    assert "env" not in record and record["time"].endswith("+00:00")  # an invalid name is not a field


def test_a_progress_line_carries_run_project_env_service_and_step(capsys: pytest.CaptureFixture[str]) -> None:
    cli._LOG.update(json=True, project="shop", env="staging")
    record = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "pushed %s", ("sha256:ab",), None)
    record.__dict__.update(sunday_progress=True, task_run_name="push[backend linux/amd64]-3f1",
                           flow_run_id="0b8c5a52-5b1a-4f8e-9d55-9a4f0c2d7e61", flow_name="ci")
    cli._Progress().emit(record)
    line = json.loads(capsys.readouterr().err)
    assert line == {"time": line["time"], "level": "info", "project": "shop", "env": "staging",
                    "elapsed": line["elapsed"], "run_id": "0b8c5a52-5b1a-4f8e-9d55-9a4f0c2d7e61", "flow": "ci",
                    "task": "push[backend linux/amd64]", "service": "backend", "step": "push",
                    "message": "pushed sha256:ab"}


def test_text_stays_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    record = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "passed", (), None)
    record.__dict__.update(sunday_progress=True, task_run_name="test[backend]-001")
    cli._Progress().emit(record)
    assert capsys.readouterr().err.split("] ", 1)[1] == f"{'test[backend]':<20} passed\n"


_FLOW = '''
from prefect import flow, get_run_logger, task

from adapters.logs import bind


@task(task_run_name="build[backend linux/amd64]")
def build() -> None:
    get_run_logger().info("built %s", "sha256:ab")


@flow(name="ci")
def ci(env: str = "staging") -> None:
    bind(project="shop")
    build()
    get_run_logger().warning("line one\\nline two")


@flow(name="other")
def other() -> None:
    get_run_logger().info("the next run")


ci()
other()  # the same process: what the first run bound is not this one's
'''


def test_a_workers_flow_run_logs_json_lines_with_prefects_logging_config(prefect_api: str, tmp_path: Path) -> None:
    """The configuration `make server` gives its workers with SUNDAY_LOG_FORMAT=json (adapters/logs.py, through
    Prefect's PREFECT_LOGGING_SETTINGS_PATH): a real flow run on a real server prints only JSON lines, its task's
    with the run, the flow, the step and service of the task, the bound project and the env parameter."""
    config = write_prefect_logging_config(tmp_path / "logging.yml")
    done = subprocess.run([sys.executable, "-c", _FLOW], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_LOGGING_SETTINGS_PATH":
                               str(config), "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "NOTSET"})  # (the tests' quiet)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]  # every line is one object
    (built,) = [line for line in lines if line["message"] == "built sha256:ab"]
    assert built == {"time": built["time"], "level": "info", "logger": "prefect.task_runs",
                     "run_id": built["run_id"], "flow": "ci", "task": "build[backend linux/amd64]", "step": "build",
                     "service": "backend", "project": "shop", "env": "staging", "message": "built sha256:ab"}
    assert len(built["run_id"]) == 36 and built["time"].endswith("+00:00")
    (warned,) = [line for line in lines if line["level"] == "warning" and "line one" in line["message"]]
    assert warned["message"] == "line one\nline two" and warned["run_id"] == built["run_id"] and "task" not in warned
    assert any("Finished in state Completed" in line["message"] for line in lines)  # Prefect's own lines too
    (following,) = [line for line in lines if line["message"] == "the next run"]
    assert following["flow"] == "other" and following["run_id"] != built["run_id"]
    assert "project" not in following and "env" not in following


def test_make_server_refuses_a_log_format_it_does_not_know(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "infra" / "local" / "server.sh"), "start"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "SUNDAY_LOG_FORMAT": "xml",
                                                      "SUNDAY_PLATFORM_DIR": str(tmp_path / "platform")})
    assert done.returncode == 2 and "SUNDAY_LOG_FORMAT: 'xml' is not a log format (text, json)" in done.stderr
    assert not (tmp_path / "platform").exists()  # nothing started
