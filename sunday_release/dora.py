"""DORA metrics of one environment `(project, env)` from its deploy history (pure: no Prefect, no I/O).

Two projects may each have a `staging`: their histories are apart, one report each
(`dora_by_project`). The four keys, over the records of `(project, env)` whose `finished` falls in
`[since, until)`:

- **deployment frequency**: successful changes (`cd` runs that went live; emergency rollbacks are
  not changes) per day of the window.
- **lead time for changes**: `finished - commit_time` of those successful changes (median and
  p90, nearest rank), in seconds; changes without a commit time are left out.
- **change failure rate**: failed changes / all changes. A change failed when its run ended
  `rolled-back` or `failed`, or when an emergency rollback run blamed it: each rollback run blames
  the latest change before it that went live and was not blamed already (that is the revision it
  took out of service; with nothing in between it is "the deploy right before the rollback").
- **time to restore**: for each failed change, from the moment it failed (its `finished`: when a
  rolled-back/failed run ended, or when a later-blamed change went live) to the `finished` of the
  first successful run after it that restored service — the blaming rollback itself when that
  succeeded, otherwise the next run (deploy or rollback) that went live. Median, in seconds;
  failures not restored inside the window are left out (and counted in `unrestored`).

`records_from_flow_runs` turns Prefect flow-run records (plain dicts, fetched by the caller) into
`DeployRecord`s; its docstring holds the mapping.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sunday_release.run_tags import parse_env_tag

__all__ = [
    "DeployRecord",
    "DoraReport",
    "LeadTime",
    "Outcome",
    "dora",
    "dora_by_project",
    "format_duration",
    "records_from_flow_runs",
    "render",
    "to_json",
]

Outcome = Literal["live", "rolled-back", "failed"]
_FAILED: frozenset[str] = frozenset({"rolled-back", "failed"})
_DAY = 86400.0


@dataclass(frozen=True)
class DeployRecord:
    """One run that changed (or tried to change) what an environment serves.

    Attributes:
        env: the environment.
        version: the commit SHA or release tag deployed.
        commit_time: when the deployed commit was made (tz-aware); None when unknown.
        started: when the run started.
        finished: when the run ended (the deploy time the window and the ordering use).
        outcome: `live` (it went live), `rolled-back` (the run rolled itself back), `failed`.
        is_rollback: an emergency rollback run (`sunday-release rollback`), not a change.
        project: the project of the environment ("" when unknown: a run from before projects).
    """

    env: str
    version: str
    commit_time: datetime | None
    started: datetime
    finished: datetime
    outcome: Outcome
    is_rollback: bool = False
    project: str = ""


@dataclass(frozen=True)
class LeadTime:
    """Lead time for changes, in seconds, over `samples` successful changes."""

    median: float
    p90: float
    samples: int


@dataclass(frozen=True)
class DoraReport:
    """The four keys of `(project, env)` over `[since, until)`, and the counts behind them."""

    env: str
    since: datetime
    until: datetime
    days: float
    deployments: int  # changes attempted (cd runs), whatever their outcome
    successful: int  # changes that went live
    rollbacks: int  # emergency rollback runs
    failed_changes: int
    deployment_frequency: float  # successful changes per day
    lead_time_for_changes: LeadTime | None
    change_failure_rate: float | None
    time_to_restore: float | None  # median seconds
    restores: int  # failed changes restored inside the window
    unrestored: int  # failed changes not restored inside the window
    project: str | None = None  # None: every project's records of `env` together


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: expected a timezone-aware datetime, got {value.isoformat()}")
    return value


def _p90(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(0.9 * len(ordered)), 1) - 1]


def _failures(history: Sequence[DeployRecord]) -> list[tuple[DeployRecord, float | None]]:
    """Each failed change with its time to restore in seconds (None: not restored in `history`)."""
    blamed: dict[int, int] = {}  # index of the blamed change → index of the rollback that blamed it
    for i, rec in enumerate(history):
        if not rec.is_rollback:
            continue
        for j in range(i - 1, -1, -1):
            prev = history[j]
            if not prev.is_rollback and prev.outcome == "live" and j not in blamed:
                blamed[j] = i
                break
    out: list[tuple[DeployRecord, float | None]] = []
    for i, rec in enumerate(history):
        if rec.is_rollback or (rec.outcome not in _FAILED and i not in blamed):
            continue
        start = blamed.get(i, i)  # a blamed change is restored by its rollback or by what came after it
        restored = next((h for h in history[start:] if h is not rec and h.outcome == "live"), None)
        seconds = (restored.finished - rec.finished).total_seconds() if restored else None
        out.append((rec, seconds))
    return out


def _window(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    since, until = _aware(since, "since"), _aware(until, "until")
    if until <= since:
        raise ValueError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    return since, until


def dora(records: Iterable[DeployRecord], env: str, since: datetime, until: datetime,
         project: str | None = None) -> DoraReport:
    """The DORA metrics of `(project, env)` from the records finished in `[since, until)` (see the module docstring).

    `project` None takes the records of `env` whatever their project (one history).

    Raises:
        ValueError: `since`/`until` are naive or `until` is not after `since`.
    """
    since, until = _window(since, until)
    history = sorted((r for r in records if r.env == env and (project is None or r.project == project)
                      and since <= _aware(r.finished, "finished") < until),
                     key=lambda r: (r.finished, r.started))
    changes = [r for r in history if not r.is_rollback]
    live = [r for r in changes if r.outcome == "live"]
    days = (until - since).total_seconds() / _DAY
    leads = [(r.finished - _aware(r.commit_time, "commit_time")).total_seconds()
             for r in live if r.commit_time is not None]
    failures = _failures(history)
    restore_times = [s for _, s in failures if s is not None]
    return DoraReport(
        env=env, since=since, until=until, days=days,
        deployments=len(changes), successful=len(live), rollbacks=len(history) - len(changes),
        failed_changes=len(failures),
        deployment_frequency=len(live) / days,
        lead_time_for_changes=LeadTime(statistics.median(leads), _p90(leads), len(leads)) if leads else None,
        change_failure_rate=len(failures) / len(changes) if changes else None,
        time_to_restore=statistics.median(restore_times) if restore_times else None,
        restores=len(restore_times), unrestored=len(failures) - len(restore_times), project=project,
    )


def dora_by_project(records: Iterable[DeployRecord], env: str, since: datetime, until: datetime,
                    project: str | None = None) -> list[DoraReport]:
    """One report per project that has records of `env` in `[since, until)`, by project name; only
    `project`'s (even with no records) when it is given.

    Raises:
        ValueError: `since`/`until` are naive or `until` is not after `since`.
    """
    since, until = _window(since, until)
    records = list(records)
    if project is not None:
        return [dora(records, env, since, until, project)]
    projects = sorted({r.project for r in records if r.env == env and since <= _aware(r.finished, "finished") < until})
    return [dora(records, env, since, until, p) for p in projects]


def format_duration(seconds: float | None) -> str:
    """`5400` → `1h 30m`; `None` → `—`."""
    if seconds is None:
        return "—"
    total = round(seconds)
    sign, total = ("-", -total) if total < 0 else ("", total)
    if total < 60:
        return f"{sign}{total}s"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    if not days and not hours:
        parts += [f"{secs}s"] * bool(secs)
    return sign + " ".join(parts[:2])


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(report: DoraReport) -> str:
    """A plain-text table of the report, for people."""
    lead = report.lead_time_for_changes
    cfr = report.change_failure_rate
    rows = [
        ("deployment frequency", f"{report.deployment_frequency:.2f}/day",
         f"{report.successful} successful of {report.deployments} deploys in {report.days:g} days"),
        ("lead time for changes", format_duration(lead.median if lead else None),
         f"median; p90 {format_duration(lead.p90)} over {lead.samples} changes" if lead
         else "no successful change with a commit time"),
        ("change failure rate", "—" if cfr is None else f"{cfr:.1%}",
         f"{report.failed_changes} of {report.deployments} deploys failed "
         f"({report.rollbacks} emergency rollbacks)" if report.deployments else "no deploys"),
        ("time to restore", format_duration(report.time_to_restore),
         f"median over {report.restores} restored failures" + (
             f"; {report.unrestored} not restored in the window" if report.unrestored else "")),
    ]
    head = ("metric", "value", "detail")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(2)]
    where = report.env if report.project is None else f"{report.project or '(no project)'}/{report.env}"
    lines = [f"DORA metrics for {where}: {_when(report.since)} → {_when(report.until)}", ""]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip()
              for a, b, c in [head, ("-" * widths[0], "-" * widths[1], "-" * 6), *rows]]
    return "\n".join(lines) + "\n"


def to_json(report: DoraReport) -> dict[str, Any]:
    """The report as JSON-ready data (times ISO 8601, durations in seconds)."""
    lead = report.lead_time_for_changes
    return {
        "env": report.env,
        "project": report.project,
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "days": report.days,
        "deployment_frequency": {"per_day": report.deployment_frequency, "successful": report.successful,
                                 "deployments": report.deployments},
        "lead_time_for_changes": None if lead is None else {
            "median_seconds": lead.median, "p90_seconds": lead.p90, "samples": lead.samples},
        "change_failure_rate": {"rate": report.change_failure_rate, "failed": report.failed_changes,
                                "deployments": report.deployments, "rollbacks": report.rollbacks},
        "time_to_restore": {"median_seconds": report.time_to_restore, "restores": report.restores,
                            "unrestored": report.unrestored},
    }


# --- from Prefect flow runs ---------------------------------------------------------------------

_FLOWS = {"cd": False, "rollback": True}
_ENDED_BADLY = frozenset({"FAILED", "CRASHED"})


def _time(value: Any, run: str, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"flow run {run}: {field}: not an ISO 8601 time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"flow run {run}: {field}: expected a time, got {value!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def records_from_flow_runs(runs: Iterable[Mapping[str, Any]]) -> list[DeployRecord]:
    """Map Prefect flow runs of the `cd` and `rollback` flows to deploy records.

    Each run is a plain dict: `name`, `flow_name`, `state_type`, `start_time`, `end_time`
    (datetimes or ISO strings; naive ones are UTC), `parameters`, optional `state_message` and,
    for completed runs, `result` (the flow's returned dict).

    | run | record |
    |---|---|
    | `flow_name` `cd` / `rollback` | `is_rollback` False / True; other flows are skipped |
    | `state_type` COMPLETED | outcome `live` |
    | `state_type` FAILED or CRASHED | `rolled-back` if `state_message` says "rolled back", else `failed` |
    | any other state (running, paused, cancelled, scheduled…) or no `end_time` | skipped: not a finished deploy |
    | `parameters.env` (else `result.env`, else the tag) | `env` (a run without one is skipped) |
    | the tag `env:PROJECT/ENV` (`tags`), else `result.project`, else `parameters.project` | `project` ("" if none) |
    | `result.version`, else `parameters.version` | `version` ("" if neither) |
    | `result.committed_at` (ISO) | `commit_time` (None when absent) |
    | `start_time` (else `end_time`), `end_time` | `started`, `finished` |

    Raises:
        ValueError: a time is not a time; the message names the run and the field.
    """
    records: list[DeployRecord] = []
    for run in runs:
        flow = run.get("flow_name")
        state = str(run.get("state_type") or "").upper()
        if flow not in _FLOWS or run.get("end_time") is None:
            continue
        outcome: Outcome
        if state == "COMPLETED":
            outcome = "live"
        elif state in _ENDED_BADLY:
            outcome = "rolled-back" if "rolled back" in str(run.get("state_message") or "") else "failed"
        else:
            continue
        name = str(run.get("name") or run.get("id") or "?")
        params = run.get("parameters") or {}
        raw = run.get("result")
        result: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        tagged = next((t for t in map(parse_env_tag, run.get("tags") or ()) if t is not None), None)
        env = params.get("env") or result.get("env") or (tagged[1] if tagged else None)
        if not env:
            continue
        project = tagged[0] if tagged else result.get("project") or params.get("project") or ""
        committed = result.get("committed_at")
        finished = _time(run["end_time"], name, "end_time")
        records.append(DeployRecord(
            env=str(env),
            version=str(result.get("version") or params.get("version") or ""),
            commit_time=_time(committed, name, "result.committed_at") if committed else None,
            started=_time(run.get("start_time") or run["end_time"], name, "start_time"),
            finished=finished,
            outcome=outcome,
            is_rollback=_FLOWS[str(flow)],
            project=str(project),
        ))
    return records
