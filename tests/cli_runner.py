"""The sunday-release CLI as most tests run it: `python -m adapters.cli ARGS` in a process of its own, forked
from a prewarmed server (deployments/prewarmed.py) that imported Prefect, the CLI and the flows once per xdist
worker.

`make test` is CPU-bound on two cores and calls the CLI about 130 times; a fresh interpreter spends 1.3 s of CPU
importing Prefect and the flows before the command starts, about a sixth of the suite's CPU. The forked process
is what `python -m adapters.cli` would be: the request's environment, working directory and argv, stdin from
/dev/null, stdout and stderr captured, Prefect's settings re-read from that environment, its own session (a
timeout kills it and everything it started), its logs and events drained before it exits. The server refuses
(and the call runs as a fresh `python -m adapters.cli`) when its imported code changed on disk or it has a
second thread; tests that need a fresh interpreter (a kill -9, a signal, the installed console script) start
the CLI themselves.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from deployments.launch import HEADER

__all__ = ["run_cli", "stop_server"]

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "adapters.cli"]
PRELOAD = "adapters.cli,flows.ci,flows.cd,flows.e2e"

_server: list[tuple[Path, subprocess.Popen[bytes]]] = []  # this process's prewarmed server, once started


def stop_server() -> None:
    """Stop this process's prewarmed CLI server, if it started one."""
    for sock, proc in _server:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.unlink(missing_ok=True)
        try:
            sock.parent.joinpath("prewarmed.log").unlink(missing_ok=True)
            sock.parent.rmdir()
        except OSError:
            pass
    _server.clear()


def _socket() -> Path | None:
    """This process's prewarmed server's socket, started on first use; None when it would not start."""
    if _server:
        sock, proc = _server[0]
        return sock if proc.poll() is None else None
    top = Path(tempfile.mkdtemp(prefix="sunday-cli-"))
    sock = top / "cli.sock"
    with open(top / "prewarmed.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "deployments.prewarmed", "--socket", str(sock),
                                 "--preload", PRELOAD], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _server.append((sock, proc))
    atexit.register(stop_server)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return sock


def _drain(fd: int, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with os.fdopen(fd, "rb") as pipe:
            while chunk := pipe.read1(1 << 16):
                into.append(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _forked(sock: Path, argv: Sequence[str], env: dict[str, str], cwd: Path,
            timeout: float) -> subprocess.CompletedProcess[str] | None:
    """Run the CLI forked from the server at `sock`; None when the server would not (the caller runs it afresh)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    stdin = os.open(os.devnull, os.O_RDONLY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(sock))
        request = json.dumps({"module": "adapters.cli", "argv": list(argv), "cwd": str(cwd), "env": env}).encode()
        socket.send_fds(conn, [HEADER.pack(len(request))], [stdin, out_w, err_w])
        conn.sendall(request)
    except OSError:
        conn.close()
        for fd in (out_r, err_r):
            os.close(fd)
        return None
    finally:
        for fd in (stdin, out_w, err_w):
            os.close(fd)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [_drain(out_r, out), _drain(err_r, err)]
    deadline = time.monotonic() + timeout
    with conn, conn.makefile("r", encoding="utf-8") as replies:
        conn.settimeout(timeout)
        first = replies.readline().split()
        if len(first) != 2 or first[0] != "PID":  # STALE, REFUSED ...: the handler is gone, the pipes close
            return None
        pid = int(first[1])
        try:
            conn.settimeout(max(deadline - time.monotonic(), 0.1))
            last = replies.readline().split()
        except TimeoutError:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise subprocess.TimeoutExpired([*CLI, *argv], timeout) from None
    for reader in readers:  # a daemon the command started may hold the pipes: what it wrote by now is enough
        reader.join(timeout=10)
    code = int(last[1]) if len(last) == 2 and last[0] == "EXIT" else 1
    return subprocess.CompletedProcess([*CLI, *argv], code, b"".join(out).decode(errors="replace"),
                                       b"".join(err).decode(errors="replace"))


def run_cli(argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
            timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    """`python -m adapters.cli ARGV` with `env` (default: this process's), output captured, as subprocess.run
    with check=False would return it."""
    full_env = dict(os.environ if env is None else env)
    sock = _socket()
    done = _forked(sock, argv, full_env, cwd, timeout) if sock else None
    if done is not None:
        return done
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
                          check=False)
