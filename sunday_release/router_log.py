"""The docker target's routers, measured from their access logs: counters for Prometheus.

Every environment's nginx router (sunday_release/bluegreen.py `render_router_config`) writes one line a request,
`$msec $status $request_time "$request_method $uri" $upstream_addr COLOR`, to ENV_ROOT/PROJECT/ENV/router/
access.log. `RouterLogs` follows all of them on a machine (new lines only, from where it stopped; a log that was
replaced or truncated — another inode, fewer bytes, or other first bytes — is read again from its start) and
keeps, per project, env and color:
- `sunday_router_requests_total{project, env, color, code}`: the requests the users sent, by HTTP status;
- `sunday_router_request_duration_seconds{project, env, color}`: a histogram of nginx's `$request_time`;
- `sunday_router_live_color{project, env, color}`: 1 for the color the router sends traffic to.
The router's own probes (`/router/…`) are not counted. The counters belong to the process that reads the logs:
a restart starts them again from the logs' beginnings, which Prometheus' `rate` reads as a counter reset.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BUCKETS", "COLORS", "LogLine", "RouterLogs", "parse_line"]

# seconds; nginx's $request_time has millisecond resolution
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_HEAD = 64  # bytes that tell one log from the next in its place (its first request's time, status, …)
_CHUNK = 8 << 20  # read at most this much of one log a refresh: a large backlog is caught up over scrapes
COLORS = ("blue", "green")


@dataclass(frozen=True)
class LogLine:
    status: int
    seconds: float
    color: str


def parse_line(line: str) -> LogLine | None:
    """A request of the access log; None for the router's own probes and for a line that is not the format's."""
    parts = line.split()
    if len(parts) < 6 or parts[-1] not in COLORS or not parts[1].isdigit():
        return None
    if parts[4].startswith("/router/"):
        return None
    try:
        seconds = float(parts[2])
    except ValueError:
        return None
    return LogLine(int(parts[1]), seconds, parts[-1])


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
        self.count += 1
        self.total += seconds


@dataclass
class _Followed:
    inode: int = -1
    offset: int = 0
    head: bytes = b""  # the log's first bytes when it was first read: a log truncated and written again differs
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (color, code)
    durations: dict[str, _Histogram] = field(default_factory=dict)  # color →


class RouterLogs:
    """Follows the access logs of every environment under `env_root` (ENV_ROOT/PROJECT/ENV/router/access.log)."""

    def __init__(self, env_root: Path) -> None:
        self.env_root = env_root
        self.followed: dict[tuple[str, str], _Followed] = {}

    def refresh(self) -> None:
        """Read what every log gained since the last refresh; forget environments whose router is gone."""
        seen = set()
        for log in self.env_root.glob("*/*/router/access.log"):
            key = (log.parent.parent.parent.name, log.parent.parent.name)
            seen.add(key)
            self._read(log, self.followed.setdefault(key, _Followed()))
        for gone in set(self.followed) - seen:
            del self.followed[gone]

    @staticmethod
    def _read(log: Path, state: _Followed) -> None:
        try:
            with open(log, "rb") as f:
                stat = os.fstat(f.fileno())
                head = f.read(len(state.head)) if state.head else b""
                if stat.st_ino != state.inode or stat.st_size < state.offset or head != state.head:
                    state.inode, state.offset, state.head = stat.st_ino, 0, b""  # a new log, or truncated
                f.seek(state.offset)
                data = f.read(_CHUNK)
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only: nginx may be writing the next one
        if state.offset == 0 and end:
            state.head = data[:min(end, _HEAD)]
        state.offset += end
        for raw in data[:end].decode(errors="replace").splitlines():
            if (line := parse_line(raw)) is None:
                continue
            state.requests[(line.color, str(line.status))] += 1
            state.durations.setdefault(line.color, _Histogram()).observe(line.seconds)

    def live_colors(self) -> dict[tuple[str, str], str]:
        """(project, env) → the color its router's config sends traffic to."""
        live = {}
        for project, env in self.followed:
            try:
                with open(self.env_root / project / env / "router" / "nginx.conf") as f:
                    first = f.readline()
            except OSError:
                continue
            live[(project, env)] = "green" if "live color green." in first else "blue"
        return live

    def requests(self) -> Iterable[tuple[str, str, str, str, int]]:
        """(project, env, color, code, requests so far) of every environment followed."""
        for (project, env), state in sorted(self.followed.items()):
            for (color, code), count in sorted(state.requests.items()):
                yield project, env, color, code, count

    def durations(self) -> Iterable[tuple[str, str, str, list[tuple[str, int]], float]]:
        """(project, env, color, cumulative buckets ending with +Inf, sum of seconds) of every environment."""
        for (project, env), state in sorted(self.followed.items()):
            for color, hist in sorted(state.durations.items()):
                buckets = [(str(bound), count) for bound, count in zip(BUCKETS, hist.buckets, strict=True)]
                yield project, env, color, [*buckets, ("+Inf", hist.count)], hist.total
