"""The E2E flow: Playwright journeys, visual regression and a k6 load test against a deployed environment."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run

from flows.cd import saved_config, target_for
from sunday_release import validate
from sunday_release.errors import CheckFailed, GateFailed, StageFailed
from sunday_release.settings import Settings
from tasks._common import progress
from tasks.e2e import (
    artifact_keys,
    check_visual,
    publish_e2e_reports,
    record_e2e_trend,
    run_functional_suite,
    run_load_test,
)
from tasks.notify import notify

__all__ = ["e2e"]

PARTS = ("functional", "visual", "load")


def _outcome(future: PrefectFuture[Any]) -> dict[str, Any]:
    """A part's report whether it passed, failed (report carried by the error) or could not run."""
    future.wait()
    state = future.state
    if state.is_completed():
        return dict(future.result())
    exc = state.result(raise_on_failure=False)
    carried = exc.result if isinstance(exc, CheckFailed) else exc.report if isinstance(exc, GateFailed) else None
    if isinstance(carried, dict):
        return carried
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:4]) or type(exc).__name__
    return {"verdict": "error", "detail": text[:500]}


def _lines(functional: dict[str, Any], visual: dict[str, Any], load: dict[str, Any]) -> list[str]:
    """One line per part: JUnit counts, visual verdict per view, k6 p95 and error rate."""
    def head(part: dict[str, Any]) -> str:
        return "could not run" if part.get("verdict") == "error" else str(part.get("verdict", "?"))

    f = f"functional {head(functional)}: {functional.get('passed', 0)} passed, {functional.get('failed', 0)} failed"
    if functional.get("failures"):
        f += " (" + ", ".join(x["name"] for x in functional["failures"][:5]) + ")"
    views = visual.get("views", {})
    v = f"visual {head(visual)}: " + (", ".join(f"{name} {r['verdict']} ({r['fraction']:.3%})"
                                                for name, r in views.items()) or "no views")
    ld = (f"load {head(load)}: p95 {load['p95_ms']:.0f} ms, error rate {load['error_rate']:.2%}, "
          f"{load.get('requests', 0)} requests" if "p95_ms" in load else f"load {head(load)}")
    if load.get("crossed"):
        ld += "; crossed: " + ", ".join(load["crossed"])
    return [line + (f" — {part['detail']}" if part.get("verdict") == "error" else "")
            for line, part in ((f, functional), (v, visual), (ld, load))]


@flow(name="e2e", flow_run_name="e2e-{env}", persist_result=True)
def e2e(env: str, update_baselines: bool = False, vus: int | None = None,
        duration: str | None = None, project: str | None = None) -> dict[str, Any]:
    """Run the functional journeys and the visual regression check side by side, then the k6 load test.

    The suite and the k6 script are this repository's (app/e2e, app/loadtest), never a parameter: a run
    request of the deployment must not choose what is executed.

    Each part reports even when another fails. Reports land under SUNDAY_HOME/runs/FLOW_RUN_ID/e2e/
    and in the artifacts `e2e-{summary,functional,visual,load,trend}-PROJECT-ENV`; the run's key numbers are
    appended to SUNDAY_HOME/e2e-history.jsonl. A failure notifies the environment's webhook.

    Args:
        env: an environment deployed on this machine (its URL comes from its last deploy).
        update_baselines: rewrite the visual baselines from this run's screenshots (deliberately).
        vus: k6 virtual users (default SUNDAY_K6_VUS or 10).
        duration: k6 duration (default SUNDAY_K6_DURATION or 30s).
        project: the environment's project; may be left out when only one project has `env`.

    Returns:
        The summary (state, url, one report per part, artifact keys). Raises StageFailed carrying the same
        summary when a part failed or could not run.
    """
    env = validate.name(env, "--env")
    config = saved_config(env, project)
    project, where = config.project, f"{config.project}/{env}"
    url = target_for(config, env).url
    run_id = str(flow_run.get_id() or "local")
    run_dir = Settings.from_env().home / "runs" / run_id / "e2e"
    vus = vus or int(os.environ.get("SUNDAY_K6_VUS", "10"))
    duration = duration or os.environ.get("SUNDAY_K6_DURATION", "30s")
    started, started_at = time.monotonic(), datetime.now(UTC).isoformat(timespec="seconds")
    progress(f"E2E of {where} at {url}: functional and visual side by side, then load")

    # The browsers run side by side; the load test runs after them, on a machine they no longer
    # load: otherwise k6 would measure two Chromiums sharing the CPU, not the application.
    browsers = {
        "functional": run_functional_suite.submit(url, str(run_dir / "functional")),
        "visual": check_visual.submit(url, str(run_dir / "visual"), update_baselines),
    }
    parts = {name: _outcome(future) for name, future in browsers.items()}
    parts["load"] = _outcome(run_load_test.submit(url, str(run_dir / "load"), vus, duration))
    failed = [name for name in PARTS if parts[name].get("verdict") != "passed"]
    lines = _lines(parts["functional"], parts["visual"], parts["load"])
    keys = artifact_keys(project, env)
    summary: dict[str, Any] = {
        "project": project, "env": env, "url": url, "state": "FAILED" if failed else "COMPLETED", "flow_run_id": run_id,
        "run_dir": str(run_dir), "started": started_at, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1), **parts, "lines": lines, "failed_parts": failed,
        "artifacts": list(keys.values()),
    }
    trend = record_e2e_trend(summary)
    publish_e2e_reports(project, env, summary, trend)
    if failed:
        text = (f"E2E of {where} failed ({', '.join(failed)}): " + "; ".join(lines[PARTS.index(p)] for p in failed)
                + f". Artifacts: {', '.join(keys.values())}")
        notify(where, "failure", text, return_state=True)  # an unreachable webhook must not hide the summary
        raise StageFailed("\n".join(lines[PARTS.index(p)] for p in failed), summary)
    progress(f"E2E of {where} passed in {summary['seconds']}s")
    return summary
