"""Where a command's CPU goes, by kind of process: `python -m devtools.cpu_by_process -- make test`.

The suite is CPU-bound on 2 cores (`vmstat`: 0-3 % idle for all of `make test`), so its wall time is its CPU
time over two; this tells what to make cheaper. It samples /proc every 0.3 s while the command runs and
charges each process the CPU it used in that time (a process alive before the command starts, such as
dockerd, only its growth), grouped by `kind` of command line. A process shorter than one sample is missed;
the line "machine" is /proc/stat's busy time over the same span, so the gap is visible.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")

# (substring of the command line, kind): the first that matches names the process
_KINDS = (
    ("prefect.engine", "flow run (process worker)"), ("deployments.prewarmed", "flow run (prewarmed fork)"),
    ("server start", "Prefect server"), ("worker start", "Prefect worker"), ("adapters.cli", "sunday CLI"),
    ("bin/sunday-release", "sunday CLI"), ("import sys;exec(eval(sys.stdin", "pytest-xdist worker"),
    ("bin/pytest", "pytest"), ("mypy", "mypy"), ("sunday_api", "sample app (container)"),
)


def kind(argv: str) -> str:
    for needle, name in _KINDS:
        if needle in argv:
            return name
    words = argv.split()
    if not words:
        return "kernel threads"
    program = Path(words[0]).name
    if program.startswith("postgres"):
        return "postgres"
    if program.startswith(("python", "node")) and len(words) > 1:
        return f"{program} {' '.join(words[1:3])}"[:60]
    return program[:40]


def _cpu(pid: str) -> tuple[float, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[19])  # utime + stime, start time


def _argv(pid: str) -> str:
    try:
        return " ".join(a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    except OSError:
        return ""


def _busy() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / _TICK  # all but idle and iowait


class Sampler:
    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self.first: dict[tuple[str, int], float] = {}  # CPU when first seen (0 for a process started since)
        self.last: dict[tuple[str, int], tuple[float, str]] = {}
        self.stop = threading.Event()
        self.started = _busy()

    def sample(self, initial: bool = False) -> None:
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            seen = _cpu(pid)
            if seen is None:
                continue
            cpu, start = seen
            key = (pid, start)
            if key not in self.last:
                self.first[key] = cpu if initial else 0.0
                self.last[key] = (cpu, _argv(pid))
            else:  # read again: a child seen between its fork and its exec still showed its parent's
                self.last[key] = (cpu, _argv(pid) or self.last[key][1])

    def run(self) -> None:
        self.sample(initial=True)
        while not self.stop.wait(self.interval):
            self.sample()

    def report(self, top: int) -> str:
        by_kind: dict[str, float] = {}
        count: Counter[str] = Counter()
        for key, (cpu, argv) in self.last.items():
            used, name = cpu - self.first[key], kind(argv)
            if used > 0:
                by_kind[name] = by_kind.get(name, 0.0) + used
                count[name] += 1
        lines = [f"{'CPU s':>8} {'procs':>6}  kind"]
        ranked = sorted(by_kind.items(), key=lambda item: -item[1])[:top]
        lines += [f"{seconds:8.1f} {count[name]:6d}  {name}" for name, seconds in ranked]
        lines.append(f"{sum(by_kind.values()):8.1f} {'':6}  sampled in all")
        lines.append(f"{_busy() - self.started:8.1f} {'':6}  machine (/proc/stat busy)")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --, e.g. -- make test")
    sampler = Sampler()
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    began = time.monotonic()
    code = subprocess.run(command, check=False).returncode
    sampler.stop.set()
    thread.join()
    print(f"\n{' '.join(command)}: exit {code} in {time.monotonic() - began:.0f} s\n{sampler.report(args.top)}",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
