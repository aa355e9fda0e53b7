"""The `sunday-release` command line: exit 0 success, 1 a stage failed, 2 bad input."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sunday_release import validate
from sunday_release.config import CONFIG_FILE, load_config
from sunday_release.errors import ConfigError, InputError, PipelineError, StageFailed
from sunday_release.refs import validate_ref, validate_repo, validate_sha
from sunday_release.settings import Settings

if TYPE_CHECKING:
    from adapters.devstack import DevStackEngine
    from sunday_release.devstack import DevService

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


# `--log-format json`: what every line says besides its message (the command's project and env, when it has them)
_LOG: dict[str, Any] = {"json": False, "project": None, "env": None}


def _json_line(message: str, level: str = "info", **fields: Any) -> None:
    """One JSON object on stderr: time (UTC), level, the command's project and env, `fields`, the message."""
    from datetime import UTC, datetime

    line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": level,
            "project": _LOG["project"], "env": _LOG["env"], **fields, "message": message}
    sys.stderr.write(json.dumps({k: v for k, v in line.items() if v is not None}) + "\n")


def _say(message: str, level: str = "info") -> None:
    """A line of the CLI's own (a banner, an error): plain, or a JSON object with `--log-format json`."""
    if _LOG["json"]:
        _json_line(message.rstrip("\n"), level)
    else:
        sys.stderr.write(message if message.endswith("\n") else message + "\n")


class _Progress(logging.Handler):
    """Prints the pipeline's progress lines (`[  12.3s] test[backend]  passed ...`) to stderr; with
    `--log-format json` one object a line: time, level, run_id, flow, task, project, env, service, step, message."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "sunday_progress", False):
            return
        task = getattr(record, "task_run_name", None)
        who = re.sub(r"-[0-9a-f]{3}$", "", task or getattr(record, "flow_run_name", None) or "flow")
        elapsed = time.monotonic() - self.started
        if not _LOG["json"]:
            sys.stderr.write(f"[{elapsed:6.1f}s] {who:<20} {record.getMessage()}\n")
            return
        from adapters.logs import fields_of

        known = {key: value for key, value in fields_of(record).items() if value is not None}
        _json_line(record.getMessage(), record.levelname.lower(), elapsed=round(elapsed, 3), **known)


def _connect(verbose: bool) -> str:
    """Point Prefect at PREFECT_API_URL (with the caller's PREFECT_API_AUTH_STRING), or at the local server
    (started if need be) with the auth string of its home."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    if os.environ.get("PREFECT_API_URL"):
        return _reachable(os.environ["PREFECT_API_URL"])
    from adapters.server import LocalServer

    server = LocalServer(Settings.from_env().home)
    auth = server.auth_string()
    if os.environ.get("PREFECT_API_AUTH_STRING", auth) != auth:
        raise InputError("PREFECT_API_AUTH_STRING is set but PREFECT_API_URL is not: export PREFECT_API_URL of the "
                         "server it belongs to (`make server`: http://127.0.0.1:4200/api), or unset it to use the "
                         "local server")
    if not server.healthy():
        sys.stderr.write(f"starting a local Prefect server on 127.0.0.1:{server.port} "
                         f"(stop it with `sunday-release server stop`; its auth string is in {server.auth_file})\n")
    os.environ["PREFECT_API_URL"] = server.start()
    os.environ["PREFECT_API_AUTH_STRING"] = auth  # read by Prefect when it is imported, after this
    _local_prometheus()
    return os.environ["PREFECT_API_URL"]


def _local_prometheus() -> str | None:
    """SUNDAY_PROMETHEUS_URL, or the local Prometheus (adapters/prometheus.py: started beside the local server
    when none answers on its port), set as SUNDAY_PROMETHEUS_URL for the flows run here; None without one."""
    from sunday_release.prometheus import prometheus_url

    if (url := prometheus_url()) is not None:
        return url
    from adapters.prometheus import LocalPrometheus

    local = LocalPrometheus(Settings.from_env().home)
    url = local.start()
    if url is None:
        sys.stderr.write(f"no Prometheus on 127.0.0.1:{local.port} (Debian's prometheus package; `make setup`): "
                         "releases are judged without metrics\n")
        return None
    os.environ["SUNDAY_PROMETHEUS_URL"] = url
    return url


def _reachable(url: str) -> str:
    """`url` when a Prefect API answers there (any HTTP answer: authentication is Prefect's to refuse), else a
    PipelineError naming it, before any command starts half its work against a server that is not there."""
    import httpx

    from sunday_release.tls import tls_context

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=10, verify=tls_context())
    except httpx.HTTPError as exc:
        raise PipelineError(f"cannot reach the Prefect API at PREFECT_API_URL={url} ({exc}): start that server "
                            "(`make server`), or unset PREFECT_API_URL to use the local one") from None
    return url


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def cmd_validate(args: argparse.Namespace) -> int:
    root = Path(args.repo)
    if not root.is_dir():
        raise InputError(f"--repo: {args.repo!r} is not a directory")
    config = load_config(root)
    from sunday_release.policy import default_policy, enforce

    policy = None
    if os.environ.get("PREFECT_API_URL"):  # the policy registered on that server, if any
        from deployments.projects import read_policy

        try:
            policy = read_policy(config.project)
        except Exception as exc:  # the server is down or refuses us: say so, do not guess a policy
            raise PipelineError(f"cannot read the policy of {config.project!r} from {os.environ['PREFECT_API_URL']}: "
                                f"{exc}") from None
    policy = policy or default_policy(config.project)
    config = enforce(config, policy, str(root / CONFIG_FILE))
    whose = "the registered policy" if policy.registered else "the default policy (project not registered)"
    if args.json:
        _print_json(config.model_dump(mode="json"))
    else:
        print(f"{root / CONFIG_FILE}: valid — project {config.project}; services: {', '.join(config.services)}; "
              f"environments: {', '.join(config.environments)}; within {whose}")
    return EXIT_OK


