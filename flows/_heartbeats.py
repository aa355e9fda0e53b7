"""Flow-run heartbeats that do not hold up the end of a run.

Prefect 3.9's sync flow engine sends heartbeats from a thread that sleeps in 1 s steps and joins
that thread when the run ends: every sync flow run ends up to a second later than its work (half a
second on average, measured on `sunday-release ci`). Its async engine already skips the join; this
gives the sync engine the same: the thread is told to stop and ends by itself at its next 1 s step,
without sending another heartbeat (it checks the stop flag before each one). Heartbeats during the
run are unchanged: every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds, for zombie-run automations.

Applied once, when the `flows` package is imported; a Prefect without that engine function, or
whose function takes no `join_on_exit`, is left as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

__all__ = ["install"]

_MARK = "_sunday_no_join"


def install() -> bool:
    """Make the sync flow engine stop its heartbeat thread without waiting for it; True if done."""
    from prefect import flow_engine

    original: Callable[..., AbstractContextManager[None]] | None = getattr(flow_engine, "_send_heartbeats", None)
    if original is None or getattr(original, _MARK, False):
        return original is not None
    if "join_on_exit" not in inspect.signature(original).parameters:
        return False

    @contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
        with original(engine, join_on_exit=False):
            yield

    setattr(send_heartbeats, _MARK, True)
    flow_engine._send_heartbeats = send_heartbeats  # type: ignore[attr-defined]
    return True
