"""The pipeline's own metrics for Prometheus, read from the Prefect API: `sunday-release exporter --port 9469`.

Each scrape (answers cached for `ttl` seconds, 50: it reads the last runs and their results) reads the
recent flow and task runs and exports:
- `sunday_flow_runs{flow, state}`: runs of each pipeline flow that ended (or are) in each state, in the window;
- `sunday_flow_run_duration_seconds{flow, quantile}`: p50 and p90 of the completed runs' durations;
- `sunday_flow_run_queue_wait_seconds{flow, quantile}`: from when a run was due to when it started (the queue);
- `sunday_task_run_failures{flow, stage, cause}`: failed (or crashed) task runs by stage (`build`, `test`, `scan`,
  …) and cause (`failure_cause`: `check`, `gate`, `rollout`, `infrastructure`, `timeout`, `crashed`, …);
- `sunday_deploys{project, env, outcome}`, and DORA per environment over `days` (the same numbers as
  `sunday-release dora`): `sunday_dora_deployment_frequency_per_day`, `sunday_dora_lead_time_seconds{quantile}`,
  `sunday_dora_change_failure_rate`, `sunday_dora_time_to_restore_seconds`;
- `sunday_last_successful_deploy_timestamp_seconds{project, env}` and `sunday_last_ci_run_timestamp_seconds{project}`
  (CI runs carry `project:NAME`): the rule SundayPipelineStuck compares them.
`make server` starts it and the platform's Prometheus scrapes it (job sunday-pipeline).

`/router/metrics` is the docker target's routers, from their access logs (sunday_release/router_log.py: requests
by color and status, `$request_time` as a histogram, the live color), read on each scrape (job sunday-routers).
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from sunday_release.dora import DoraReport, dora_by_project, records_from_flow_runs
from sunday_release.router_log import RouterLogs
from sunday_release.run_tags import parse_project_tag

__all__ = ["PIPELINE_FLOWS", "collect", "deploy_runs", "failure_cause", "metrics_server", "router_metrics", "serve"]

PIPELINE_FLOWS = ("ci", "cd", "rollback", "scale", "backup", "restore", "e2e", "preview", "preview-close",
                  "previews-gc", "gc")
WINDOW_HOURS = 24


def deploy_runs(client: Any, limit: int = 200) -> list[dict[str, Any]]:
    """The `cd` and `rollback` flow runs as plain records for sunday_release.dora (`records_from_flow_runs`)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["cd", "rollback"])), limit=limit)
    flows = {f.id: f.name for f in client.read_flows(limit=200)}
    plain = []
    for r in runs:
        result = None
        if r.state is not None and r.state.is_completed():
            try:
                result = r.state.result(raise_on_failure=False)
            except Exception:  # a result that cannot be read here (other machine's storage)
                result = None
        plain.append({"name": r.name, "flow_name": flows.get(r.flow_id), "state_type": r.state_type.value
                      if r.state_type else None, "start_time": r.start_time, "end_time": r.end_time,
                      "parameters": r.parameters, "state_message": r.state.message if r.state else None,
                      "tags": list(r.tags), "result": result if isinstance(result, dict) else None})
    return plain


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"0.5": statistics.median(ordered), "0.9": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def _stage(task_name: str) -> str:
    """`build[backend linux/amd64]` → `build`: the stage, never the service (bounded labels)."""
    return re.sub(r"\[.*\]$", "", task_name)


# the error tree's kinds (sunday_release/errors.py) as causes: a bounded label, never the message
_CAUSES = {"CheckFailed": "check", "GateFailed": "gate", "RolloutAborted": "rollout", "TagExists": "tag-exists",
           "DockerUnavailable": "infrastructure", "CommandFailed": "command", "InputError": "input",
           "ConfigError": "input", "StageFailed": "stage"}


def failure_cause(state_type: str | None, message: str | None) -> str:
    """Why a task run failed, from its final state: `crashed` (its process died), `timeout` (its own timeout, or a
    command that timed out), the kind of pipeline error it raised (`check`, `gate`, `rollout`, `infrastructure`,
    `command`, `input`, `tag-exists`, `stage`), or `error` for any other exception."""
    text = message or ""
    if state_type == "CRASHED":
        return "crashed"
    if "exceeded timeout" in text or "failed due to timeout" in text:
        return "timeout"
    raised = re.search(r"encountered an exception ([A-Za-z_][\w.]*):", text)
    cause = _CAUSES.get(raised.group(1).rsplit(".", 1)[-1], "error") if raised else "error"
    if cause == "command" and re.search(r"^command '[^']*' timed out", text[raised.end():].lstrip() if raised else ""):
        return "timeout"
    return cause