def cmd_project(args: argparse.Namespace) -> int:
    """Register, show, list or remove a project's release policy on the Prefect server."""
    from deployments.projects import list_policies, read_policy, remove_policy, save_policy
    from sunday_release.policy import parse_policy

    _connect(args.verbose)
    if args.action == "list":
        policies = list_policies()
        if args.json:
            _print_json([p.model_dump(mode="json") for p in policies])
        else:
            print("\n".join(f"{p.project}\t{p.repo}" for p in policies) or "no project is registered")
        return EXIT_OK
    if not args.name:
        raise InputError(f"project {args.action}: a project NAME is required")
    validate.name(args.name, "project NAME")
    if args.action == "add":
        if not args.repo:
            raise InputError("project add: --repo is required (the one repository that may build the project)")
        data: dict[str, Any] = {}
        if args.policy:
            import yaml

            try:
                data = yaml.safe_load(Path(args.policy).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise InputError(f"--policy: cannot read {args.policy}: {exc}") from None
            if not isinstance(data, dict):
                raise InputError(f"--policy: {args.policy}: expected a mapping at the top level")
            for key in ("project", "repo"):
                if key in data:
                    raise InputError(f"--policy: {args.policy}: {key}: set by the command line, not the file")
        data.setdefault("registry", args.registry or "localhost:5000")
        data.setdefault("default_branch", "main")
        policy = parse_policy({**data, "project": args.name, "repo": validate_repo(args.repo)},
                              args.policy or "project add")
        save_policy(policy)
        print(f"project {policy.project} registered for {policy.repo}")
        return EXIT_OK
    if args.action == "remove":
        print(f"project {args.name} removed" if remove_policy(args.name) else f"project {args.name} was not registered")
        return EXIT_OK
    found = read_policy(args.name)
    if found is None:
        raise InputError(f"project {args.name!r} is not registered (`sunday-release project list`)")
    if args.json:
        _print_json(found.model_dump(mode="json"))
    else:
        import yaml

        print(yaml.safe_dump(found.model_dump(mode="json"), sort_keys=False).rstrip())
    return EXIT_OK


def _run_flow(name: str, verbose: bool, banner: str, **params: Any) -> tuple[int, dict[str, Any] | None, str]:
    """Run flow `name` of the flows package in this process; return (exit code, result, error text)."""
    api = _connect(verbose)
    import flows  # importing Prefect configures its logging: attach the printer after

    module, _, attr = {"ci": "flows.ci:ci", "cd": "flows.cd:cd", "rollback": "flows.cd:rollback",
                       "scale": "flows.cd:scale", "backup": "flows.cd:backup",
                       "restore": "flows.cd:restore", "e2e": "flows.e2e:e2e",
                       "gc": "flows.gc:gc",
                       "preview": "flows.preview:preview", "preview-close": "flows.preview:close_preview",
                       "previews-gc": "flows.preview:previews_gc",
                       }[name].partition(":")
    flow_fn = getattr(__import__(module, fromlist=[attr]), attr)
    del flows
    logging.getLogger("prefect").addHandler(_Progress())
    _say(f"{banner} (Prefect API {api})")
    state = flow_fn(**params, return_state=True)
    if state.is_completed():
        return EXIT_OK, state.result(), ""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, InputError):
        raise exc
    summary = exc.summary if isinstance(exc, StageFailed) and isinstance(exc.summary, dict) else None
    return EXIT_FAILED, summary, str(exc) or type(exc).__name__


