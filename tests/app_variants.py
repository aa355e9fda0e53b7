"""Variants of the sample app's backend for tests and benchmarks: faults only real users meet.

The users' traffic of a test (a load generator) carries USER_HEADER; the pipeline's own smoke checks never do.
So a release with such a fault passes its smoke checks and turns bad only once it takes the users' traffic: after
the switch, as a release that degrades under real load does.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

USER_HEADER = "X-Sunday-Load"


def inject_user_fault(repo: Path, fail_percent: int = 0, delay_seconds: float = 0.0) -> None:
    """Make the backend of the app in `repo` fail `fail_percent` % of the users' requests (500) and answer each
    of them `delay_seconds` later. Counted in its metrics like any request."""
    server = repo / "backend" / "sunday_api" / "server.py"
    text = server.read_text().replace("import json\n", "import itertools\nimport json\n", 1)
    text = text.replace("MAX_BODY = 64 * 1024\n", "MAX_BODY = 64 * 1024\nFAULTS = itertools.count()\n", 1)
    hook = '            path = self.path.split("?", 1)[0]\n'
    assert hook in text, "the backend's _dispatch changed: update tests/app_variants.py"
    fault = f'            if self.headers.get("{USER_HEADER}"):\n'
    if delay_seconds:
        fault += f"                time.sleep({delay_seconds})\n"
    if fail_percent:
        fault += (f"                if next(FAULTS) % 100 < {fail_percent}:\n"
                  '                    self._send(500, {"error": "injected"}, {})\n'
                  "                    ctx.metrics.observe(self.command, route_name(path), 500,\n"
                  "                                        time.monotonic() - started)\n"
                  "                    return\n")
    else:
        fault += "                pass\n"
    server.write_text(text.replace(hook, hook + fault, 1))


def remove_user_fault(repo: Path, original: str) -> None:
    """Put the backend's server.py back as it was (`original`: its text before `inject_user_fault`)."""
    (repo / "backend" / "sunday_api" / "server.py").write_text(original)


class Users:
    """Requests through an environment's router, 20 a second, as its users send them (with USER_HEADER); each
    (time, status, seconds); status 0 when the request got no answer."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self.stop = url, list[tuple[float, int, float]](), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5, headers={USER_HEADER: "1"}) as client:
            while not self.stop.wait(0.05):
                started = time.monotonic()
                try:
                    code = client.get(f"{self.url}/api/boards").status_code
                except httpx.HTTPError:
                    code = 0
                self.seen.append((time.time(), code, time.monotonic() - started))

    def __enter__(self) -> Users:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def failed_between(self, start: float, end: float) -> int:
        return sum(1 for at, code, _ in self.seen if start <= at <= end and (code >= 500 or code == 0))
