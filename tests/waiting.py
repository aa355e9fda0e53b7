"""Waiting for a process the test started: poll its health URL until it answers 200, or fail naming it."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx


def wait_for_healthz(proc: subprocess.Popen[Any], port: int, *, timeout: float = 60, what: str = "the webhook receiver",
                     path: str = "/healthz") -> None:
    """Return once `http://127.0.0.1:port{path}` answers 200; fail if `proc` exits or `timeout` passes first."""
    url = f"http://127.0.0.1:{port}{path}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            _, stderr = proc.communicate(timeout=10)
            tail = (stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or "")[-2000:]
            raise AssertionError(f"{what} exited with {proc.returncode} before {url} answered:\n{tail}")
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout:g}s"
        time.sleep(0.2)
