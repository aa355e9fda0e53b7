"""JSON logs, one object a line: the CLI's `--log-format json` and the flows the workers run (`make server` with
SUNDAY_LOG_FORMAT=json).

Every line has `time` (UTC), `level`, `logger` and `message`, and what is known of where it comes from: `run_id`
(the flow run), `flow`, `task`, `step` and `service` (from the task's name, `build[backend linux/amd64]`),
`project` and `env` (bound by the flow once it knows them, `bind`, else the run's parameters), and `exception`.

For the workers' flow runs, `python -m adapters.logs DEST` writes Prefect's own logging configuration with its
console handler printing these lines instead of Prefect's text; PREFECT_LOGGING_SETTINGS_PATH=DEST selects it
(Prefect's supported way to configure its logging). What goes to the Prefect API is unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

__all__ = ["JsonLines", "bind", "fields_of", "write_prefect_logging_config"]

# what a flow run knows of where it acts (project, env), by flow run id: its tasks' lines find it by their run's
# id, and a run that ended leaves nothing behind for the next one in the same process (the CLI, the tests)
_BOUND: dict[str, dict[str, str]] = {}


def _flow_run() -> Any:
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
    except Exception:  # Prefect not importable or not set up: a line without the run's fields
        return None
    return context.flow_run if context is not None else None


def bind(**fields: str | None) -> None:
    """Say `project=…, env=…` on every JSON line of the current flow run (and its tasks) from now on."""
    run = _flow_run()
    if run is not None:
        _BOUND.setdefault(str(run.id), {}).update({key: value for key, value in fields.items() if value})


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """Where a record comes from: run_id, flow, task, step, service, project, env (those known)."""
    task = getattr(record, "task_run_name", None)
    task = re.sub(r"-[0-9a-f]{3}$", "", task) if isinstance(task, str) else None
    step, _, rest = (task or "").partition("[")
    run = _flow_run()
    run_id = str(getattr(record, "flow_run_id", "") or "") or (str(run.id) if run is not None else None)
    parameters: Mapping[str, Any] = (run.parameters or {}) if run is not None and str(run.id) == run_id else {}
    fields = {"run_id": run_id, "flow": getattr(record, "flow_name", None), "task": task, "step": step or None,
              "service": rest.rstrip("]").split(" ")[0] or None if rest else None,
              "project": parameters.get("project") if isinstance(parameters.get("project"), str) else None,
              "env": parameters.get("env") if isinstance(parameters.get("env"), str) else None}
    return {**fields, **_BOUND.get(run_id or "", {})}


class JsonLines(logging.Formatter):
    """A record as one JSON object (no newline inside: a message's own newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, **fields_of(record),
            "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps({key: value for key, value in line.items() if value is not None}, default=str)


def write_prefect_logging_config(dest: Path) -> Path:
    """Prefect's default logging configuration with its console handler writing `JsonLines` to stderr."""
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH

    config = yaml.safe_load(DEFAULT_LOGGING_SETTINGS_PATH.read_text())
    config["formatters"]["sunday_json"] = {"()": "adapters.logs.JsonLines"}  # by name: also when run as __main__
    config["handlers"]["console"] = {"level": 0, "class": "logging.StreamHandler", "formatter": "sunday_json",
                                     "stream": "ext://sys.stderr"}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


if __name__ == "__main__":  # server.sh: python -m adapters.logs DEST
    print(write_prefect_logging_config(Path(sys.argv[1])))
