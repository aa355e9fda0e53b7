"""The slot holder record and the "is its holder dead" decision (pure: no server, no Docker)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from sunday_release.slot_holder import Holder, Machine, parse_holder, start_time, verdict

HERE = Machine(boot_id="a43fbed0-e30a-4f3e-862c-ea0c1cdd4536", hostname="worker-1", pid_ns="pid:[4026531836]")
LEASE = str(uuid.UUID(int=7))


def _holder(pid: int = 4242, started: int = 1000, machine: Machine = HERE) -> Holder:
    return Holder(lease_id=LEASE, pid=pid, start_time=started, machine=machine)


def test_a_record_round_trips() -> None:
    holder = _holder()
    assert parse_holder(holder.to_json(), "slot.json") == holder


@pytest.mark.parametrize(("text", "says"), [
    ("{", "not JSON"),
    ("[]", "expected a JSON object"),
    ("{}", "lease_id: expected str"),
    (json.dumps({"lease_id": "nope"}), "lease_id: expected a UUID"),
    (json.dumps({"lease_id": LEASE, "pid": "12"}), "pid: expected int, got str"),
    (json.dumps({"lease_id": LEASE, "pid": True, "start_time": 1}), "pid: expected int, got bool"),
    (json.dumps({"lease_id": LEASE, "pid": 0, "start_time": 1}), "expected a positive pid"),
    (json.dumps({"lease_id": LEASE, "pid": 5, "start_time": 1, "pid_ns": "mnt:[1]", "boot_id": "b",
                 "hostname": "h"}), "expected `pid:[N]`"),
    (json.dumps({"lease_id": LEASE, "pid": 5, "start_time": 1, "pid_ns": "pid:[1]", "boot_id": "",
                 "hostname": "h"}), "non-empty ids"),
])
def test_a_bad_record_is_refused_naming_the_file_and_field(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"/env/slot\.json") as refused:
        parse_holder(text, "/env/slot.json")
    assert says in str(refused.value)


def test_start_time_is_field_22_even_when_the_command_name_has_spaces_and_parens() -> None:
    fields = " ".join(str(n) for n in range(3, 30))  # field n holds the number n
    assert start_time(f"77 (a) b (c) {fields}") == 22
    own = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert start_time(own) == start_time(Path("/proc/self/stat").read_text()) > 0


def test_a_holder_of_this_machine_is_dead_when_its_pid_is_gone_or_reused_and_alive_otherwise() -> None:
    holder = _holder(started=1000)
    assert verdict(holder, HERE, None) == "dead"  # no such process
    assert verdict(holder, HERE, 2000) == "dead"  # the pid belongs to a process started later: reused
    assert verdict(holder, HERE, 1000) == "alive"


@pytest.mark.parametrize("elsewhere", [
    Machine(boot_id="another-boot", hostname=HERE.hostname, pid_ns=HERE.pid_ns),  # rebooted since
    Machine(boot_id=HERE.boot_id, hostname="worker-2", pid_ns=HERE.pid_ns),  # another machine
    Machine(boot_id=HERE.boot_id, hostname=HERE.hostname, pid_ns="pid:[4026532000]"),  # another container
])
def test_a_holder_recorded_elsewhere_is_never_judged_dead(elsewhere: Machine) -> None:
    holder = _holder(machine=elsewhere)
    assert verdict(holder, HERE, None) == "elsewhere"
    assert verdict(holder, HERE, 1) == "elsewhere"
