"""The flow-run command of the platform's work pools: run it in a prewarmed process, else as Prefect does.

A process worker starts every flow run as a new `python -m prefect.engine`, which spends about two
seconds importing Prefect and the flow's modules before the run turns Running. This launcher is
the pools' `command` instead (`make server` sets it): it hands the run to the prewarmed server
(`deployments.prewarmed`, modules already imported) through the Unix socket named by
SUNDAY_PREWARM_SOCKET, with this process's environment, working directory and stdin/stdout/stderr,
then relays SIGTERM/SIGINT/SIGHUP to the run's process group (the run and every process it started:
the worker signals only the launcher) and exits with the run's exit code. The worker sees an
ordinary child process. When no prewarmed server answers, or it refuses (its code is stale, it has
a second thread, …), the launcher starts `python -m prefect.engine` itself, in a session of its
own, and relays the signals to that group the same way, so a run never depends on the prewarmed
server and a cancelled run leaves no process behind either way.

Only the standard library is imported here: this module's own start-up is the cost it saves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

__all__ = ["main"]

SOCKET_ENV = "SUNDAY_PREWARM_SOCKET"
HEADER = struct.Struct("!Q")  # length of the JSON request that follows the header and the fds


def _relay_to_group(pid: int) -> None:
    """From now on, SIGTERM/SIGINT/SIGHUP to this process go to the process group led by `pid`."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:  # not a group leader yet (just forked) or gone
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)


def _engine(argv: list[str]) -> int:
    """Run `python -m prefect.engine ARGV` in a session of its own; its exit code."""
    pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "prefect.engine", *argv], os.environ,
                         setsid=True)
    _relay_to_group(pid)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code


def _handoff(path: str, argv: list[str]) -> int | None:
    """Run the flow run in the prewarmed server at `path`; its exit code, or None to fall back."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(conn, [HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        reader = conn.makefile("r", encoding="utf-8")
        first = reader.readline().split()
    except OSError:
        conn.close()
        return None
    if len(first) != 2 or first[0] != "PID":  # "STALE", "REFUSED …" or a server that went away: run it here
        conn.close()
        return None
    _relay_to_group(int(first[1]))
    last = reader.readline().split()
    conn.close()
    if len(last) == 2 and last[0] == "EXIT":
        return int(last[1])
    sys.stderr.write(f"prewarmed server lost flow-run process {first[1]}\n")
    return 1


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = os.environ.get(SOCKET_ENV)
    code = _handoff(path, args) if path else None
    sys.exit(_engine(args) if code is None else code)


if __name__ == "__main__":
    main()
