"""Trivy's JSON report → findings, counts by severity and a gate verdict; the DB's age gate (no Prefect here)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sunday_release.config import ScanPolicy
from sunday_release.errors import GateFailed

__all__ = ["LOCKFILES", "SEVERITIES", "DependencyAudit", "Finding", "ImageScan", "ScanReport", "check_db_fresh",
           "lockfiles_in", "parse_trivy_json", "service_of"]

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")


@dataclass(frozen=True)
class Finding:
    """One finding. Never holds the matched text of a secret, only where it is."""

    kind: str  # "misconfig", "secret" or "vulnerability"
    id: str
    severity: str
    target: str
    title: str
    line: int | None = None
    package: str = ""
    installed: str = ""
    fixed: str = ""


@dataclass(frozen=True)
class ScanReport:
    """The findings of one scan and the policy's verdict on them."""

    findings: tuple[Finding, ...]
    blocking: tuple[Finding, ...] = ()
    allowed: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def counts(self) -> dict[str, int]:
        seen = Counter(f.severity for f in self.findings)
        return {sev: seen.get(sev, 0) for sev in SEVERITIES}

    @property
    def passed(self) -> bool:
        return not self.blocking


@dataclass(frozen=True)
class ImageScan:
    """The vulnerability scan of one platform of one service's image."""

    service: str
    platform: str
    image: str
    report: ScanReport
    sarif: str  # path of the SARIF file kept with the run


# The lockfiles (and manifests that pin versions) Trivy's filesystem scan reads, by file name
LOCKFILES = frozenset({
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml",  # npm, yarn, pnpm
    "requirements.txt", "Pipfile.lock", "poetry.lock", "uv.lock",  # Python
    "go.mod", "Cargo.lock", "composer.lock", "Gemfile.lock", "packages.lock.json", "pubspec.lock", "mix.lock",
    "Podfile.lock", "Package.resolved", "conan.lock",
})


def lockfiles_in(paths: list[str]) -> list[str]:
    """The paths (of a repository's files, `/`-separated) that are lockfiles Trivy audits."""
    return sorted(p for p in paths if p.rsplit("/", 1)[-1] in LOCKFILES)


def service_of(path: str, contexts: dict[str, str]) -> str:
    """The service whose build context holds `path` (the deepest one), "" for none: a lockfile's owner."""
    owners = [(len(context), name) for name, context in contexts.items()
              if context in ("", ".") or path.startswith(context.rstrip("/") + "/")]
    return max(owners)[1] if owners else ""


@dataclass(frozen=True)
class DependencyAudit:
    """The vulnerability audit of a repository's lockfiles (`trivy fs --scanners vuln`, the image scan's gate)."""

    report: ScanReport
    lockfiles: dict[str, str]  # each lockfile Trivy read (path in the repository) → its service ("" none)
    sarif: str | None = None  # the SARIF file kept with the run; None when there was nothing to audit

    def blocking_lines(self) -> list[str]:
        """`ID in PACKAGE VERSION (LOCKFILE, service S)` for each blocking finding."""
        return [f"{f.id} in {f.package} {f.installed} ({f.target}"
                f"{', service ' + self.lockfiles[f.target] if self.lockfiles.get(f.target) else ''})"
                for f in self.report.blocking]


def _findings(result: dict[str, Any]) -> list[Finding]:
    target = str(result.get("Target", "?"))
    out: list[Finding] = []
    for m in result.get("Misconfigurations") or []:
        if m.get("Status", "FAIL") != "FAIL":
            continue
        line = (m.get("CauseMetadata") or {}).get("StartLine")
        out.append(Finding("misconfig", str(m.get("ID", "?")), str(m.get("Severity", "UNKNOWN")), target,
                           str(m.get("Message") or m.get("Title", "")), line or None))
    for s in result.get("Secrets") or []:
        # Code, Match and Offset hold the secret's surroundings: deliberately not kept.
        out.append(Finding("secret", str(s.get("RuleID", "?")), str(s.get("Severity", "UNKNOWN")), target,
                           str(s.get("Title", "")), s.get("StartLine")))
    for v in result.get("Vulnerabilities") or []:
        out.append(Finding("vulnerability", str(v.get("VulnerabilityID", "?")), str(v.get("Severity", "UNKNOWN")),
                           target, str(v.get("Title", "")), None, str(v.get("PkgName", "")),
                           str(v.get("InstalledVersion", "")), str(v.get("FixedVersion", ""))))
    return out


