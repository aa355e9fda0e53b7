"""Read JUnit XML reports (pytest, node --test, Surefire, ...) into counts and failures."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

__all__ = ["TestCase", "TestCounts", "parse_junit", "parse_junit_files"]


@dataclass(frozen=True)
class TestCase:
    """One test that did not pass."""

    __test__ = False  # not a pytest class

    name: str
    classname: str
    outcome: str  # "failed" or "error"
    message: str


@dataclass(frozen=True)
class TestCounts:
    """Totals over one or more JUnit reports."""

    __test__ = False

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: tuple[TestCase, ...] = field(default=())

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped

    def __add__(self, other: TestCounts) -> TestCounts:
        return TestCounts(self.passed + other.passed, self.failed + other.failed,
                          self.skipped + other.skipped, self.failures + other.failures)


def parse_junit(xml_text: str) -> TestCounts:
    """Count the test cases of one JUnit XML document (errors count as failures)."""
    root = ElementTree.fromstring(xml_text)
    passed = skipped = 0
    failures: list[TestCase] = []
    for case in root.iter("testcase"):
        name, classname = case.get("name", "?"), case.get("classname", "")
        bad = next((c for c in case if c.tag in ("failure", "error")), None)
        if bad is not None:
            message = (bad.get("message") or (bad.text or "")).strip().splitlines()
            failures.append(TestCase(name, classname, "failed" if bad.tag == "failure" else "error",
                                     message[0][:300] if message else ""))
        elif any(c.tag == "skipped" for c in case):
            skipped += 1
        else:
            passed += 1
    return TestCounts(passed, len(failures), skipped, tuple(failures))


def parse_junit_files(paths: Iterable[Path]) -> TestCounts:
    """Sum the counts of several JUnit files; an unreadable file raises ValueError naming it."""
    total = TestCounts()
    for path in sorted(paths):
        try:
            total = total + parse_junit(path.read_text(encoding="utf-8", errors="replace"))
        except ElementTree.ParseError as exc:
            raise ValueError(f"{path.name}: not valid JUnit XML ({exc})") from None
    return total
