"""sunday-release: the release pipeline of Sunday.com as Prefect flows (this package: the pure core)."""

from sunday_release.config import PipelineConfig, load_config
from sunday_release.errors import (
    CheckFailed,
    CommandFailed,
    ConfigError,
    GateFailed,
    InputError,
    PipelineError,
    StageFailed,
)
from sunday_release.runner import CommandResult, run

__all__ = [
    "CheckFailed",
    "CommandFailed",
    "CommandResult",
    "ConfigError",
    "GateFailed",
    "InputError",
    "PipelineError",
    "PipelineConfig",
    "StageFailed",
    "load_config",
    "run",
]
__version__ = "0.1.0"
