"""Who holds an environment's slot on this machine, and whether that holder is dead: pure parsing and decisions.

The run holding the slot of `(project, env)` (a lease of the Prefect global concurrency limit
`deploy:PROJECT:ENV`) records itself in ENV_ROOT/PROJECT/ENV/slot.json: the lease id, its pid, the
process start time (field 22 of /proc/PID/stat, clock ticks since boot), the boot id, the host name
and the pid namespace. A run that finds the slot busy reads the record: when it was written on this
machine and pid namespace and that pid is gone or is now another process (another start time: the
pid was reused), the holder was killed and its lease may be released at once. Anything else (another
machine, another boot, another container, the holder alive, a record that does not parse) means: wait
for the lease to expire, as Prefect does.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["Holder", "Machine", "Verdict", "parse_holder", "start_time", "verdict"]

Verdict = Literal["dead", "alive", "elsewhere"]
_NS = re.compile(r"^pid:\[\d+\]$")


@dataclass(frozen=True)
class Machine:
    """Where a process runs: boot id (/proc/sys/kernel/random/boot_id), host name, pid namespace (`pid:[N]`)."""

    boot_id: str
    hostname: str
    pid_ns: str


@dataclass(frozen=True)
class Holder:
    """The slot.json record of the run holding an environment's slot."""

    lease_id: str
    pid: int
    start_time: int
    machine: Machine

    def to_json(self) -> str:
        data = {"lease_id": self.lease_id, "pid": self.pid, "start_time": self.start_time, **asdict(self.machine)}
        return json.dumps(data, sort_keys=True) + "\n"


def parse_holder(text: str, where: str) -> Holder:
    """The record in `text` (the content of the file `where`).

    Raises:
        ValueError: not a holder record (bad JSON, a field missing or of the wrong kind); the message
            names `where` and the field, never trusts the rest.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")

    def field(name: str, kind: type) -> object:
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{where}: {name}: expected {kind.__name__}, got {type(value).__name__}")
        return value

    lease_id = str(field("lease_id", str))
    try:
        lease_id = str(uuid.UUID(lease_id))
    except ValueError:
        raise ValueError(f"{where}: lease_id: expected a UUID") from None
    pid, started = int(field("pid", int)), int(field("start_time", int))  # type: ignore[call-overload]
    if pid <= 0 or started < 0:
        raise ValueError(f"{where}: pid/start_time: expected a positive pid and a start time >= 0")
    ns, boot, host = str(field("pid_ns", str)), str(field("boot_id", str)), str(field("hostname", str))
    if not _NS.match(ns) or not boot or not host:
        raise ValueError(f"{where}: pid_ns/boot_id/hostname: expected `pid:[N]` and non-empty ids")
    return Holder(lease_id=lease_id, pid=pid, start_time=started, machine=Machine(boot, host, ns))


def start_time(stat: str) -> int:
    """The start time (field 22, clock ticks after boot) from the text of /proc/PID/stat.

    The second field (the command name, in parentheses) may hold spaces and parentheses: fields are
    counted after its last `)`.
    """
    rest = stat[stat.rindex(")") + 1:].split()
    return int(rest[22 - 3])  # rest[0] is field 3 (state)


def verdict(holder: Holder, here: Machine, start_now: int | None) -> Verdict:
    """Whether the recorded holder is dead, given this machine and the start time of `holder.pid` now.

    `start_now` is None when no process `holder.pid` exists (in our pid namespace). A record of
    another machine, boot or pid namespace is `elsewhere`: its pid means nothing here.
    """
    if holder.machine != here:
        return "elsewhere"
    if start_now is None or start_now != holder.start_time:
        return "dead"  # gone, or the pid now belongs to another process
    return "alive"
