"""Reports people read in the Prefect UI: artifacts with stable keys."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sunday_release.ci_report import StepResult, scan_markdown, tests_rows
from sunday_release.findings import ScanReport

__all__ = ["publish_ci_reports"]


@task(name="publish-ci-reports")
def publish_ci_reports(project: str, commit: str, results: list[StepResult], scan: ScanReport | None) -> None:
    """Publish the test table (`ci-tests-PROJECT`) and the repository scan (`ci-repo-scan-PROJECT`)."""
    create_table_artifact(key=f"ci-tests-{project}", table=tests_rows(results),
                          description=f"Checks of {project} at {commit[:12]}")
    if scan is not None:
        create_markdown_artifact(key=f"ci-repo-scan-{project}",
                                 markdown=scan_markdown(f"Repository scan of {project} at {commit[:12]}", scan),
                                 description="trivy fs --scanners misconfig,secret")
