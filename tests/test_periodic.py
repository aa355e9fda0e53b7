"""`Periodic`: ticks while the `with` block runs, in the creator's context, and stops with it."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from sunday_release.periodic import Periodic

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("WHO", default="import time")


class Counter(Periodic):
    def __init__(self) -> None:
        super().__init__(0.01, "count")
        self.seen: list[str] = []
        self.ticked = threading.Event()

    def run(self) -> None:
        for _ in self.ticks():
            self.seen.append(WHO.get())
            if len(self.seen) >= 3:
                self.ticked.set()


def test_ticks_in_the_creators_context_and_stop_with_the_block() -> None:
    WHO.set("the test")
    with Counter() as counter:
        assert counter.ticked.wait(10)
    stopped_at = len(counter.seen)
    assert not counter._thread.is_alive() and counter._thread.daemon
    time.sleep(0.05)
    assert len(counter.seen) == stopped_at >= 3
    assert set(counter.seen) == {"the test"}


def test_a_periodic_without_run_says_so() -> None:
    with pytest.raises(NotImplementedError):
        Periodic(1, "bare").run()
