"""The one subprocess runner: captured output, typed errors with argv, exit code and stderr tail."""

from __future__ import annotations

import sys

import pytest

from sunday_release.errors import CommandFailed
from sunday_release.runner import run, tail


def test_captures_output_and_time() -> None:
    result = run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"])
    assert result.ok and result.stdout.strip() == "out" and result.stderr.strip() == "err"
    assert result.seconds > 0


def test_failure_names_command_exit_code_and_stderr_tail() -> None:
    code = "import sys\nfor i in range(100): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(CommandFailed) as err:
        run([sys.executable, "-c", code])
    exc = err.value
    assert exc.returncode == 3
    assert exc.argv[0] == sys.executable
    assert "line 99" in exc.stderr_tail and "line 50" not in exc.stderr_tail
    assert "exited 3" in str(exc)


def test_unchecked_failure_returns_the_result() -> None:
    result = run([sys.executable, "-c", "raise SystemExit(4)"], check=False)
    assert result.returncode == 4 and not result.ok
    with pytest.raises(CommandFailed):
        result.check_returncode()


def test_timeout_raises_with_no_exit_code() -> None:
    with pytest.raises(CommandFailed) as err:
        run([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    assert err.value.returncode is None and "timed out" in str(err.value)


def test_missing_program_is_a_command_failure() -> None:
    with pytest.raises(CommandFailed) as err:
        run(["/nonexistent/tool", "x"])
    assert err.value.returncode == 127 and "not found" in err.value.stderr_tail


def test_arguments_are_not_interpreted_by_a_shell(tmp_path: object) -> None:
    result = run([sys.executable, "-c", "import sys; print(sys.argv[1])", "$(echo hi); rm -rf /"])
    assert result.stdout.strip() == "$(echo hi); rm -rf /"


def test_env_is_added_to_the_environment() -> None:
    result = run([sys.executable, "-c", "import os; print(os.environ['SUNDAY_X'], 'PATH' in os.environ)"],
                 env={"SUNDAY_X": "1"})
    assert result.stdout.split() == ["1", "True"]


def test_errors_survive_pickling() -> None:
    import pickle

    exc = CommandFailed(["git", "fetch"], 128, "fatal: nope")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.argv, again.returncode, again.stderr_tail) == (["git", "fetch"], 128, "fatal: nope")


def test_tail_keeps_the_last_non_empty_lines() -> None:
    assert tail("a\n\nb\nc\n", 2) == "b\nc"