def _environments(records: Iterable[Any]) -> dict[str, set[str]]:
    envs: dict[str, set[str]] = {}
    for record in records:
        envs.setdefault(record.env, set()).add(record.project)
    return envs


def _dora(reports: Iterable[DoraReport]) -> Iterator[GaugeMetricFamily]:
    frequency = GaugeMetricFamily("sunday_dora_deployment_frequency_per_day",
                                  "Successful changes per day (DORA), as sunday-release dora",
                                  labels=["project", "env"])
    lead = GaugeMetricFamily("sunday_dora_lead_time_seconds", "Lead time for changes (DORA): commit to live",
                             labels=["project", "env", "quantile"])
    failure = GaugeMetricFamily("sunday_dora_change_failure_rate", "Failed changes / changes (DORA)",
                                labels=["project", "env"])
    restore = GaugeMetricFamily("sunday_dora_time_to_restore_seconds", "Median time to restore (DORA)",
                                labels=["project", "env"])
    deploys = GaugeMetricFamily("sunday_deploys", "Deploys (changes) in the DORA window, by outcome",
                                labels=["project", "env", "outcome"])
    rollbacks = GaugeMetricFamily("sunday_rollbacks", "Emergency rollbacks in the DORA window",
                                  labels=["project", "env"])
    for report in reports:
        where = [report.project or "", report.env]
        frequency.add_metric(where, report.deployment_frequency)
        if report.lead_time_for_changes is not None:
            lead.add_metric([*where, "0.5"], report.lead_time_for_changes.median)
            lead.add_metric([*where, "0.9"], report.lead_time_for_changes.p90)
        if report.change_failure_rate is not None:
            failure.add_metric(where, report.change_failure_rate)
        if report.time_to_restore is not None:
            restore.add_metric(where, report.time_to_restore)
        deploys.add_metric([*where, "live"], report.successful)
        deploys.add_metric([*where, "failed"], report.failed_changes)
        rollbacks.add_metric(where, report.rollbacks)
    yield from (frequency, lead, failure, restore, deploys, rollbacks)


