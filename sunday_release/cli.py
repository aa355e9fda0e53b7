"""The `sunday-release` command line: exit 0 success, 1 a stage failed, 2 bad input."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sunday_release.config import CONFIG_FILE, load_config
from sunday_release.errors import InputError, PipelineError, StageFailed
from sunday_release.refs import validate_ref, validate_repo
from sunday_release.settings import Settings

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Progress(logging.Handler):
    """Prints the pipeline's progress lines (`[  12.3s] test[backend]  passed ...`) to stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "sunday_progress", False):
            return
        who = re.sub(r"-[0-9a-f]{3}$", "", getattr(record, "task_run_name", None) or "ci")
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"[{elapsed:6.1f}s] {who:<20} {record.getMessage()}\n")


def _connect(verbose: bool) -> str:
    """Point Prefect at PREFECT_API_URL, or at the local server (started if need be)."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from sunday_release.server import LocalServer

    server = LocalServer(Settings.from_env().home)
    if not server.healthy():
        sys.stderr.write(f"starting a local Prefect server on 127.0.0.1:{server.port} "
                         "(stop it with `sunday-release server stop`)\n")
    os.environ["PREFECT_API_URL"] = server.start()
    return os.environ["PREFECT_API_URL"]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def cmd_validate(args: argparse.Namespace) -> int:
    root = Path(args.repo)
    if not root.is_dir():
        raise InputError(f"--repo: {args.repo!r} is not a directory")
    config = load_config(root)
    if args.json:
        _print_json(config.model_dump(mode="json"))
    else:
        print(f"{root / CONFIG_FILE}: valid — project {config.project}; services: {', '.join(config.services)}; "
              f"environments: {', '.join(config.environments)}")
    return EXIT_OK


def cmd_ci(args: argparse.Namespace) -> int:
    repo, ref = validate_repo(args.repo), validate_ref(args.ref)
    api = _connect(args.verbose)
    from flows.ci import ci  # importing Prefect configures its logging: attach the printer after

    logging.getLogger("prefect").addHandler(_Progress())
    sys.stderr.write(f"CI of {repo} at {ref} (Prefect API {api})\n")

    state = ci(repo=repo, ref=ref, return_state=True)
    summary: dict[str, Any] | None
    if state.is_completed():
        summary = state.result()
        code = EXIT_OK
    else:
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, InputError):
            raise exc
        summary = exc.summary if isinstance(exc, StageFailed) and isinstance(exc.summary, dict) else None
        sys.stderr.write(f"CI failed:\n{exc}\n")
        code = EXIT_FAILED
        if summary is None:
            summary = {"flow_run_id": str(state.state_details.flow_run_id), "state": "FAILED",
                       "error": str(exc)}
    if args.json:
        _print_json(summary)
    elif summary and "services" in summary:
        from sunday_release.ci_report import terminal_summary

        print(terminal_summary(summary))
    return code


def cmd_server(args: argparse.Namespace) -> int:
    from sunday_release.server import LocalServer

    server = LocalServer(Settings.from_env().home)
    if args.action == "start":
        print(f"Prefect server: {server.start()} (UI http://127.0.0.1:{server.port})")
    elif args.action == "stop":
        print("stopped" if server.stop() else "no local server was running")
    else:
        print(f"{'running' if server.healthy() else 'not running'}: {server.api_url}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sunday-release", description="The release pipeline, as Prefect flows.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help=f"check {CONFIG_FILE} of a repository")
    p.add_argument("--repo", default=".", help="the application repository (default: .)")
    p.add_argument("--json", action="store_true", help="print the config with all defaults filled in")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ci", help="run CI on a ref: checks of every service, repository scan")
    p.add_argument("--repo", required=True, help="a local git repository or a git URL")
    p.add_argument("--ref", required=True, help="branch, tag or commit SHA")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    p.set_defaults(func=cmd_ci)

    p = sub.add_parser("server", help="the local Prefect server used when PREFECT_API_URL is not set")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=cmd_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InputError as exc:
        sys.stderr.write(f"sunday-release: error: {exc}\n")
        return EXIT_BAD_INPUT
    except PipelineError as exc:
        sys.stderr.write(f"sunday-release: failed: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
