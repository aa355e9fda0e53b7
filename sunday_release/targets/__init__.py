"""Deploy targets: two implementations of one blue-green protocol (`docker`, `kubernetes`)."""

from __future__ import annotations

from typing import Any

from sunday_release import validate
from sunday_release.config import PipelineConfig
from sunday_release.errors import InputError
from sunday_release.settings import Settings

__all__ = ["last_config", "make_target"]


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

    return DockerTarget(config, env, environment, settings.home, settings.docker, settings.db_root,
                        env_root=settings.env_root)


def last_config(settings: Settings, project: str, env: str) -> PipelineConfig:
    """The config of `project`'s `env`'s last deploy: the target's record (docker: its database) wins over the cache.

    The cache file (ENV_ROOT/PROJECT/ENV/config.json) says which target and database to ask; a target
    that keeps no record of its own (kubernetes) has only the cache.
    """
    cached = PipelineConfig.model_validate_json((settings.env_dir(project, env) / "config.json").read_text())
    recorded = getattr(make_target(cached, env, settings), "load_config", lambda: None)()
    return recorded if isinstance(recorded, PipelineConfig) else cached
