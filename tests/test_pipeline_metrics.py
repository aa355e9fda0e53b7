"""The causes `sunday-release exporter` gives failed task runs (adapters/pipeline_metrics.failure_cause), read from
the final states Prefect itself writes for a task that raised (its public `exception_to_failed_state`, the message
a task run's Failed state carries) or timed out. The exporter on a real server: tests/faults/test_rollout_analysis.py.
"""

from __future__ import annotations

import asyncio

import pytest
from prefect.states import exception_to_failed_state

from adapters.pipeline_metrics import failure_cause
from sunday_release.errors import (
    CheckFailed,
    CommandFailed,
    ConfigError,
    DockerUnavailable,
    GateFailed,
    RolloutAborted,
    TagExists,
)


def _failed_task_message(exc: Exception) -> str:
    """The message of the Failed state Prefect's task engine sets for a task that raised `exc`."""
    state = asyncio.run(exception_to_failed_state(exc, message="Task run encountered an exception",
                                                  write_result=False))
    assert state.message is not None
    return state.message


@pytest.mark.parametrize(("exc", "cause"), [
    (CheckFailed("backend", "test", "2 failed"), "check"),
    (GateFailed("3 CRITICAL findings: the scan gate says no"), "gate"),
    (RolloutAborted("analysis: error_ratio 0.31 > 0.02 three times"), "rollout"),
    (DockerUnavailable(["docker", "push", "x"], 1, "Cannot connect to the Docker daemon", "unix:///run/d.sock"),
     "infrastructure"),
    (CommandFailed(["npm", "ci"], 1, "ERR! 404"), "command"),
    (CommandFailed(["pytest", "-q"], None, ""), "timeout"),
    (ConfigError("sunday-release.yaml", "services.api.port", "expected an integer"), "input"),
    (TagExists("r/app:1.0", "sha256:aa", "sha256:bb"), "tag-exists"),
    (KeyError("surprise"), "error"),
])
def test_a_failed_task_is_counted_by_the_kind_of_error_it_raised(exc: Exception, cause: str) -> None:
    assert failure_cause("FAILED", _failed_task_message(exc)) == cause


def test_a_message_quoting_an_error_name_is_not_taken_for_that_error() -> None:
    message = _failed_task_message(ValueError("the log said: encountered an exception GateFailed: no"))
    assert failure_cause("FAILED", message) == "error"


def test_crashes_and_timeouts_are_their_own_causes() -> None:
    assert failure_cause("CRASHED", "Execution was cancelled by the runtime environment.") == "crashed"
    assert failure_cause("FAILED", "Task run exceeded timeout of 600.0 second(s)") == "timeout"
    assert failure_cause("FAILED", None) == "error"
