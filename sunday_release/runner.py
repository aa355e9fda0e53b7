"""The one subprocess runner of the project: argv lists, captured output, timeouts, typed errors."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sunday_release.errors import CommandFailed

__all__ = ["CommandResult", "run", "tail"]

log = logging.getLogger(__name__)
_TAIL_LINES = 25


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    """The last `lines` non-empty lines of `text`."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check_returncode(self) -> CommandResult:
        """Raise CommandFailed (argv, exit code, stderr tail) unless the command exited 0."""
        if self.returncode != 0:
            raise CommandFailed(self.argv, self.returncode, tail(self.stderr or self.stdout))
        return self


def run(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    input: str | None = None,
    check: bool = True,
) -> CommandResult:
    """Run `argv` (never through a shell) and capture its output.

    Args:
        argv: the program and its arguments.
        cwd: working directory.
        env: variables added to (not replacing) this process's environment.
        timeout: seconds before the command is killed and CommandFailed raised.
        input: text written to its standard input.
        check: raise CommandFailed on a non-zero exit (otherwise return the result).
    """
    argv = [str(a) for a in argv]
    full_env = {**os.environ, **env} if env else None
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=full_env, input=input, capture_output=True, text=True,
            errors="replace", timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        log.warning("command timed out after %.0fs: %s", timeout, " ".join(argv))
        raise CommandFailed(argv, None, tail(err)) from None
    except FileNotFoundError:
        raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
    result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    if not result.ok:
        log.info("command exited %d: %s\n%s", proc.returncode, " ".join(argv), tail(proc.stderr))
    return result.check_returncode() if check else result
