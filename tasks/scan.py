"""Trivy scans: the repository's misconfigurations and secrets (offline, embedded checks)."""

from __future__ import annotations

from prefect import task

from sunday_release.config import ScanPolicy
from sunday_release.errors import GateFailed
from sunday_release.findings import ScanReport, parse_trivy_json
from sunday_release.runner import run
from sunday_release.settings import Settings
from tasks._common import progress
from tasks.source import Checkout

__all__ = ["scan_repository"]


def repo_scan_argv(trivy: str, cache_dir: str, path: str, policy: ScanPolicy) -> list[str]:
    """`trivy fs` for misconfigurations and secrets with the embedded checks, no network."""
    skips = [a for d in policy.skip_dirs for a in ("--skip-dirs", d)]
    return [trivy, "fs", "--scanners", "misconfig,secret", "--skip-check-update", "--cache-dir", cache_dir,
            "--format", "json", "--quiet", "--exit-code", "0", *skips, path]


@task(name="scan-repository", task_run_name="scan-repository", persist_result=True)
def scan_repository(checkout: Checkout, policy: ScanPolicy) -> ScanReport:
    """Scan the checkout for misconfigurations and secrets; GateFailed when the policy says no.

    Args:
        checkout: the checked-out repository.
        policy: the config's scan policy (severities that block, allow-list).
    """
    settings = Settings.from_env()
    settings.trivy_cache.mkdir(parents=True, exist_ok=True)
    progress("trivy fs (misconfig, secret) started")
    out = run(repo_scan_argv(settings.trivy, str(settings.trivy_cache), checkout.path, policy), timeout=900)
    report = parse_trivy_json(out.stdout, policy)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in report.counts.items() if n) or "no findings"
    progress(f"repository scan: {counts}; {'passed' if report.passed else 'FAILED'}")
    if not report.passed:
        raise GateFailed(f"repository scan: {len(report.blocking)} blocking finding(s)", report)
    return report
