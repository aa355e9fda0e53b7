"""Flow-run heartbeats (flows/_heartbeats.py): still sent to the server, no longer waited for at the end."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import flows  # noqa: F401  (importing the package installs the change)
from flows import _heartbeats
from tests.conftest import read_events


def test_installed_once_by_importing_flows() -> None:
    from prefect import flow_engine

    assert getattr(flow_engine._send_heartbeats, _heartbeats._MARK) is True
    patched = flow_engine._send_heartbeats
    assert _heartbeats.install() is True and flow_engine._send_heartbeats is patched  # not wrapped twice


def test_heartbeat_sent_and_the_run_ends_without_joining_its_thread(prefect_api: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow
    from prefect.runtime import flow_run

    before = set(threading.enumerate())
    seen: dict[str, Any] = {}
    joined: list[threading.Thread] = []
    join = threading.Thread.join

    def recording_join(self: threading.Thread, timeout: float | None = None) -> None:
        joined.append(self)
        join(self, timeout)

    @flow(name="heartbeat-probe")
    def probe() -> None:
        seen["id"] = str(flow_run.get_id())
        # the heartbeat thread: started for this run, its target is a contextvars `Context.run`
        seen["threads"] = [t for t in threading.enumerate() if t not in before and t.name.endswith("(run)")]

    monkeypatch.setattr(threading.Thread, "join", recording_join)
    probe()
    monkeypatch.undo()
    assert len(seen["threads"]) == 1, seen["threads"]
    heartbeat = seen["threads"][0]
    # Prefect's own sync engine joins it as the run ends (up to 1 s: the thread sleeps in 1 s steps)
    assert heartbeat not in joined
    deadline = time.monotonic() + 10
    while heartbeat.is_alive() and time.monotonic() < deadline:  # it ends by itself at its next step
        time.sleep(0.1)
    assert not heartbeat.is_alive()
    events = read_events("prefect.flow-run.heartbeat", f"prefect.flow-run.{seen['id']}")
    assert len(events) == 1, events  # the one sent when the run started; none after it ended
