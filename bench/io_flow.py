"""The flow of bench/scale.py's `runs` part: a small real task, I/O-bound (an HTTP request answered after a wait).

Its module is run from source by the benchmark's work pool (`bench/io_flow.py:io_bound`), not imported by the
pipeline.
"""

from __future__ import annotations

import hashlib

import httpx
from prefect import flow, task


@task
def fetch(url: str) -> str:
    """GET `url` and return the body's SHA-256: the request is the work, the wait is the server's."""
    response = httpx.get(url, timeout=120)
    response.raise_for_status()
    return hashlib.sha256(response.content).hexdigest()


@flow
def io_bound(url: str) -> str:
    return fetch(url)
