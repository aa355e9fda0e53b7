"""The CI run's results as plain values, and their renderings (table rows, markdown, terminal, JSON)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sunday_release.findings import SEVERITIES, DependencyAudit, ImageScan, ScanReport
from sunday_release.junit import TestCounts
from sunday_release.registry import PublishedImage

__all__ = ["StepResult", "audit_markdown", "ci_summary", "failure_lines", "images_rows", "scan_markdown",
           "terminal_summary", "tests_rows", "vulnerabilities_markdown", "vulnerability_counts"]


@dataclass(frozen=True)
class StepResult:
    """The outcome of one check step of one service."""

    service: str
    step: str  # "build", "test", "lint", "typecheck"
    outcome: str  # "passed", "failed" or "not run"
    seconds: float = 0.0
    tests: TestCounts | None = None
    detail: str = ""  # why it failed: failing tests, or the tail of the command's output
    reused: bool = False  # passed on the same content with the same command before: not run again
    run: str = ""  # the flow run that ran the step (of a reused pass: the run it is reused from)


def tests_rows(results: list[StepResult]) -> list[dict[str, Any]]:
    """One row per service and step, for the test-summary table artifact."""
    rows = []
    for r in sorted(results, key=lambda r: (r.service, r.step)):
        t = r.tests
        rows.append({
            "service": r.service, "step": r.step, "outcome": r.outcome,
            "passed": t.passed if t else "", "failed": t.failed if t else "", "skipped": t.skipped if t else "",
            "seconds": round(r.seconds, 1), "reused": r.reused, "from run": r.run if r.reused else "",
            "failing": "; ".join(f"{c.classname}::{c.name}" if c.classname else c.name
                                  for c in t.failures) if t else "",
        })
    return rows


def scan_markdown(title: str, report: ScanReport) -> str:
    """A readable markdown report of a scan: counts, verdict, then one row per finding."""
    verdict = "**passed**" if report.passed else f"**failed**: {len(report.blocking)} blocking finding(s)"
    counts = " · ".join(f"{sev} {n}" for sev, n in report.counts.items())
    lines = [f"# {title}", "", f"Verdict: {verdict}", "", f"Findings: {counts}", ""]
    lines += [f"> {note}" for note in report.notes]
    if report.findings:
        blocking, allowed = set(report.blocking), set(report.allowed)
        lines += ["| severity | kind | id | where | what | gate |", "|---|---|---|---|---|---|"]
        for f in report.findings:
            where = f"{f.target}:{f.line}" if f.line else f.target
            if f.package:
                where += f" ({f.package} {f.installed} → {f.fixed or 'no fix'})"
            gate = "blocks" if f in blocking else ("allowed" if f in allowed else "")
            what = f.title.replace("|", "\\|")
            lines.append(f"| {f.severity} | {f.kind} | {f.id} | `{where}` | {what} | {gate} |")
    else:
        lines.append("No findings.")
    return "\n".join(lines) + "\n"


def audit_markdown(project: str, commit: str, audit: DependencyAudit) -> str:
    """The dependency audit: the lockfiles read (with their services), then the findings as `scan_markdown`."""
    lines = [f"Lockfiles audited: {len(audit.lockfiles)}", ""]
    lines += [f"- `{path}`{' (service ' + service + ')' if service else ''}" for path, service in
              audit.lockfiles.items()] or ["- none: the repository has no lockfile Trivy reads"]
    if audit.sarif:
        lines += ["", f"SARIF: `{audit.sarif}`"]
    body = scan_markdown(f"Dependency audit of {project} at {commit[:12]}", audit.report)
    head, _, rest = body.partition("\n\n")
    return f"{head}\n\n" + "\n".join(lines) + f"\n\n{rest}"


def vulnerability_counts(scans: Sequence[ImageScan]) -> dict[str, Any]:
    """Counts by severity over all platforms of one image (a CVE in both platforms counts once)."""
    unique = {(f.id, f.package, f.severity) for s in scans for f in s.report.findings}
    return {"counts": {sev: sum(1 for u in unique if u[2] == sev) for sev in SEVERITIES},
            "passed": all(s.report.passed for s in scans),
            "blocking": sorted({f"{f.id} ({f.package})" for s in scans for f in s.report.blocking})}


def vulnerabilities_markdown(project: str, scans: Sequence[ImageScan]) -> str:
    """The vulnerability report of every scanned image: verdict, then findings per image and platform."""
    parts = [f"# Image vulnerabilities of {project}", ""]
    for s in sorted(scans, key=lambda s: (s.service, s.platform)):
        verdict = "passed" if s.report.passed else f"**failed** ({len(s.report.blocking)} blocking)"
        parts += [f"## {s.service} · {s.platform}", "", f"`{s.image}` — gate {verdict} — SARIF: `{s.sarif}`", ""]
        parts += [f"> {note}" for note in s.report.notes]
        vulns = [f for f in s.report.findings if f.kind == "vulnerability"]
        if not vulns:
            parts += ["No vulnerabilities found.", ""]
            continue
        blocking, allowed = set(s.report.blocking), set(s.report.allowed)
        parts += ["| severity | id | package | installed → fixed | gate |", "|---|---|---|---|---|"]
        for f in vulns:
            gate = "blocks" if f in blocking else ("allowed" if f in allowed else "")
            parts.append(f"| {f.severity} | {f.id} | {f.package} | {f.installed} → {f.fixed or 'no fix'} | {gate} |")
        parts.append("")
    return "\n".join(parts)


def images_rows(images: Sequence[PublishedImage]) -> list[dict[str, Any]]:
    """One row per published image, for the images table artifact."""
    return [{"service": i.service, "image": i.ref, "platforms": ", ".join(d.platform or "" for d in i.platforms),
             "tags": ", ".join(i.tags), "cached": i.cached} for i in sorted(images, key=lambda i: i.service)]


def ci_summary(flow_run_id: str, state: str, commit: str, services: list[str], results: list[StepResult],
               scan: ScanReport | None, images: Mapping[str, PublishedImage] | None = None,
               scans: Sequence[ImageScan] = (), audit: DependencyAudit | None = None) -> dict[str, Any]:
    """The object `sunday-release ci --json` prints."""
    images = images or {}
    by_service: dict[str, dict[str, Any]] = {}
    for name in services:
        steps = {r.step: r for r in results if r.service == name}
        test = steps.get("test")
        counts = test.tests if test and test.tests else None
        by_service[name] = {
            "tests": {"passed": counts.passed, "failed": counts.failed, "skipped": counts.skipped}
            if counts else None,
            "test": test.outcome if test else "not configured",
            "lint": steps["lint"].outcome if "lint" in steps else "not configured",
            "typecheck": steps["typecheck"].outcome if "typecheck" in steps else "not configured",
            "build": steps["build"].outcome if "build" in steps else "not run",
            "reused": sorted(r.step for r in steps.values() if r.reused),
            "reused_from": {r.step: r.run for r in sorted(steps.values(), key=lambda r: r.step) if r.reused},
            "image": images[name].ref if name in images else None,
            "tags": list(images[name].tags) if name in images else [],
            "platforms": [d.platform for d in images[name].platforms] if name in images else [],
            "cached": images[name].cached if name in images else None,
            "vulnerabilities": vulnerability_counts([s for s in scans if s.service == name])
            if any(s.service == name for s in scans) else None,
        }
    return {
        "flow_run_id": flow_run_id,
        "state": state,
        "commit": commit,
        "services": by_service,
        "scan": None if scan is None else {
            "findings": scan.counts, "blocking": len(scan.blocking), "passed": scan.passed,
        },
        "dependencies": None if audit is None else {
            "lockfiles": audit.lockfiles, "findings": audit.report.counts, "blocking": audit.blocking_lines(),
            "allowed": [f"{f.id} in {f.package} {f.installed} ({f.target})" for f in audit.report.allowed],
            "notes": list(audit.report.notes), "passed": audit.report.passed, "sarif": audit.sarif,
        },
    }


def _telling_line(output: str) -> str:
    """The line of a failed command's output most likely to say why: the last one naming an error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fail" in line.lower()]
    return (errors or lines or ["non-zero exit"])[-1][:300]