def collect(client: Any, now: datetime | None = None, days: int = 30) -> list[GaugeMetricFamily]:
    """Every metric, read through `client` (a sync Prefect client) now."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterStartTime,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    now = now or datetime.now(UTC)
    since = now - timedelta(hours=WINDOW_HOURS)
    flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(
        any_=list(PIPELINE_FLOWS))), limit=200)}
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=list(PIPELINE_FLOWS))),
                                 flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
                                 limit=200)
    states: Counter[tuple[str, str]] = Counter()
    durations: dict[str, list[float]] = {}
    waits: dict[str, list[float]] = {}
    last_ci: dict[str, float] = {}
    for run in runs:
        flow = flows.get(run.flow_id, "")
        states[(flow, run.state_type.value if run.state_type else "UNKNOWN")] += 1
        if run.state_type == StateType.COMPLETED and run.start_time and run.end_time:
            durations.setdefault(flow, []).append((run.end_time - run.start_time).total_seconds())
        if run.start_time and run.expected_start_time:
            waits.setdefault(flow, []).append(max(0.0, (run.start_time - run.expected_start_time).total_seconds()))
        if flow == "ci":
            for tag in run.tags:
                if (project := parse_project_tag(tag)) is not None and run.start_time is not None:
                    last_ci[project] = max(last_ci.get(project, 0.0), run.start_time.timestamp())
    failed_tasks = client.read_task_runs(
        flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
        task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since),
                                      state=TaskRunFilterState(type=TaskRunFilterStateType(
                                          any_=[StateType.FAILED, StateType.CRASHED]))),
        limit=200)
    run_flow = {run.id: flows.get(run.flow_id, "") for run in runs}
    failures: Counter[tuple[str, str, str]] = Counter()
    for task in failed_tasks:
        cause = failure_cause(task.state_type.value if task.state_type else None,
                              task.state.message if task.state else None)
        failures[(run_flow.get(task.flow_run_id, ""), _stage(task.name), cause)] += 1

    metrics = []
    family = GaugeMetricFamily("sunday_flow_runs", f"Pipeline flow runs started in the last {WINDOW_HOURS} h, by "
                               "state", labels=["flow", "state"])
    for (flow, state), count in sorted(states.items()):
        family.add_metric([flow, state], count)
    metrics.append(family)
    for name, doc, values in (("sunday_flow_run_duration_seconds", "Completed runs' durations", durations),
                              ("sunday_flow_run_queue_wait_seconds", "From due to started (the queue)", waits)):
        family = GaugeMetricFamily(name, f"{doc}, last {WINDOW_HOURS} h", labels=["flow", "quantile"])
        for flow, found in sorted(values.items()):
            for quantile, value in _quantiles(found).items():
                family.add_metric([flow, quantile], value)
        metrics.append(family)
    family = GaugeMetricFamily("sunday_task_run_failures", f"Failed task runs by stage and cause, last "
                               f"{WINDOW_HOURS} h", labels=["flow", "stage", "cause"])
    for (flow, stage, cause), count in sorted(failures.items()):
        family.add_metric([flow, stage, cause], count)
    metrics.append(family)

    records = records_from_flow_runs(deploy_runs(client))
    reports = [report for env in sorted(_environments(records))
               for report in dora_by_project(records, env, now - timedelta(days=days), now, None)]
    metrics += list(_dora(reports))
    last_live = GaugeMetricFamily("sunday_last_successful_deploy_timestamp_seconds",
                                  "When the last change went live, per environment", labels=["project", "env"])
    latest: dict[tuple[str, str], float] = {}
    for record in records:
        if record.outcome == "live" and not record.is_rollback:
            key = (record.project, record.env)
            latest[key] = max(latest.get(key, 0.0), record.finished.timestamp())
    for (project, env), stamp in sorted(latest.items()):
        last_live.add_metric([project, env], stamp)
    metrics.append(last_live)
    family = GaugeMetricFamily("sunday_last_ci_run_timestamp_seconds", "When the last CI run of a project started "
                               "(pushes and pull requests)", labels=["project"])
    for project, stamp in sorted(last_ci.items()):
        family.add_metric([project], stamp)
    metrics.append(family)
    return metrics


class _Cached:
    def __init__(self, ttl: float) -> None:
        self.ttl, self.lock, self.at, self.body = ttl, threading.Lock(), 0.0, b""

    def get(self, days: int) -> bytes:
        with self.lock:
            if time.monotonic() - self.at > self.ttl:
                from prefect.client.orchestration import get_client

                with get_client(sync_client=True) as client:
                    metrics = collect(client, days=days)
                registry = CollectorRegistry()
                registry.register(_Fixed(metrics))  # type: ignore[arg-type]
                self.body, self.at = generate_latest(registry), time.monotonic()
            return self.body


class _Fixed:
    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Any]:
        return self.metrics


def router_metrics(routers: RouterLogs) -> list[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
    """The routers' metrics, after reading what their access logs gained."""
    routers.refresh()
    requests = CounterMetricFamily("sunday_router_requests", "Requests through an environment's router, by the "
                                   "color that answered and the HTTP status", labels=["project", "env", "color",
                                                                                     "code"])
    for project, env, color, code, count in routers.requests():
        requests.add_metric([project, env, color, code], count)
    durations = HistogramMetricFamily("sunday_router_request_duration_seconds", "nginx's $request_time of the "
                                      "router's requests", labels=["project", "env", "color"])
    for project, env, color, buckets, total in routers.durations():
        durations.add_metric([project, env, color], buckets, total)
    live = GaugeMetricFamily("sunday_router_live_color", "1 for the color an environment's router sends traffic to",
                             labels=["project", "env", "color"])
    for (project, env), color in sorted(routers.live_colors().items()):
        live.add_metric([project, env, color], 1)
    return [requests, durations, live]


def serve(host: str, port: int, days: int = 30, ttl: float = 50.0, routers: RouterLogs | None = None) -> None:
    """Serve GET /metrics (the pipeline's) and, with `routers`, GET /router/metrics until interrupted."""
    server = metrics_server(host, port, days, ttl, routers)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def metrics_server(host: str, port: int, days: int = 30, ttl: float = 50.0,
                   routers: RouterLogs | None = None) -> ThreadingHTTPServer:
    """The HTTP server of `serve`, bound and not yet serving."""
    cache = _Cached(ttl)
    router_lock = threading.Lock()

    def router_body() -> bytes:
        assert routers is not None
        with router_lock:
            registry = CollectorRegistry()
            registry.register(_Fixed(router_metrics(routers)))  # type: ignore[arg-type]
            return generate_latest(registry)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/router/metrics" and routers is not None:
                body, code = router_body(), 200
            elif path != "/metrics":
                self.send_error(404)
                return
            else:
                try:
                    body, code = cache.get(days), 200
                except Exception as exc:  # the API is down: say so, as a scrape error
                    body, code = f"# Prefect API: {type(exc).__name__}: {exc}\n".encode(), 503
            self.send_response(code)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)
