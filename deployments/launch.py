"""The flow-run command of the platform's work pools: run it in a prewarmed process, else as Prefect does.

A process worker starts every flow run as a new `python -m prefect.engine`, which spends about two
seconds importing Prefect and the flow's modules before the run turns Running. This launcher is
the pools' `command` instead (`make server` sets it): it hands the run to the prewarmed server
(`deployments.prewarmed`, modules already imported) through the Unix socket named by
SUNDAY_PREWARM_SOCKET, with this process's environment, working directory and stdin/stdout/stderr,
then relays signals to the run's process and exits with its exit code. The worker sees an ordinary
child process. When no prewarmed server answers, or it says its code is stale, the launcher
becomes `python -m prefect.engine` itself (exec), so a run never depends on the prewarmed server.

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


def _engine(argv: list[str]) -> None:
    """Become `python -m prefect.engine ARGV` (never returns)."""
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *argv])


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
    if len(first) != 2 or first[0] != "PID":  # "STALE" or a server that went away: run it here
        conn.close()
        return None
    pid = int(first[1])

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    last = reader.readline().split()
    conn.close()
    if len(last) == 2 and last[0] == "EXIT":
        return int(last[1])
    sys.stderr.write(f"prewarmed server lost flow-run process {pid}\n")
    return 1


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path = os.environ.get(SOCKET_ENV)
    code = _handoff(path, args) if path else None
    if code is None:
        _engine(args)
    sys.exit(code)


if __name__ == "__main__":
    main()
