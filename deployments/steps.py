"""Deployment steps of prefect.yaml that run where the flow run runs."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enter_release_dir"]


def enter_release_dir() -> dict[str, str]:
    """Pull step: work in this flow run's copy of sunday-release, where the entrypoints (`flows/ci.py`) are.

    SUNDAY_RELEASE_DIR is read when the run starts, on the worker's side: a process worker's checkout, or
    /opt/sunday-release in the pipeline's own image (Docker and Kubernetes pools). `prefect deploy` resolves a
    `{{ $VAR }}` of a pull step on the machine that deploys, which would send every container to that
    machine's path.
    """
    directory = os.environ.get("SUNDAY_RELEASE_DIR") or str(Path(__file__).resolve().parent.parent)
    if not (Path(directory) / "flows").is_dir():
        raise FileNotFoundError(f"SUNDAY_RELEASE_DIR={directory!r} is not a copy of sunday-release (no flows/ in it)")
    os.chdir(directory)
    return {"directory": directory}
