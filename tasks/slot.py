"""An environment's slot as a Prefect concurrency lease held by this process: take, renew, release, free a dead one.

The calls are the Prefect client's (`increment_concurrency_slots_with_lease`, `renew_concurrency_lease`,
`release_concurrency_slots_with_lease`); the holder record (ENV_ROOT/PROJECT/ENV/slot.json) and the
"is its holder dead" decision are `sunday_release.slot_holder`'s.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client

from sunday_release.errors import PipelineError
from sunday_release.periodic import Periodic
from sunday_release.settings import Settings
from sunday_release.slot_holder import Holder, Machine, parse_holder, start_time, verdict
from tasks._common import progress

__all__ = ["Busy", "LeaseRenewer", "forget_record", "free_if_dead", "process_start", "record_path", "release_lease",
           "take_lease", "this_machine", "write_record"]

logger = logging.getLogger("sunday_release.slot")


class Busy(Exception):
    """The slot is held by another run; `retry_after` is the server's hint in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"busy (retry after {retry_after} s)")
        self.retry_after = retry_after


def this_machine() -> Machine:
    """This process's boot id, host name and pid namespace."""
    return Machine(boot_id=Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                   hostname=socket.gethostname(), pid_ns=os.readlink("/proc/self/ns/pid"))


def process_start(pid: int) -> int | None:
    """The start time of process `pid` (ticks after boot), None when there is no such process."""
    try:
        return start_time(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def record_path(project: str, env: str) -> Path:
    """ENV_ROOT/PROJECT/ENV/slot.json: who holds the environment's slot on this machine."""
    return Settings.from_env().env_dir(project, env) / "slot.json"


def write_record(path: Path, lease_id: UUID) -> None:
    """Record this process as the holder of `lease_id` (atomically: rename; mode 0600)."""
    holder = Holder(lease_id=str(lease_id), pid=os.getpid(), start_time=process_start(os.getpid()) or 0,
                    machine=this_machine())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".slot-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(holder.to_json())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_record(path: Path) -> Holder | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("slot holder record %s unreadable (%s): ignored, waiting for the lease to expire", path, exc)
        return None
    try:
        return parse_holder(text, str(path))
    except ValueError as exc:
        logger.warning("slot holder record ignored, waiting for the lease to expire: %s", exc)
        return None


def forget_record(path: Path, lease_id: UUID) -> None:
    """Remove the record when it still names `lease_id` (another run may hold the slot by now)."""
    holder = _read_record(path)
    if holder is not None and holder.lease_id == str(lease_id):
        path.unlink(missing_ok=True)


def take_lease(client: SyncPrefectClient, name: str, seconds: float) -> UUID:
    """One attempt at the slot of limit `name` (it must exist: strict); its lease id.

    Raises:
        Busy: the slot is held (HTTP 423).
        PipelineError: the limit does not exist.
    """
    try:
        response = client.increment_concurrency_slots_with_lease(names=[name], slots=1, mode="concurrency",
                                                                 lease_duration=seconds)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:
            raise _busy(exc.response) from None
        raise
    data = response.json()
    if not data.get("limits"):
        raise PipelineError(f"concurrency limit {name} does not exist (it must be created before a slot is taken)")
    return UUID(data["lease_id"])


def _busy(response: httpx.Response) -> Busy:
    try:
        return Busy(float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return Busy(1.0)


def release_lease(client: SyncPrefectClient, lease_id: UUID, quiet: bool = False) -> None:
    """Give the slot back (a lease that expired or was released already: nothing happens).

    `quiet`: a failure is logged, not raised (on the way out of a run: the lease then expires by itself).
    """
    try:
        client.release_concurrency_slots_with_lease(lease_id)
    except Exception as exc:
        if not quiet:
            raise
        logger.warning("releasing the slot's lease %s failed (it expires by itself): %s", lease_id, exc)


def free_if_dead(client: SyncPrefectClient, path: Path, where: str, tried: set[str]) -> bool:
    """Release the lease of the recorded holder when it ran on this machine and is dead; whether it did.

    Each lease id is tried once (`tried`). A record of another machine, of a live holder, or that
    does not parse is left alone: the caller waits for the lease to expire.
    """
    holder = _read_record(path)
    if holder is None or holder.lease_id in tried:
        return False
    tried.add(holder.lease_id)
    if verdict(holder, this_machine(), process_start(holder.pid)) != "dead":
        return False
    release_lease(client, UUID(holder.lease_id))
    progress(f"freed the slot of a dead run (pid {holder.pid}) of {where}")
    return True


class LeaseRenewer(Periodic):
    """A daemon thread renewing a lease every `seconds / 3`; a failed renewal is logged, never raised."""

    def __init__(self, lease_id: UUID, seconds: float, what: str) -> None:
        super().__init__(seconds / 3, f"renew {what}")
        self.lease_id, self.seconds, self.what = lease_id, seconds, what

    def run(self) -> None:
        with get_client(sync_client=True) as client:
            for _ in self.ticks():
                try:
                    client.renew_concurrency_lease(self.lease_id, lease_duration=self.seconds)
                except Exception as exc:  # a blip of the API must not kill a deploy half-way through a switch
                    logger.warning("renewing the lease of %s failed (the run goes on): %s", self.what, exc)