def cmd_ci(args: argparse.Namespace) -> int:
    repo, ref = validate_repo(args.repo), validate_ref(args.ref)
    validate_sha(args.sha)
    where = f"{ref} ({args.sha[:12]})" if args.sha else ref
    code, summary, error = _run_flow("ci", args.verbose, f"CI of {repo} at {where}", repo=repo, ref=ref,
                                     sha=args.sha)
    if error:
        sys.stderr.write(f"CI failed:\n{error}\n")
    if args.json:
        _print_json(summary or {"state": "FAILED", "error": error})
    elif summary and "services" in summary:
        from sunday_release.ci_report import terminal_summary

        print(terminal_summary(summary))
    return code


def _finish(code: int, result: dict[str, Any] | None, error: str, as_json: bool, what: str) -> int:
    if error:
        sys.stderr.write(f"{what} failed: {error}\n")
    if as_json:
        _print_json(result or {"state": "FAILED", "error": error})
    elif result:
        print("  ".join(f"{k}: {v}" for k, v in result.items() if not isinstance(v, dict | list)))
        for key, value in result.items():  # lists (summary lines, artifacts) one item a line
            if isinstance(value, list) and value:
                print(f"{key}:\n" + "\n".join(f"  {item}" for item in value))
    return code


def cmd_cd(args: argparse.Namespace) -> int:
    validate.name(args.env, "--env")
    repo, version = validate_repo(args.repo), validate.ref(args.version, "--version")
    code, result, error = _run_flow("cd", args.verbose, f"CD of {version} to {args.env}", env=args.env,
                                    version=version, repo=repo, allow_older=args.allow_older)
    return _finish(code, result, error, args.json, "CD")


def _project(args: argparse.Namespace) -> str | None:
    """--project, checked; None when left out (the flow takes the one project that has the environment)."""
    return validate.name(args.project, "--project") if args.project is not None else None


def cmd_rollback(args: argparse.Namespace) -> int:
    validate.name(args.env, "--env")
    project = _project(args)
    Settings.from_env().resolve_project(args.env, project)  # exit 2 before a run: unknown or ambiguous
    code, result, error = _run_flow("rollback", args.verbose, f"rollback of {args.env}", env=args.env, to=args.to,
                                    project=project)
    return _finish(code, result, error, args.json, "rollback")


def cmd_backup(args: argparse.Namespace) -> int:
    validate.name(args.env, "--env")
    project = _project(args)
    Settings.from_env().resolve_project(args.env, project)  # exit 2 before a run: unknown or ambiguous
    code, result, error = _run_flow("backup", args.verbose, f"backup of {args.env}", env=args.env, project=project)
    return _finish(code, result, error, args.json, "backup")


def cmd_restore(args: argparse.Namespace) -> int:
    from sunday_release.backup import check_backup_key
    from tasks.backup import backup_prefix

    validate.name(args.env, "--env")
    project = Settings.from_env().resolve_project(args.env, _project(args))  # exit 2 before a run
    check_backup_key(args.key, backup_prefix(project, args.env))
    code, result, error = _run_flow("restore", args.verbose, f"restore of {args.env} from {args.key}", env=args.env,
                                    key=args.key, project=project)
    return _finish(code, result, error, args.json, "restore")


def cmd_backups(args: argparse.Namespace) -> int:
    validate.name(args.env, "--env")
    project = Settings.from_env().resolve_project(args.env, _project(args))
    from tasks.backup import backups_of_environment

    found = backups_of_environment(project, args.env)
    if args.json:
        _print_json(found)
    elif not found:
        print(f"no backups of {project}/{args.env}")
    for backup in [] if args.json else found:
        print(f"{backup['stored']:<32} {backup['size']:>12}  {backup['key']}")
    return EXIT_OK


