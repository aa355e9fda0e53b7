"""Pure report parsing: JUnit, Trivy JSON and the gate, refs, summaries."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from sunday_release.ci_report import StepResult, ci_summary, failure_lines, scan_markdown, terminal_summary
from sunday_release.config import ScanPolicy
from sunday_release.errors import InputError
from sunday_release.findings import parse_trivy_json
from sunday_release.junit import parse_junit, parse_junit_files
from sunday_release.refs import short_ref, validate_ref, validate_repo

JUNIT = """<?xml version="1.0"?>
<testsuites><testsuite name="s" tests="4">
  <testcase classname="tests.test_a" name="test_ok" time="0.1"/>
  <testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2">trace</failure></testcase>
  <testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>
  <testcase classname="tests.test_b" name="test_err"><error message="boom"/></testcase>
</testsuite></testsuites>"""


def test_junit_counts_and_failures() -> None:
    counts = parse_junit(JUNIT)
    assert (counts.passed, counts.failed, counts.skipped) == (1, 2, 1)
    assert [(c.name, c.outcome, c.message) for c in counts.failures] == [
        ("test_bad", "failed", "assert 1 == 2"), ("test_err", "error", "boom")]


def test_junit_files_are_summed_and_bad_files_named(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text(JUNIT)
    (tmp_path / "b.xml").write_text(JUNIT)
    assert parse_junit_files(tmp_path.glob("*.xml")).total == 8
    (tmp_path / "c.xml").write_text("<testsuite>")
    with pytest.raises(ValueError, match=r"c\.xml"):
        parse_junit_files(tmp_path.glob("*.xml"))


def trivy_json(*results: dict[str, object]) -> str:
    return json.dumps({"SchemaVersion": 2, "Results": list(results)})


SECRET = {"Target": "creds.txt", "Class": "secret", "Secrets": [{
    "RuleID": "aws-access-key-id", "Severity": "CRITICAL", "Title": "AWS Access Key ID", "StartLine": 1,
    "Match": "aws_access_key_id = AKIAIOSFODNN7EXAMPLQ",
    "Code": {"Lines": [{"Content": "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG"}]}}]}
MISCONF = {"Target": "Dockerfile", "Class": "config", "Misconfigurations": [
    {"ID": "DS-0002", "Severity": "HIGH", "Message": "Specify a USER", "Status": "FAIL",
     "CauseMetadata": {"StartLine": 3}},
    {"ID": "DS-0026", "Severity": "LOW", "Message": "Add HEALTHCHECK", "Status": "PASS"}]}


def test_secrets_block_and_never_keep_the_secret() -> None:
    report = parse_trivy_json(trivy_json(SECRET, MISCONF), ScanPolicy())
    assert not report.passed
    assert [f.id for f in report.blocking] == ["aws-access-key-id"]  # HIGH misconfig is below the default
    assert report.counts["CRITICAL"] == 1 and report.counts["HIGH"] == 1
    rendered = scan_markdown("scan", report) + repr(report)
    assert "AKIA" not in rendered and "wJalr" not in rendered


def test_misconfig_threshold_and_passing_checks() -> None:
    report = parse_trivy_json(trivy_json(MISCONF), ScanPolicy(misconfig_fail_on=["HIGH", "CRITICAL"]))
    assert [f.id for f in report.blocking] == ["DS-0002"]
    assert all(f.id != "DS-0026" for f in report.findings)  # PASS results are not findings


def test_allow_list_until_expiry() -> None:
    allow = [{"id": "aws-access-key-id", "reason": "test fixture", "expires": "2030-01-01"}]
    policy = ScanPolicy.model_validate({"allow": allow})
    assert parse_trivy_json(trivy_json(SECRET), policy, today=date(2029, 12, 31)).passed
    expired = parse_trivy_json(trivy_json(SECRET), policy, today=date(2030, 1, 2))
    assert not expired.passed and "expired" in expired.notes[0]


def test_not_a_trivy_report_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_trivy_json("[]", ScanPolicy())
    with pytest.raises(ValueError):
        parse_trivy_json("not json", ScanPolicy())


@pytest.mark.parametrize("ref", ["main", "feature/x-1", "v1.2.3", "refs/heads/main", "a" * 40, "abc1234"])
def test_good_refs(ref: str) -> None:
    assert validate_ref(ref) == ref


@pytest.mark.parametrize("ref", ["", "-rf", "a..b", "has space", "x~1", "x^", "a:b", "x.lock", "/abs", "x/",
                                 "a//b", "@{u}", "ref\n"])
def test_bad_refs(ref: str) -> None:
    with pytest.raises(InputError, match="--ref"):
        validate_ref(ref)


def test_short_ref() -> None:
    assert short_ref("refs/heads/main") == "main" and short_ref("refs/tags/v1") == "v1"
    assert short_ref("abc") == "abc"


def test_repo_must_be_a_git_repository_or_url(tmp_path: Path) -> None:
    assert validate_repo("https://github.com/x/y.git").startswith("https://")
    with pytest.raises(InputError, match="not a git repository"):
        validate_repo(str(tmp_path))
    with pytest.raises(InputError, match="neither"):
        validate_repo(str(tmp_path / "missing"))


def test_summary_and_failure_lines_name_service_step_and_test() -> None:
    counts = parse_junit(JUNIT)
    results = [StepResult("backend", "test", "failed", 2.0, counts, "..."),
               StepResult("backend", "lint", "failed", 1.0, None, "ok\nx.py:1:1: E999 SyntaxError\n"),
               StepResult("frontend", "test", "passed", 1.0, parse_junit(JUNIT.replace("failure", "skipped")))]
    lines = failure_lines(results, None)
    assert lines[0] == "backend: lint failed: x.py:1:1: E999 SyntaxError"
    assert lines[1].startswith("backend: test failed: 2 failing test(s): tests.test_a::test_bad")
    summary = ci_summary("run-1", "FAILED", "0" * 40, ["backend", "frontend"], results, None)
    assert summary["services"]["backend"]["tests"] == {"passed": 1, "failed": 2, "skipped": 1}
    assert summary["services"]["frontend"]["typecheck"] == "not configured"
    assert "backend" in terminal_summary(summary)


def test_the_summary_names_each_reused_pass_and_the_run_it_is_reused_from() -> None:
    results = [StepResult("tool", "test", "passed", 2.0, reused=True, run="run-a"),
               StepResult("tool", "lint", "passed", 1.0, reused=True, run="run-a"),
               StepResult("tool", "typecheck", "passed", 1.0, run="run-c"),
               StepResult("other", "test", "passed", 1.0, run="run-c")]
    summary = ci_summary("run-c", "COMPLETED", "0" * 40, ["tool", "other"], results, None)
    assert summary["services"]["tool"]["reused"] == ["lint", "test"]
    assert summary["services"]["tool"]["reused_from"] == {"lint": "run-a", "test": "run-a"}
    assert summary["services"]["other"]["reused_from"] == {}
    text = terminal_summary(summary)
    assert "reused: lint, test passed in flow run run-a; not run again" in text
    assert text.count("reused:") == 1, text
