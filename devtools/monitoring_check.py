"""The monitoring rules are checked and tested: `python -m devtools.monitoring_check [infra/k8s/monitoring]`.

For the directory of the monitoring configuration (rules/*.yml, tests/*.yml):
- every rule file passes `promtool check rules`;
- every test file passes `promtool test rules`;
- every alert of the rule files has a test case where it fires (`exp_alerts` not empty) and one where it does not
  (`exp_alerts` empty), in the test files that load its rule file.
Prints each problem on a line naming the file and the alert, and exits 1 when there is any; tests/
test_monitoring_rules.py runs it in `make test`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "infra" / "k8s" / "monitoring"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise SystemExit("promtool not found: it comes with Debian's prometheus package (make setup installs it)")
    return found


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return exc


def alerts(rule_file: Path) -> list[str]:
    """The alert names of a rule file, in order (recording rules are left out); [] when it does not parse."""
    data = _load(rule_file)
    groups = data.get("groups") if isinstance(data, dict) else None
    return [rule["alert"] for group in groups or () if isinstance(group, dict)
            for rule in group.get("rules") or () if isinstance(rule, dict) and "alert" in rule]


def cases(test_file: Path) -> tuple[set[Path], dict[str, set[bool]]]:
    """The rule files a test file loads, and for each alert it tests whether it has cases that fire (True) and
    cases that do not (False)."""
    data = _load(test_file)
    if not isinstance(data, dict):
        return set(), {}
    loads = {(test_file.parent / name).resolve() for name in data.get("rule_files") or ()}
    seen: dict[str, set[bool]] = {}
    for group in data.get("tests") or ():
        for case in (group or {}).get("alert_rule_test") or ():
            if isinstance(case, dict) and case.get("alertname"):
                seen.setdefault(str(case["alertname"]), set()).add(bool(case.get("exp_alerts")))
    return loads, seen


def _promtool(args: Iterable[str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False)
    return done.returncode, (done.stdout + done.stderr).strip()


def check(root: Path = DEFAULT_ROOT) -> list[str]:
    """Every problem of the monitoring configuration under `root`, one line each; [] when there is none."""
    problems: list[str] = []
    rule_files = sorted((root / "rules").glob("*.yml"))
    test_files = sorted((root / "tests").glob("*.yml"))
    if not rule_files:
        return [f"{root / 'rules'}: no rule files (*.yml)"]
    for rule_file in rule_files:
        code, output = _promtool(["check", "rules", rule_file.name], rule_file.parent)
        if code != 0:
            problems.append(f"{rule_file.relative_to(root)}: promtool check rules failed:\n{output}")
    for test_file in test_files:
        code, output = _promtool(["test", "rules", test_file.name], test_file.parent)
        if code != 0:
            problems.append(f"{test_file.relative_to(root)}: promtool test rules failed:\n{output}")
    tested: dict[tuple[Path, str], set[bool]] = {}
    for test_file in test_files:
        loads, seen = cases(test_file)
        for rule_file in loads:
            for alert, kinds in seen.items():
                tested.setdefault((rule_file, alert), set()).update(kinds)
    for rule_file in rule_files:
        for alert in alerts(rule_file):
            kinds = tested.get((rule_file.resolve(), alert), set())
            where = f"{rule_file.relative_to(root)}: {alert}"
            if True not in kinds:
                problems.append(f"{where}: no test case where it fires (tests/*.yml, exp_alerts not empty)")
            if False not in kinds:
                problems.append(f"{where}: no test case where it does not fire (tests/*.yml, exp_alerts: [])")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("root", nargs="?", type=Path, default=DEFAULT_ROOT,
                        help="the monitoring directory (rules/*.yml, tests/*.yml)")
    args = parser.parse_args(argv)
    problems = check(args.root)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{args.root}: every rule file checked, every alert tested firing and not firing")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
