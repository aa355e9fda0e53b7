"""Outages of a real service for a while: a TCP fault proxy, a private dockerd, a small tmpfs, a CLI watcher.

Each is started by the test that needs it and always torn down; none touches the machine's own
services (its dockerd, its registry on :5000).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, free_port

CLI = [sys.executable, "-m", "adapters.cli"]


class FaultProxy:
    """A TCP relay on 127.0.0.1 in front of a real service; `outage(seconds)` closes it: connection refused.

    With `cut_on=b"PUT "`, the first request whose first line holds those bytes (`b".dump HTTP/1.1"`: a PUT of a
    dump, not of its manifest) is relayed in part, then cut on both sides (the server saw a truncated request) and
    the outage starts: the service went away mid-request.
    """

    def __init__(self, target: tuple[str, int], cut_on: bytes | None = None, seconds: float = 10) -> None:
        self.target, self.cut_on, self.seconds = target, cut_on, seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.refused_at: float | None = None  # monotonic time the outage started
        self.back_at: float | None = None
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._up()

    def _up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: the outage
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self.cut_on and self.cut_on in data.split(b"\r\n", 1)[0] and not self._cut.is_set():
                    self._cut.set()
                    dst.sendall(data[: len(data) // 2])  # the server gets half a request
                    self.outage(self.seconds)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def outage(self, seconds: float) -> None:
        """Refuse connections and cut the open ones now; come back after `seconds` (in the background)."""
        self.refused_at = time.monotonic()
        self.down()
        timer = threading.Timer(seconds, self._back)
        timer.daemon = True
        timer.start()

    def _back(self) -> None:
        self._up()
        self.back_at = time.monotonic()

    def down(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._open:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()  # linger 0: a reset, as when the service dies
                except OSError:
                    pass
            self._open.clear()


class Tmpfs:
    """A tmpfs of `size` mounted at `path` (root only); `unmount()` is safe to call twice."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                       capture_output=True)
        self.mounted = True

    def resize(self, size: str) -> None:
        """Free space: a bigger tmpfs, what was on it kept."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
            self.mounted = False


def run_cli_with_fault(args: list[str], marker: str, fault: Callable[[], None], env: dict[str, str],
                       timeout: float = 600) -> tuple[int, str, str, bool]:
    """Run `sunday-release ARGS`; call `fault()` once its progress (stderr) shows `marker`.

    Returns (exit code, stdout, stderr, whether the fault was injected).
    """
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    seen: list[str] = []
    injected = False
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if not injected and marker in line:
                injected = True
                fault()
        proc.wait(timeout)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    return proc.returncode, "".join(out), "".join(seen), injected
