"""Deploy targets: two implementations of one blue-green protocol (`docker`, `kubernetes`)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr

from sunday_release import validate
from sunday_release.config import PipelineConfig
from sunday_release.errors import InputError
from sunday_release.settings import Settings
from sunday_release.targets.protocol import DeployTarget

__all__ = ["last_config", "make_target"]


def make_target(config: PipelineConfig, env: str, settings: Settings,
                read_secret: Callable[[str], SecretStr] | None = None) -> DeployTarget:
    """The deploy target of environment `env` (DockerTarget or KubernetesTarget); InputError on a bad name.

    `read_secret` reads a secret by name for a target whose database URL is a secret (kubernetes:
    `environments.ENV.database_url_secret`); the flows pass the Prefect Secret block reader.
    """
    validate.name(env, "--env")
    if env not in config.environments:
        raise InputError(f"--env: {env!r} is not an environment of the config ({', '.join(config.environments)})")
    environment = config.environments[env]
    if environment.target == "kubernetes":
        from sunday_release.targets.kubernetes import KubernetesTarget

        root = settings.env_dir(config.project, env)
        if read_secret is None:
            return KubernetesTarget(config, env, environment, settings.home, root=root)
        return KubernetesTarget(config, env, environment, settings.home, read_secret=read_secret, root=root)
    from sunday_release.targets.docker import DockerTarget

    return DockerTarget(config, env, environment, settings.home, settings.docker, settings.db_root,
                        env_root=settings.env_root)


def last_config(settings: Settings, project: str, env: str) -> PipelineConfig:
    """The config of `project`'s `env`'s last deploy: the target's record (docker: its database) wins over the cache.

    The cache file (ENV_ROOT/PROJECT/ENV/config.json) says which target and database to ask; a target
    that has none yet leaves the cache.
    """
    cached = PipelineConfig.model_validate_json((settings.env_dir(project, env) / "config.json").read_text())
    return make_target(cached, env, settings).load_config() or cached
