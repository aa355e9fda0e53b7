"""A small flow for the prewarmed-server tests: reports whether it ran in a prewarmed process.

Imported with SUNDAY_TEST_PREWARM_THREAD set, it starts a thread (a server that preloads it must refuse to fork).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

if os.environ.get("SUNDAY_TEST_PREWARM_THREAD"):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="prewarm-test-thread").start()


@task
def add_one(x: int) -> int:
    return x + 1


@flow(name="prewarm-probe")
def probe(fail: bool = False, marker: str = "", sleep_child: str = "") -> dict[str, object]:
    """`marker`: log and emit `sunday.test.last-line` as the very last thing; `sleep_child`: spawn `sleep
    SLEEP_CHILD` and wait for it (a run to cancel)."""
    if fail:
        raise RuntimeError("the probe was asked to fail")
    if sleep_child:
        subprocess.Popen(["sleep", sleep_child]).wait()
    result = {"prewarmed": os.environ.get("SUNDAY_PREWARMED"), "two": add_one(1),
              "api": os.environ.get("PREFECT_API_URL")}
    if marker:
        get_run_logger().info("last line %s prewarmed=%s", marker, result["prewarmed"])
        emit_event(event="sunday.test.last-line", resource={"prefect.resource.id": f"sunday.test.{marker}"})
    return result