def failure_lines(results: list[StepResult], scan: ScanReport | None) -> list[str]:
    """One line per failed step (service, step, why) for stderr."""
    lines = []
    for r in sorted(results, key=lambda r: (r.service, r.step)):
        if r.outcome != "failed":
            continue
        if r.tests and r.tests.failures:
            names = ", ".join(f"{c.classname}::{c.name}" if c.classname else c.name for c in r.tests.failures[:5])
            lines.append(f"{r.service}: {r.step} failed: {r.tests.failed} failing test(s): {names}")
        else:
            first = _telling_line(r.detail)
            lines.append(f"{r.service}: {r.step} failed: {first}")
    if scan is not None and not scan.passed:
        ids = ", ".join(f"{f.id} ({f.target})" for f in scan.blocking[:5])
        lines.append(f"repository scan failed: {len(scan.blocking)} blocking finding(s): {ids}")
    return lines


def terminal_summary(summary: dict[str, Any]) -> str:
    """A few aligned lines a person reads at the end of `sunday-release ci`."""
    out = [f"CI {summary['state']} for commit {summary['commit'][:12]} (flow run {summary['flow_run_id']})"]
    for name, svc in summary["services"].items():
        t = svc["tests"]
        tests = f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped" if t else svc["test"]
        out.append(f"  {name:<12} tests: {tests:<34} lint: {svc['lint']:<15} typecheck: {svc['typecheck']}")
        by_run: dict[str, list[str]] = {}
        for step, run in (svc.get("reused_from") or {}).items():
            by_run.setdefault(run, []).append(step)
        for run, steps in by_run.items():
            out.append(f"  {'':<12} reused: {', '.join(steps)} passed in flow run {run or '(unknown)'}; not run again")
        if svc.get("image"):
            v = svc.get("vulnerabilities") or {}
            counts = ", ".join(f"{n} {sev.lower()}" for sev, n in v.get("counts", {}).items() if n) or "none"
            out.append(f"  {'':<12} image: {svc['image']} ({', '.join(svc['platforms'])}"
                       f"{'; unchanged, not rebuilt' if svc['cached'] else ''})")
            out.append(f"  {'':<12} vulnerabilities: {counts}; gate {'passed' if v.get('passed') else 'FAILED'}")
    scan = summary.get("scan")
    if scan:
        counts = ", ".join(f"{n} {sev.lower()}" for sev, n in scan["findings"].items() if n) or "no findings"
        out.append(f"  {'repo scan':<12} {counts}; {'passed' if scan['passed'] else 'failed'}")
    audit = summary.get("dependencies")
    if audit:
        counts = ", ".join(f"{n} {sev.lower()}" for sev, n in audit["findings"].items() if n) or "no vulnerabilities"
        out.append(f"  {'dependencies':<12} {len(audit['lockfiles'])} lockfile(s): {counts}; "
                   f"{'passed' if audit['passed'] else 'failed'}")
        out += [f"  {'':<12} blocks: {line}" for line in audit["blocking"][:5]]
    return "\n".join(out)
