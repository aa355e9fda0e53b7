"""Deploy targets: two implementations of one blue-green protocol (`docker`, `kubernetes`)."""

from __future__ import annotations

from typing import Any

from sunday_release import validate
from sunday_release.config import PipelineConfig
from sunday_release.errors import InputError
from sunday_release.settings import Settings

__all__ = ["make_target"]


def make_target(config: PipelineConfig, env: str, settings: Settings) -> Any:
    """The deploy target of environment `env` (DockerTarget or KubernetesTarget); InputError on a bad name."""
    validate.name(env, "--env")
    if env not in config.environments:
        raise InputError(f"--env: {env!r} is not an environment of the config ({', '.join(config.environments)})")
    environment = config.environments[env]
    if environment.target == "kubernetes":
        from sunday_release.targets.kubernetes import KubernetesTarget

        return KubernetesTarget(config, env, environment, settings.home)
    from sunday_release.targets.docker import DockerTarget

    return DockerTarget(config, env, environment, settings.home, settings.docker, settings.db_root)
