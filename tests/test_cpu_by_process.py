"""devtools/cpu_by_process: the profile that says where the suite's CPU goes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from devtools.cpu_by_process import Sampler, _cpu, kind, main


@pytest.mark.parametrize(("argv", "expected"), [
    ("/x/.venv/bin/python -m prefect server start --host 127.0.0.1 --port 4200", "Prefect server"),
    ("/x/.venv/bin/python -m adapters.cli ci --repo /r --ref main", "sunday CLI"),
    ("/x/.venv/bin/python -u -c import sys;exec(eval(sys.stdin.readline()))", "pytest-xdist worker"),
    ("postgres: prefect prefect_gw0 127.0.0.1(5432) idle", "postgres"),
    ("/usr/bin/dockerd -H fd://", "dockerd"),
    ("", "kernel threads"),
])
def test_a_command_line_is_charged_to_its_kind(argv: str, expected: str) -> None:
    assert kind(argv) == expected


def test_a_child_is_charged_its_cpu_and_a_process_alive_before_only_its_growth(
        capsys: pytest.CaptureFixture[str]) -> None:
    # it burns 0.8 s, then idles long enough for a sample to see all of it however busy the machine is
    burn = "import time\nend = time.process_time() + 0.8\nwhile time.process_time() < end: pass\ntime.sleep(1.5)"
    assert main(["--", sys.executable, "-c", burn]) == 0
    report = capsys.readouterr().err
    line = next(row for row in report.splitlines() if row.endswith(kind(" ".join([sys.executable, "-c", burn]))))
    assert 0.75 <= float(line.split()[0]) <= 1.5, report  # the 0.8 s it burned and its interpreter's start
    # this test's own process, alive before: charged from what it had used when first seen, not from 0
    tick = 1 / os.sysconf("SC_CLK_TCK")
    before = sum(os.times()[:2])
    sampler = Sampler()
    sampler.sample(initial=True)
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    sampler.sample()
    after = sum(os.times()[:2])
    me = next(key for key in sampler.last if key[0] == str(os.getpid()))
    assert before - tick <= sampler.first[me] <= after + tick
    # in whole ticks, as /proc counts them: 0.19 s read as 15.69 - 15.5 is 0.18999… in floating point
    grown = round((sampler.last[me][0] - sampler.first[me]) / tick)
    assert round(0.2 / tick) - 1 <= grown <= round((after - before) / tick) + 1


def test_a_child_first_seen_before_its_exec_is_charged_to_what_it_execs() -> None:
    burner = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ntime.sleep(60)"
    # a shell that sleeps, then execs the burner: first seen as the shell, as a child between fork and exec is
    child = subprocess.Popen(["/bin/sh", "-c", 'sleep 0.5; exec "$0" -c "$1"', sys.executable, burner])
    try:
        sampler = Sampler()
        sampler.sample(initial=True)
        assert next(argv for (pid, _), (_, argv) in sampler.last.items() if pid == str(child.pid)).startswith("/bin/sh")
        deadline = time.monotonic() + 20
        while (_cpu(str(child.pid)) or (0.0, 0))[0] < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        sampler.sample()
        report = sampler.report(top=1000)
        assert kind(f"{sys.executable} -c {burner}") != kind("/bin/sh -c sleep")
        line = next(row for row in report.splitlines() if row.endswith(kind(f"{sys.executable} -c {burner}")))
        assert float(line.split()[0]) >= 0.3, report
    finally:
        child.kill()
        child.wait()
