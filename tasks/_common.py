"""What every task module shares: cache policies, the retry condition and progress logging."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any

from prefect import Task, get_run_logger
from prefect.cache_policies import DEFAULT, CacheKeyFnPolicy
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError

from sunday_release.errors import CommandFailed, InputError, PipelineError
from sunday_release.registry import RegistryUnavailable

__all__ = ["LOCAL_CACHE", "ON_THIS_MACHINE", "RETRY_DELAYS", "is_transient", "progress", "transient_command"]

RETRY_DELAYS: list[float] = [2, 5, 15]

# Signs in a command's stderr that the failure was the daemon or the network, not the work.
_TRANSIENT = (
    "cannot connect to the docker daemon", "connection reset", "connection refused", "i/o timeout",
    "tls handshake timeout", "temporary failure in name resolution", "unexpected eof",
    "could not resolve host", "early eof", "the remote end hung up", "503 service unavailable",
)


def machine_key(ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    """Stale when the task runs on another machine: its result (an image, a checkout) lives on this one.

    Workspaces (SUNDAY_HOME/workspaces/FLOW_RUN_ID) are kept for the life of the run, so a Retry on
    the same machine finds the checkout it cached.
    """
    return socket.gethostname()


# DEFAULT = inputs + task source + flow run id: a Retry of the same flow run reuses the result.
ON_THIS_MACHINE = DEFAULT + CacheKeyFnPolicy(cache_key_fn=machine_key)
# How long a cached local result (a checkout path, a local image) may be reused: `gc` keeps everything at
# least this long (sunday_release/hygiene.py MIN_DAYS), so a Retry never reuses what gc removed.
LOCAL_CACHE = timedelta(days=1)


def transient_command(exc: CommandFailed) -> bool:
    """A command that timed out or failed because of the daemon or the network, not the work."""
    return exc.returncode is None or any(s in exc.stderr_tail.lower() for s in _TRANSIENT)


def is_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry condition: retry only what can flake (daemon, network), never bad input or a failed check."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, InputError):
        return False
    if isinstance(exc, RegistryUnavailable):
        return True
    if isinstance(exc, CommandFailed):
        return transient_command(exc)
    return not isinstance(exc, PipelineError)


def progress(message: str, **fields: Any) -> None:
    """Log a progress line to the run (UI) and mark it for the terminal's progress printer."""
    try:
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = get_run_logger()
    except MissingContextError:  # a task body called directly (`.fn()`), outside any run
        logger = logging.getLogger("sunday_release.tasks")
    logger.info(message, extra={"sunday_progress": True, **fields})
