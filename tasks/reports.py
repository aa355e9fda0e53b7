"""Reports people read in the Prefect UI: artifacts with stable keys."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sunday_release.ci_report import (
    StepResult,
    audit_markdown,
    images_rows,
    scan_markdown,
    tests_rows,
    vulnerabilities_markdown,
)
from sunday_release.findings import DependencyAudit, ImageScan, ScanReport
from sunday_release.registry import PublishedImage

__all__ = ["publish_ci_reports"]


@task(name="publish-ci-reports")
def publish_ci_reports(project: str, commit: str, results: list[StepResult], scan: ScanReport | None,
                       images: list[PublishedImage] | None = None, scans: list[ImageScan] | None = None,
                       audit: DependencyAudit | None = None) -> None:
    """Publish the artifacts: `ci-tests-PROJECT` (table), `ci-repo-scan-PROJECT` (markdown),
    `ci-dependencies-PROJECT` (markdown, once the lockfiles were audited), and once images exist
    `ci-images-PROJECT` (table) and `ci-vulnerabilities-PROJECT` (markdown)."""
    create_table_artifact(key=f"ci-tests-{project}", table=tests_rows(results),
                          description=f"Checks of {project} at {commit[:12]}")
    if scan is not None:
        create_markdown_artifact(key=f"ci-repo-scan-{project}",
                                 markdown=scan_markdown(f"Repository scan of {project} at {commit[:12]}", scan),
                                 description="trivy fs --scanners misconfig,secret")
    if audit is not None:
        create_markdown_artifact(key=f"ci-dependencies-{project}", markdown=audit_markdown(project, commit, audit),
                                 description="trivy fs --scanners vuln of the lockfiles (offline DB)")
    if images:
        create_table_artifact(key=f"ci-images-{project}", table=images_rows(images),
                              description=f"Images of {project} at {commit[:12]}")
    if scans:
        create_markdown_artifact(key=f"ci-vulnerabilities-{project}", markdown=vulnerabilities_markdown(project, scans),
                                 description="trivy image --scanners vuln (offline DB)")
