"""Trivy's JSON report → findings, counts by severity and a gate verdict (no Prefect here)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sunday_release.config import ScanPolicy

__all__ = ["SEVERITIES", "Finding", "ImageScan", "ScanReport", "parse_trivy_json"]

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
