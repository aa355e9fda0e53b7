"""`sunday-release --log-format json`: one JSON object a line on stderr, with what a log pipeline indexes by."""

from __future__ import annotations

import json
import logging

import pytest

from adapters import cli


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
