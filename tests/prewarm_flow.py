"""A small flow for the prewarmed-server tests: reports whether it ran in a prewarmed process."""

from __future__ import annotations

import os

from prefect import flow, task


@task
def add_one(x: int) -> int:
    return x + 1


@flow(name="prewarm-probe")
def probe(fail: bool = False) -> dict[str, object]:
    if fail:
        raise RuntimeError("the probe was asked to fail")
    return {"prewarmed": os.environ.get("SUNDAY_PREWARMED"), "two": add_one(1),
            "api": os.environ.get("PREFECT_API_URL")}