def cmd_scale(args: argparse.Namespace) -> int:
    validate.name(args.env, "--env")
    validate.name(args.service, "--service")
    project = _project(args)
    Settings.from_env().resolve_project(args.env, project)  # exit 2 before a run: unknown or ambiguous
    code, result, error = _run_flow("scale", args.verbose, f"scale {args.service} of {args.env}", env=args.env,
                                    service=args.service, replicas=args.replicas, project=project)
    return _finish(code, result, error, args.json, "scale")


def cmd_e2e(args: argparse.Namespace) -> int:
    validate.name(args.env, "--env")
    project = _project(args)
    if args.history:
        from sunday_release.e2e import history, render_history

        records = history(args.history, env=args.env, project=project)
        if args.json:
            _print_json(records)
        else:
            print(render_history(records))
        return EXIT_OK
    project = Settings.from_env().resolve_project(args.env, project)  # exit 2 before a run: unknown or ambiguous
    code, result, error = _run_flow("e2e", args.verbose, f"E2E of {project}/{args.env}", env=args.env,
                                    update_baselines=args.update_baselines, project=project)
    return _finish(code, result, error, args.json, "E2E")


def cmd_gc(args: argparse.Namespace) -> int:
    from sunday_release.hygiene import Retention

    Retention(args.workspace_days, args.run_days, args.check_image_days)  # exit 2 before a run
    project = _project(args)
    code, result, error = _run_flow("gc", args.verbose, "gc of this worker", workspace_days=args.workspace_days,
                                    run_days=args.run_days, check_image_days=args.check_image_days,
                                    project=project, dry_run=args.dry_run)
    return _finish(code, result, error, args.json, "gc")


def cmd_webhook(args: argparse.Namespace) -> int:
    _connect(args.verbose)  # the events go to the same Prefect server as the runs
    from adapters.webhook import serve

    serve(args.port, host=args.host, config_path=Path(args.repo) if args.repo else None)
    return EXIT_OK


