"""The content key of a service's image: decides whether it must be built or is already published."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["content_key"]

_SKIP_DIRS = {".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules"}


def _files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def content_key(context: Path, dockerfile: Path, *, build_args: Mapping[str, str], platforms: Iterable[str],
                target: str | None, extra: Iterable[str] = ()) -> str:
    """A 24-hex-digit key of everything that goes into the service's image.

    Stale when any of these change: a file of the build context (path, content, executable
    bit), the Dockerfile, a build argument (BASE_IMAGE included), the platforms, the target
    stage, or an `extra` input (the base image's digest, the extra CA certificates). Caches
    and the working tree's Git metadata do not count.
    """
    h = hashlib.sha256()

    def feed(*parts: str | bytes) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else part.encode()
            h.update(len(data).to_bytes(8, "big") + data)

    feed("sunday-release content key v1")
    for path in _files(context):
        if path.is_symlink():
            feed("link", str(path.relative_to(context)), os.readlink(path))
            continue
        feed("file", str(path.relative_to(context)), "x" if os.access(path, os.X_OK) else "-",
             hashlib.sha256(path.read_bytes()).digest())
    if not dockerfile.resolve().is_relative_to(context.resolve()):
        feed("dockerfile", dockerfile.read_bytes())
    feed("dockerfile-path", str(os.path.relpath(dockerfile, context)))
    for key in sorted(build_args):
        feed("arg", key, build_args[key])
    feed("platforms", *sorted(platforms))
    feed("target", target or "")
    for item in extra:
        feed("extra", item)
    return h.hexdigest()[:24]
