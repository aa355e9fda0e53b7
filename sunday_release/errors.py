"""The error tree of sunday-release.

    PipelineError                 anything the pipeline reports as its own failure
    ├── InputError                bad input from a person: exit code 2, nothing done
    │   └── ConfigError           sunday-release.yaml (file, key path, what was expected)
    ├── CommandFailed             a subprocess exited non-zero or timed out
    │   └── DockerUnavailable     the Docker daemon (or its network) did not answer: retried, then names the daemon
    ├── CheckFailed               a service's build, test, lint or type check did not pass
    ├── GateFailed                a gate (scan policy, thresholds) said no
    ├── TagExists                 an immutable image tag already points at other content
    ├── RolloutAborted            a deploy stopped (unhealthy, smoke, watch, rejected): traffic stays or goes back
    └── StageFailed               a flow's stage failed; carries the run summary

The CLI maps InputError to exit code 2 and every other PipelineError to exit code 1.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CheckFailed",
    "CommandFailed",
    "ConfigError",
    "DockerUnavailable",
    "GateFailed",
    "InputError",
    "PipelineError",
    "RolloutAborted",
    "StageFailed",
    "TagExists",
]


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class InputError(PipelineError):
    """Bad input (arguments, refs, repository paths): the run must not start."""


class ConfigError(InputError):
    """An invalid pipeline config: names the file, the key path and what was expected."""

    def __init__(self, file: str, path: str, message: str) -> None:
        self.file = file
        self.path = path
        self.message = message
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.file, self.path, self.message))


class CommandFailed(PipelineError):
    """A command exited non-zero (or timed out); carries argv, exit code and stderr tail."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr_tail: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        status = "timed out" if returncode is None else f"exited {returncode}"
        detail = f"\n{stderr_tail}" if stderr_tail else ""
        super().__init__(f"command {self.argv[0]!r} {status}: {' '.join(self.argv)}{detail}")

    def __reduce__(self) -> tuple[type, tuple[list[str], int | None, str]]:
        return (type(self), (self.argv, self.returncode, self.stderr_tail))


class DockerUnavailable(CommandFailed):
    """A docker command failed because the daemon (or its network) did not answer; the message names the daemon."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr_tail: str, daemon: str) -> None:
        super().__init__(argv, returncode, stderr_tail)
        self.daemon = daemon
        last = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no answer"
        self.args = (f"the Docker daemon {daemon} is unavailable: docker {' '.join(self.argv[1:4])} failed: {last}",)

    def __reduce__(self) -> tuple[type, tuple[list[str], int | None, str, str]]:  # type: ignore[override]
        return (type(self), (self.argv, self.returncode, self.stderr_tail, self.daemon))


class CheckFailed(PipelineError):
    """A service check (build, test, lint, typecheck) failed: names the service and the step."""

    def __init__(self, service: str, step: str, detail: str, result: object = None) -> None:
        self.service = service
        self.step = step
        self.detail = detail
        self.result = result  # the step's StepResult, for the run summary
        super().__init__(f"{step}[{service}] failed: {detail}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str, object]]:
        return (type(self), (self.service, self.step, self.detail, self.result))


class GateFailed(PipelineError):
    """A policy gate refused to let the pipeline go on; `report` holds the evidence."""

    def __init__(self, message: str, report: object = None) -> None:
        self.report = report
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, object]]:
        return (type(self), (str(self), self.report))


class TagExists(PipelineError):
    """An immutable tag already points at different content: it is never overwritten."""

    def __init__(self, ref: str, existing: str, refused: str) -> None:
        self.ref, self.existing, self.refused = ref, existing, refused
        super().__init__(f"tag {ref} already points at {existing}; refusing to overwrite it with {refused} "
                         "(tags are immutable: publish a new version instead)")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.ref, self.existing, self.refused))


class RolloutAborted(PipelineError):
    """A rollout could not go on; the previous color keeps (or gets back) the traffic. `evidence`: lines of what
    decided it (the analysis's measurements) for the rollout artifact."""

    def __init__(self, message: str, evidence: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.evidence = tuple(evidence)


class StageFailed(PipelineError):
    """A pipeline stage failed; `summary` is the run's summary (what passed, what did not)."""

    def __init__(self, message: str, summary: object = None) -> None:
        self.summary = summary
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, object]]:
        return (type(self), (str(self), self.summary))
