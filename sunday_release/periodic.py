"""A daemon thread that does something every few seconds while a `with` block runs."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from typing import Self

__all__ = ["Periodic"]


class Periodic:
    """Runs `run()` in a daemon thread from `__enter__` to `__exit__`; `run` loops over `ticks()`.

    The thread runs in a copy of the creator's context variables (Prefect's settings of a test's or
    a flow's thread: a bare thread sees the import-time ones). `__exit__` stops the ticks and waits
    up to 10 s for the thread: a daemon thread never holds the process open.
    """

    def __init__(self, interval: float, name: str) -> None:
        self.interval = interval
        self._stop = threading.Event()
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self.run,), name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def ticks(self) -> Iterator[None]:
        """Yields once every `interval` seconds until the `with` block ends."""
        while not self._stop.wait(self.interval):
            yield

    def run(self) -> None:
        raise NotImplementedError