def cmd_dora(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from sunday_release.dora import dora_by_project, records_from_flow_runs, render, to_json

    if args.days < 1:
        raise InputError(f"--days: {args.days} is not a positive number of days")
    env, project = validate.name(args.env, "--env"), _project(args)
    _connect(args.verbose)
    from prefect.client.orchestration import get_client

    from adapters.pipeline_metrics import deploy_runs

    until = datetime.now(UTC)
    since = until - timedelta(days=args.days)
    with get_client(sync_client=True) as client:
        plain = deploy_runs(client)
    reports = dora_by_project(records_from_flow_runs(plain), env, since, until, project)
    if args.json:
        _print_json({"env": env, "project": project, "since": since.isoformat(), "until": until.isoformat(),
                     "reports": [to_json(report) for report in reports]})
    elif reports:
        print("\n".join(render(report) for report in reports), end="")
    else:
        print(f"no deploys of {env} in the last {args.days} days")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from sunday_release.prometheus import prometheus_url
    from sunday_release.status import environment_status, render_status

    if prometheus_url() is None and "PREFECT_API_URL" not in os.environ:  # the CLI's own platform
        from adapters.prometheus import LocalPrometheus

        if (local := LocalPrometheus(Settings.from_env().home)).ready():
            os.environ["SUNDAY_PROMETHEUS_URL"] = local.url
    status = environment_status(validate.name(args.env, "--env"), _project(args))
    if args.json:
        _print_json(status)
    else:
        print(render_status(status))
    return EXIT_OK if status["serving"] else EXIT_FAILED


def cmd_preview(args: argparse.Namespace) -> int:
    from sunday_release.refs import pull_ref

    repo = validate_repo(args.repo)
    if not 1 <= args.pr <= 999_999_999:
        raise InputError(f"--pr: {args.pr} is not a pull request number")
    if args.close:
        code, result, error = _run_flow("preview-close", args.verbose, f"removing the preview of pull request "
                                        f"{args.pr}", repo=repo, ref=pull_ref(args.pr))
        return _finish(code, result, error, args.json, "preview close")
    if args.sha is None or len(validate_sha(args.sha) or "") != 40:
        raise InputError(f"--sha: {args.sha!r} is not a full commit SHA (the pull request's head commit that "
                         "passed CI)")
    code, result, error = _run_flow("preview", args.verbose, f"preview of pull request {args.pr} at "
                                    f"{args.sha[:12]}", repo=repo, ref=pull_ref(args.pr), sha=args.sha)
    return _finish(code, result, error, args.json, "preview")


def cmd_previews(args: argparse.Namespace) -> int:
    project = _project(args)
    if args.expire:
        code, result, error = _run_flow("previews-gc", args.verbose, "stopping the previews past their TTL",
                                        repo=validate_repo(args.repo))
        return _finish(code, result, error, args.json, "previews --expire")
    _connect(args.verbose)
    from tasks.preview import read_previews

    records = read_previews(project)
    if args.json:
        _print_json([r.to_json() for r in records])
        return EXIT_OK
    if not records:
        print("no previews" + (f" of {project}" if project else ""))
        return EXIT_OK
    print(f"{'PROJECT':<16} {'ENV':<10} {'STATE':<10} {'COMMIT':<13} {'PUSHED':<20} URL / REASON")
    for r in records:
        print(f"{r.project:<16} {r.env:<10} {r.state:<10} {r.sha[:12]:<13} "
              f"{r.pushed.strftime('%Y-%m-%d %H:%M UTC'):<20} {r.url or r.reason or '-'}")
    return EXIT_OK


def cmd_exporter(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port: {args.port} is not a TCP port")
    if args.days < 1:
        raise InputError(f"--days: {args.days} is not a positive number of days")
    _connect(args.verbose)
    from adapters.pipeline_metrics import serve
    from sunday_release.router_log import RouterLogs

    env_root = Settings.from_env().env_root
    sys.stderr.write(f"the pipeline's metrics on http://{args.host}:{args.port}/metrics (Prefect API "
                     f"{os.environ['PREFECT_API_URL']}); the routers of {env_root} on /router/metrics\n")
    serve(args.host, args.port, days=args.days, routers=RouterLogs(env_root))
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    """The local development stack of the application at --repo (docs/dev-stack.md)."""
    from adapters.devstack import DevStackEngine
    from sunday_release.devstack import ENV_FILE, is_our_env_file, plan

    root = Path(args.repo)
    if not root.is_dir():
        raise InputError(f"--repo: {args.repo!r} is not a directory")
    if args.volumes and args.action != "down":
        raise InputError(f"--volumes: only with `dev down` (it removes the stack's data), not `dev {args.action}`")
    config = load_config(root, check_files=False)
    _LOG["project"] = config.project
    env_file = root.resolve() / ENV_FILE
    ours = env_file.is_file() and is_our_env_file(env_file.read_text(encoding="utf-8", errors="replace"))
    engine = DevStackEngine(config.project, config.base_image, say=_say)
    if args.action == "down":  # without a `dev:` section too: what its project's label marks goes
        return _dev_down(engine, env_file if ours else None, args.volumes, args.json)
    if config.dev is None:
        raise ConfigError(str(root / CONFIG_FILE), "dev", "no `dev:` section: declare what the application needs, "
                          "e.g. `dev: {postgres: {}, redis: {}, s3: {buckets: [uploads]}}` (docs/dev-stack.md)")
    services = plan(config.project, config.dev)
    if args.action == "status":
        return _dev_status(engine, services, args.json)
    if env_file.exists() and not ours:
        raise InputError(f"{env_file} exists and was not written by `sunday-release dev up`: move it away first")
    return _dev_up(engine, services, env_file, args.json)


def _dev_up(engine: DevStackEngine, services: Sequence[DevService], env_file: Path, as_json: bool) -> int:
    from adapters.devstack import write_private
    from sunday_release.devstack import env_file_text, urls, variables

    started = engine.up(services)
    endpoints = [endpoint for endpoint, _ in started]
    try:
        write_private(env_file, env_file_text(engine.project, variables(endpoints)))
    except OSError as exc:
        raise PipelineError(f"the stack runs, but {env_file} could not be written: {exc}") from None
    shown = urls(endpoints)
    rows = [(endpoint.kind, shown[endpoint.kind], service.container, action)
            for (endpoint, action), service in zip(started, services, strict=True)]
    if as_json:
        _print_json({"project": engine.project, "env_file": str(env_file),
                     "services": [dict(zip(("kind", "url", "container", "action"), row, strict=True))
                                  for row in rows]})
        return EXIT_OK
    for kind, url, container, action in rows:
        print(f"{kind:<11} {url:<52} {container} ({action}, healthy)")
    print(f"environment (passwords included, mode 0600): {env_file}\n  set -a; . {env_file}; set +a")
    return EXIT_OK


def _dev_status(engine: DevStackEngine, services: Sequence[DevService], as_json: bool) -> int:
    rows = engine.status(services)
    if as_json:
        _print_json({"project": engine.project, "services": [vars(row) for row in rows]})
    for row in [] if as_json else rows:
        health = "healthy" if row.healthy else (row.problem or "-")
        print(f"{row.kind:<11} {row.container:<40} {row.state:<13} {health:<8}  {row.url or ''}".rstrip())
    return EXIT_OK if all(row.healthy for row in rows) else EXIT_FAILED


def _dev_down(engine: DevStackEngine, env_file: Path | None, volumes: bool, as_json: bool) -> int:
    containers, removed = engine.down(volumes=volumes)
    if env_file is not None:
        env_file.unlink()
    if as_json:
        _print_json({"project": engine.project, "containers": containers, "volumes": removed})
    else:
        print(f"removed {len(containers)} container(s) of {engine.project}'s dev stack"
              + (f" and {len(removed)} volume(s): its data is gone" if volumes
                 else "; its data stays in its volumes (`dev down --volumes` removes them)"))
    return EXIT_OK


def cmd_server(args: argparse.Namespace) -> int:
    from adapters.server import LocalServer

    server = LocalServer(Settings.from_env().home)
    if args.action == "start":
        print(f"Prefect server: {server.start()} (UI http://127.0.0.1:{server.port})")
    elif args.action == "stop":
        from adapters.prometheus import LocalPrometheus

        print("stopped" if server.stop() else "no local server was running")
        if LocalPrometheus(Settings.from_env().home).stop():
            print("stopped its Prometheus")
    else:
        print(f"{'running' if server.healthy() else 'not running'}: {server.api_url}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sunday-release", description="The release pipeline, as Prefect flows.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="stderr as text, or one JSON object a line (time, level, run_id, project, env, service, "
                             "step, message)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help=f"check {CONFIG_FILE} of a repository")
    p.add_argument("--repo", default=".", help="the application repository (default: .)")
    p.add_argument("--json", action="store_true", help="print the config with all defaults filled in")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("project", help="register a project's release policy on the Prefect server")
    p.add_argument("action", choices=["add", "show", "list", "remove"])
    p.add_argument("name", nargs="?", help="the project (as in sunday-release.yaml)")
    p.add_argument("--repo", help="add: the one repository that may build the project")
    p.add_argument("--registry", help="add: the registry its images go to (default localhost:5000)")
    p.add_argument("--policy", help="add: a YAML file of policy keys (docs/security.md)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("ci", help="run CI on a ref: checks of every service, repository scan")
    p.add_argument("--repo", required=True, help="a local git repository or a git URL")
    p.add_argument("--ref", required=True, help="branch, tag or commit SHA")
    p.add_argument("--sha", help="the commit of --ref to build (it must be on the ref); default: its tip")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results")
    p.set_defaults(func=cmd_ci)

    p = sub.add_parser("cd", help="deploy a version that passed CI to an environment (blue-green)")
    p.add_argument("--env", required=True, help="environment name from the config")
    p.add_argument("--version", required=True, help="full commit SHA or release tag")
    p.add_argument("--repo", default=".", help="the application repository (its config at that version)")
    p.add_argument("--allow-older", action="store_true",
                   help="deploy even if the version is older than the live one (otherwise refused)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cd)

    p = sub.add_parser("exporter", help="serve the pipeline's own metrics (DORA, runs, failures) and the routers' "
                                        "(from their access logs) for Prometheus")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9469)
    p.add_argument("--days", type=int, default=30, help="the DORA window (as `dora --days`)")
    p.set_defaults(func=cmd_exporter)

    p = sub.add_parser("status", help="live color, revision, version and health of an environment")
    p.add_argument("--env", required=True)
    p.add_argument("--project", help="the project (`project:` of its config); needed when several have --env")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rollback", help="emergency rollback to the previous or a named kept revision")
    p.add_argument("--env", required=True)
    p.add_argument("--project", help="the project (`project:` of its config); needed when several have --env")
    p.add_argument("--to", type=int, default=None, metavar="REVISION")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("backup", help="an emergency backup of an environment's database now (verified, to S3)")
    p.add_argument("--env", required=True)
    p.add_argument("--project", help="the project (`project:` of its config); needed when several have --env")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("backups", help="the verified backups of an environment in S3, newest first")
    p.add_argument("--env", required=True)
    p.add_argument("--project", help="the project (`project:` of its config); needed when several have --env")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backups)

    p = sub.add_parser("restore", help="restore a backup into a new database and move the environment onto it")
    p.add_argument("--env", required=True)
    p.add_argument("--from", dest="key", required=True, metavar="KEY", help="the backup's key (sunday-release backups)")
    p.add_argument("--project", help="the project (`project:` of its config); needed when several have --env")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("scale", help="set the replicas of a service in the live color")
    p.add_argument("--env", required=True)
    p.add_argument("--project", help="the project (`project:` of its config); needed when several have --env")
    p.add_argument("--service", required=True)
    p.add_argument("--replicas", type=int, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("e2e", help="Playwright journeys, visual regression and k6 against an environment")
    p.add_argument("--env", required=True)
    p.add_argument("--project", help="the environment's project (optional when only one project has --env)")
    p.add_argument("--update-baselines", action="store_true", help="rewrite the visual baselines deliberately")
    p.add_argument("--history", type=int, nargs="?", const=10, default=0, metavar="N",
                   help="show the last N runs side by side instead of running")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_e2e)

    p = sub.add_parser("gc", help="remove workspaces, run directories and check images past their retention")
    p.add_argument("--workspace-days", type=float, default=7, help="keep workspaces this many days (min 1)")
    p.add_argument("--run-days", type=float, default=14, help="keep run directories (reports) this many days (min 1)")
    p.add_argument("--check-image-days", type=float, default=3, help="keep sunday-ci/* check images (min 1)")
    p.add_argument("--project", help="only this project's check images")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("webhook", help="serve the git receiver (HMAC-verified): pushes and pull requests become "
                       "git.push and git.pull_request events")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--repo", default=None, help="repository (or its sunday-release.yaml) for the refs to build")
    p.set_defaults(func=cmd_webhook)

    p = sub.add_parser("dora", help="DORA metrics from the server's deploy history, one report per project")
    p.add_argument("--env", default="production")
    p.add_argument("--project", help="only this project's environment (default: one report per project)")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dora)

    p = sub.add_parser("preview", help="deploy a pull request's head commit (CI passed) to its preview pr-N, "
                       "then E2E; or remove it (--close)")
    p.add_argument("--pr", type=int, required=True, help="the pull request's number")
    p.add_argument("--sha", help="its head commit that passed CI (full SHA)")
    p.add_argument("--repo", default=".", help="the repository (the pull request's base)")
    p.add_argument("--close", action="store_true", help="remove the preview: containers, database, router, images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("previews", help="the pull requests' preview environments: state, commit, URL")
    p.add_argument("--project", help="only this project's")
    p.add_argument("--expire", action="store_true",
                   help="stop the previews past their project's TTL now (what the previews-gc deployment does hourly)")
    p.add_argument("--repo", default=".", help="--expire: the repository (its commits get the statuses)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_previews)

    p = sub.add_parser("dev", help="the local development stack: the dependencies the config's `dev:` declares "
                       "(postgres, redis, s3, prometheus, mail) in containers, with a .env.dev of their URLs")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--repo", default=".", help="the application repository (default: .); .env.dev is written there")
    p.add_argument("--volumes", action="store_true", help="down: also remove the volumes, that is the data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("server", help="the local Prefect server used when PREFECT_API_URL is not set")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(func=cmd_server)
    return parser


def _valid_name(value: object) -> str | None:
    """`value` when it is a valid project or environment name (a field of every JSON log line), else None."""
    return value if isinstance(value, str) and re.fullmatch(validate.NAME_PATTERN, value) else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _LOG.update(json=args.log_format == "json", env=_valid_name(getattr(args, "env", None)),
                project=_valid_name(getattr(args, "project", None)))
    try:
        return int(args.func(args))
    except InputError as exc:
        _say(f"sunday-release: error: {exc}", "error")
        return EXIT_BAD_INPUT
    except PipelineError as exc:
        _say(f"sunday-release: failed: {exc}", "error")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def console() -> int:
    """The `sunday-release` program: `main()`, then an exit without a collector pass over every object left."""
    code = main()
    gc.freeze()  # the interpreter's teardown then skips them: about 0.2 s less per command with Prefect loaded
    return code


if __name__ == "__main__":
    sys.exit(console())
