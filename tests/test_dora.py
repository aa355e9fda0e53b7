"""DORA metrics: hand-built histories with answers worked out by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from sunday_release.dora import (
    DeployRecord,
    Outcome,
    dora,
    dora_by_project,
    format_duration,
    records_from_flow_runs,
    render,
    to_json,
)

DAY1 = datetime(2024, 5, 1, tzinfo=UTC)
SINCE, UNTIL = DAY1, DAY1 + timedelta(days=2)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return DAY1 + timedelta(days=day - 1, hours=hour, minutes=minute)


def deploy(finished: datetime, committed: datetime | None, outcome: Outcome = "live", env: str = "production",
           version: str = "v", rollback: bool = False) -> DeployRecord:
    return DeployRecord(env=env, version=version, commit_time=committed, started=finished - timedelta(minutes=10),
                        finished=finished, outcome=outcome, is_rollback=rollback)


# 4 deploys in 2 days, the second taken out by an emergency rollback 30 minutes after it went live.
HISTORY = [
    deploy(at(1, 10, 10), at(1, 9), version="a"),  # lead 70 min
    deploy(at(1, 14), at(1, 12), version="b"),  # lead 2 h; rolled back at 14:30
    deploy(at(1, 14, 30), None, version="a", rollback=True),
    deploy(at(2, 9), at(2, 8), version="c"),  # lead 1 h
    deploy(at(2, 12), at(2, 10), version="d"),  # lead 2 h
    # not in the report: another environment, and outside the window
    deploy(at(1, 11), at(1, 10), env="staging"),
    deploy(at(1, 12), None, outcome="failed", env="staging"),
    deploy(SINCE - timedelta(seconds=1), at(0, 20), outcome="failed"),
    deploy(UNTIL, at(2, 20)),
]


def test_four_deploys_in_two_days_with_one_emergency_rollback() -> None:
    report = dora(HISTORY, "production", SINCE, UNTIL)

    assert report.days == 2
    assert (report.deployments, report.successful, report.rollbacks) == (4, 4, 1)
    assert report.deployment_frequency == 2.0
    assert report.change_failure_rate == 0.25
    assert report.failed_changes == 1
    lead = report.lead_time_for_changes
    assert lead is not None
    assert (lead.median, lead.p90, lead.samples) == ((4200 + 7200) / 2, 7200, 4)  # of 3600, 4200, 7200, 7200
    assert report.time_to_restore == 30 * 60
    assert (report.restores, report.unrestored) == (1, 0)


def test_rolled_back_and_failed_runs_are_failed_changes_restored_by_the_next_success() -> None:
    history = [
        deploy(at(1, 1), at(1, 0)),  # live
        deploy(at(1, 2), at(1, 1), outcome="rolled-back"),  # restored by the deploy at 05:00 (3 h)
        deploy(at(1, 3), at(1, 2), outcome="failed"),  # restored by the deploy at 05:00 (2 h)
        deploy(at(1, 5), at(1, 4)),  # live, lead 1 h
        deploy(at(2, 23), at(2, 22), outcome="failed"),  # nothing after it in the window
    ]
    report = dora(history, "production", SINCE, UNTIL)

    assert (report.deployments, report.successful, report.rollbacks) == (5, 2, 0)
    assert report.deployment_frequency == 1.0
    assert report.change_failure_rate == 3 / 5
    assert report.time_to_restore == (3 * 3600 + 2 * 3600) / 2
    assert (report.restores, report.unrestored) == (2, 1)
    lead = report.lead_time_for_changes
    assert lead is not None and (lead.median, lead.p90, lead.samples) == (3600, 3600, 2)


def test_a_rollback_blames_the_change_it_took_out_of_service_not_an_already_rolled_back_one() -> None:
    history = [
        deploy(at(1, 1), at(1, 0), version="a"),  # live; the rollback at 03:00 takes it out
        deploy(at(1, 2), at(1, 1), outcome="rolled-back", version="b"),  # a stayed live
        deploy(at(1, 3), None, rollback=True),
    ]
    report = dora(history, "production", SINCE, UNTIL)

    assert report.change_failure_rate == 1.0
    assert report.failed_changes == 2
    assert report.time_to_restore == (2 * 3600 + 1 * 3600) / 2  # a: 01:00→03:00, b: 02:00→03:00


def test_a_failed_rollback_still_blames_the_change_and_the_next_success_restores_it() -> None:
    history = [
        deploy(at(1, 1), at(1, 0)),
        deploy(at(1, 2), None, outcome="failed", rollback=True),
        deploy(at(1, 4), at(1, 3)),
    ]
    report = dora(history, "production", SINCE, UNTIL)

    assert (report.deployments, report.rollbacks, report.failed_changes) == (2, 1, 1)
    assert report.change_failure_rate == 0.5
    assert report.time_to_restore == 3 * 3600


def test_empty_history() -> None:
    report = dora([], "production", SINCE, UNTIL)

    assert (report.deployments, report.successful, report.deployment_frequency) == (0, 0, 0.0)
    assert report.lead_time_for_changes is None
    assert report.change_failure_rate is None
    assert report.time_to_restore is None
    text = render(report)
    assert "0.00/day" in text and "no deploys" in text
    data = to_json(report)
    json.dumps(data)
    assert data["lead_time_for_changes"] is None and data["change_failure_rate"]["rate"] is None


def test_env_filter() -> None:
    report = dora(HISTORY, "staging", SINCE, UNTIL)

    assert (report.deployments, report.successful, report.failed_changes) == (2, 1, 1)
    assert report.change_failure_rate == 0.5
    assert report.time_to_restore is None and report.unrestored == 1  # nothing went live after it
    assert dora(HISTORY, "nowhere", SINCE, UNTIL).deployments == 0


def test_window_filter_includes_since_and_excludes_until() -> None:
    history = [deploy(SINCE, None), deploy(UNTIL - timedelta(microseconds=1), None), deploy(UNTIL, None)]
    assert dora(history, "production", SINCE, UNTIL).deployments == 2

    first_day = dora(HISTORY, "production", SINCE, SINCE + timedelta(days=1))
    assert (first_day.deployments, first_day.rollbacks, first_day.deployment_frequency) == (2, 1, 2.0)
    assert first_day.change_failure_rate == 0.5

    later = dora(HISTORY, "production", at(1, 14, 15), UNTIL)  # the blamed change is outside: the rollback blames none
    assert (later.deployments, later.rollbacks, later.failed_changes) == (2, 1, 0)


def test_other_timezones_compare_as_instants() -> None:
    plus2 = timezone(timedelta(hours=2))
    record = deploy(datetime(2024, 5, 1, 1, 30, tzinfo=plus2), None)  # 2024-04-30 23:30 UTC: before the window
    assert dora([record], "production", SINCE, UNTIL).deployments == 0


@pytest.mark.parametrize(("since", "until"), [
    (datetime(2024, 5, 1), UNTIL),  # naive
    (SINCE, SINCE),  # empty window
    (UNTIL, SINCE),
])
def test_bad_windows(since: datetime, until: datetime) -> None:
    with pytest.raises(ValueError):
        dora(HISTORY, "production", since, until)


def test_render_and_to_json() -> None:
    report = dora(HISTORY, "production", SINCE, UNTIL)
    text = render(report)

    assert text.startswith("DORA metrics for production: 2024-05-01 00:00 UTC → 2024-05-03 00:00 UTC")
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "2.00/day" in lines["deployment frequency"] and "4 successful of 4 deploys" in lines["deployment frequency"]
    assert "1h 35m" in lines["lead time for changes"] and "p90 2h" in lines["lead time for changes"]
    assert "25.0%" in lines["change failure rate"] and "1 of 4" in lines["change failure rate"]
    assert "30m" in lines["time to restore"]

    data = to_json(report)
    assert json.loads(json.dumps(data)) == data
    assert data["deployment_frequency"] == {"per_day": 2.0, "successful": 4, "deployments": 4}
    assert data["lead_time_for_changes"] == {"median_seconds": 5700.0, "p90_seconds": 7200.0, "samples": 4}
    assert data["change_failure_rate"] == {"rate": 0.25, "failed": 1, "deployments": 4, "rollbacks": 1}
    assert data["time_to_restore"] == {"median_seconds": 1800.0, "restores": 1, "unrestored": 0}
    assert data["since"] == "2024-05-01T00:00:00+00:00"


def test_one_report_per_project_of_the_environment() -> None:
    from dataclasses import replace

    shop = [replace(r, project="shop") for r in HISTORY]
    blog = [replace(deploy(at(1, 9), at(1, 8)), project="blog"),  # blog's production: one live, one failed
            replace(deploy(at(1, 15), None, outcome="rolled-back"), project="blog"),
            replace(deploy(at(1, 11), at(1, 10), env="staging"), project="blog")]
    reports = dora_by_project([*blog, *shop], "production", SINCE, UNTIL)

    assert [r.project for r in reports] == ["blog", "shop"]
    blog_report, shop_report = reports
    assert (blog_report.deployments, blog_report.successful, blog_report.failed_changes) == (2, 1, 1)
    assert blog_report.time_to_restore is None and blog_report.unrestored == 1  # shop's deploys restore nothing
    assert to_json(shop_report) == to_json(dora(HISTORY, "production", SINCE, UNTIL)) | {"project": "shop"}
    assert render(blog_report).startswith("DORA metrics for blog/production: ")
    assert [r.project for r in dora_by_project(blog, "production", SINCE, UNTIL, "shop")] == ["shop"]
    assert dora_by_project(blog, "production", SINCE, UNTIL, "shop")[0].deployments == 0
    assert dora_by_project(blog, "qa", SINCE, UNTIL) == []
    assert render(dora(HISTORY, "production", SINCE, UNTIL, "")).startswith(
        "DORA metrics for (no project)/production: ")  # runs from before projects


def test_the_project_of_a_run_comes_from_its_tag_then_its_result_then_its_parameters() -> None:
    base = {"flow_name": "cd", "state_type": "FAILED", "start_time": "2024-05-01T10:00:00Z",
            "end_time": "2024-05-01T10:10:00Z", "parameters": {"env": "production", "version": "v1"}}
    runs: list[dict[str, Any]] = [
        base | {"name": "tagged", "tags": ["auto", "env:shop/production"], "result": {"project": "other"}},
        base | {"name": "by-result", "state_type": "COMPLETED", "result": {"project": "blog", "env": "production"}},
        base | {"name": "by-parameter", "flow_name": "rollback",
                "parameters": {"env": "production", "project": "wiki"}},
        base | {"name": "none", "tags": ["env:bad"]},
        base | {"name": "env-from-tag", "parameters": {}, "tags": ["env:shop/qa"]},
    ]
    assert [(r.project, r.env) for r in records_from_flow_runs(runs)] == [
        ("shop", "production"), ("blog", "production"), ("wiki", "production"), ("", "production"), ("shop", "qa")]


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "—"), (0, "0s"), (59.6, "1m"), (45, "45s"), (90, "1m 30s"), (5400, "1h 30m"), (3661, "1h 1m"),
    (2 * 86400 + 3 * 3600 + 59, "2d 3h"), (-30, "-30s"),
])
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_records_from_flow_runs() -> None:
    runs: list[dict[str, Any]] = [
        {"name": "cd-production-v1.0.0", "flow_name": "cd", "state_type": "COMPLETED",
         "start_time": "2024-05-01T10:00:00Z", "end_time": "2024-05-01T10:10:00+00:00",
         "parameters": {"env": "production", "version": "v1.0.0", "repo": "/r"},
         "result": {"env": "production", "version": "v1.0.0", "committed_at": "2024-05-01T11:00:00+02:00"}},
        {"name": "cd-production-v1.1.0", "flow_name": "cd", "state_type": "FAILED",
         "state_message": "Flow run encountered an exception. RolloutAborted: deploy of v1.1.0 to production "
                          "rolled back: smoke failed",
         "start_time": datetime(2024, 5, 1, 12), "end_time": datetime(2024, 5, 1, 12, 5),  # naive: UTC
         "parameters": {"env": "production", "version": "v1.1.0"}},
        {"name": "cd-staging-abc", "flow_name": "cd", "state_type": "CRASHED", "start_time": None,
         "end_time": "2024-05-01T13:00:00Z", "parameters": {"env": "staging", "version": "abc"}},
        {"name": "rollback-production", "flow_name": "rollback", "state_type": "COMPLETED",
         "start_time": "2024-05-01T14:00:00Z", "end_time": "2024-05-01T14:02:00Z",
         "parameters": {"env": "production", "to": None}, "result": {"env": "production", "version": "v1.0.0"}},
        # skipped: still running, cancelled, another flow, no env
        {"name": "cd-production-v2", "flow_name": "cd", "state_type": "RUNNING", "start_time": "2024-05-01T15:00:00Z",
         "end_time": None, "parameters": {"env": "production", "version": "v2"}},
        {"name": "cd-production-v3", "flow_name": "cd", "state_type": "CANCELLED",
         "start_time": "2024-05-01T15:00:00Z", "end_time": "2024-05-01T15:01:00Z",
         "parameters": {"env": "production", "version": "v3"}},
        {"name": "ci-main", "flow_name": "ci", "state_type": "COMPLETED", "start_time": "2024-05-01T09:00:00Z",
         "end_time": "2024-05-01T09:05:00Z", "parameters": {"ref": "main"}},
        {"name": "cd-x", "flow_name": "cd", "state_type": "FAILED", "start_time": "2024-05-01T09:00:00Z",
         "end_time": "2024-05-01T09:05:00Z", "parameters": {}},
    ]
    records = records_from_flow_runs(runs)

    assert records == [
        DeployRecord("production", "v1.0.0", datetime(2024, 5, 1, 9, tzinfo=UTC), datetime(2024, 5, 1, 10, tzinfo=UTC),
                     datetime(2024, 5, 1, 10, 10, tzinfo=UTC), "live", False),
        DeployRecord("production", "v1.1.0", None, datetime(2024, 5, 1, 12, tzinfo=UTC),
                     datetime(2024, 5, 1, 12, 5, tzinfo=UTC), "rolled-back", False),
        DeployRecord("staging", "abc", None, datetime(2024, 5, 1, 13, tzinfo=UTC), datetime(2024, 5, 1, 13, tzinfo=UTC),
                     "failed", False),
        DeployRecord("production", "v1.0.0", None, datetime(2024, 5, 1, 14, tzinfo=UTC),
                     datetime(2024, 5, 1, 14, 2, tzinfo=UTC), "live", True),
    ]
    report = dora(records, "production", SINCE, UNTIL)
    assert (report.deployments, report.successful, report.rollbacks, report.failed_changes) == (2, 1, 1, 2)
    lead = report.lead_time_for_changes
    assert lead is not None and lead.median == 70 * 60


def test_records_from_flow_runs_names_the_run_with_a_bad_time() -> None:
    with pytest.raises(ValueError, match=r"cd-production-v1: end_time"):
        records_from_flow_runs([{"name": "cd-production-v1", "flow_name": "cd", "state_type": "COMPLETED",
                                 "end_time": "yesterday", "parameters": {"env": "production"}}])