def parse_trivy_json(text: str, policy: ScanPolicy, today: date | None = None) -> ScanReport:
    """Read `trivy --format json` output and apply `policy`.

    Misconfigurations block at `policy.misconfig_fail_on`; secrets and vulnerabilities at
    `policy.fail_on`. Allow-list entries hide a finding until their expiry date.
    """
    today = today or date.today()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"trivy output is not JSON: {exc}") from None
    if not isinstance(data, dict) or ("Results" not in data and "SchemaVersion" not in data):
        raise ValueError("trivy output is not a trivy JSON report (no SchemaVersion/Results)")
    findings = [f for r in data.get("Results") or [] for f in _findings(r)]
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity) if f.severity in SEVERITIES else 9, f.target, f.id))
    allow = {a.id: a for a in policy.allow}
    blocking, allowed, notes = [], [], []
    for f in findings:
        limit = policy.misconfig_fail_on if f.kind == "misconfig" else policy.fail_on
        if f.severity not in limit:
            continue
        if f.kind == "vulnerability" and policy.ignore_unfixed and not f.fixed:
            continue
        entry = allow.get(f.id)
        if entry and entry.expires >= today:
            allowed.append(f)
            continue
        if entry:
            notes.append(f"allow-list entry {f.id} expired on {entry.expires}: it blocks again")
        blocking.append(f)
    return ScanReport(tuple(findings), tuple(blocking), tuple(allowed), tuple(dict.fromkeys(notes)))


def _ago(age: timedelta) -> str:
    """An age in its two largest units: "13 days", "3 days 30 minutes", "5 hours 2 seconds"."""
    amounts = (age.days, age.seconds // 3600, age.seconds // 60 % 60, age.seconds % 60)
    parts = [f"{n} {unit}{'s' * (n != 1)}" for n, unit in zip(amounts, ("day", "hour", "minute", "second"), strict=True)
             if n]
    return " ".join(parts[:2]) or "0 seconds"


def check_db_fresh(cache_dir: Path, max_age_days: int, now: datetime) -> datetime:
    """When the Trivy vulnerability DB in `cache_dir` was updated; GateFailed when that is too long ago.

    The date is `UpdatedAt` (RFC 3339) of `cache_dir/db/metadata.json`, which `trivy image
    --download-db-only` writes with the DB. A DB exactly `max_age_days` old still passes; one
    updated after `now` (clock skew) passes too. Findings against a stale DB are not evidence:
    advisories published since are missing from it.

    Args:
        cache_dir: Trivy's cache dir (SUNDAY_TRIVY_CACHE).
        max_age_days: the oldest DB the gate accepts (`scan.db_max_age_days`).
        now: the current time (timezone-aware).

    Returns:
        The DB's update time, in UTC.

    Raises:
        GateFailed: the metadata is missing, unreadable or has no valid `UpdatedAt`, or the DB
            is older than `max_age_days`.
    """
    path = cache_dir / "db" / "metadata.json"
    update = (f"update the offline DB (SUNDAY_TRIVY_CACHE={cache_dir}: "
              f"`trivy image --download-db-only --cache-dir {cache_dir}` where the network allows)")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise GateFailed(f"cannot read the Trivy vulnerability DB's metadata {path} "
                         f"({exc.strerror or exc}): its age is unknown; {update}") from None
    except ValueError as exc:
        raise GateFailed(f"the Trivy vulnerability DB's metadata {path} is not JSON ({exc}): "
                         f"its age is unknown; {update}") from None
    raw = data.get("UpdatedAt") if isinstance(data, dict) else None
    try:
        updated = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        updated = None
    if updated is None or updated.tzinfo is None:
        raise GateFailed(f"the Trivy vulnerability DB's metadata {path} has no valid UpdatedAt "
                         f"(an RFC 3339 time, got {raw!r}): its age is unknown; {update}")
    updated = updated.astimezone(UTC)
    age = now - updated
    if age > timedelta(days=max_age_days):
        raise GateFailed(f"the Trivy vulnerability DB was updated {updated:%Y-%m-%dT%H:%M:%SZ} ({_ago(age)} ago), "
                         f"older than the allowed {max_age_days} day{'s' * (max_age_days != 1)}: {update}")
    return updated
