"""Machine-level settings (paths of tools and work directories), read from the environment once."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Settings"]


def _tool(env: str, *candidates: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    for candidate in candidates:
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
        if not os.path.isabs(candidate) and (found := shutil.which(candidate)):
            return found
    return candidates[-1]


@dataclass(frozen=True)
class Settings:
    """Where the tools and work directories of this machine are.

    Environment variables: SUNDAY_HOME (work directories, default ~/.sunday-release),
    SUNDAY_DOCKER (docker client, default /usr/bin/docker), SUNDAY_TRIVY (trivy binary,
    default the one installed beside this Python), SUNDAY_TRIVY_CACHE (Trivy cache and DB dir).
    """

    home: Path
    docker: str
    trivy: str
    trivy_cache: Path

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("SUNDAY_HOME", Path.home() / ".sunday-release")).expanduser()
        return cls(
            home=home,
            docker=_tool("SUNDAY_DOCKER", "/usr/bin/docker", "docker"),
            trivy=_tool("SUNDAY_TRIVY", str(Path(sys.executable).parent / "trivy"), "trivy"),
            trivy_cache=Path(os.environ.get("SUNDAY_TRIVY_CACHE", home / "trivy-cache")),
        )

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"
