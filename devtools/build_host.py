"""Docker engines of a test's or benchmark's own, and a second build host on this machine built on one.

`PrivateDockerd` is a second dockerd (data root, socket, bridge of its own). `build_host` simulates a
second build host honestly: its own dockerd (no image or build cache shared with the machine's), its own
host name and SUNDAY_HOME; it shares only what two real hosts share: the Prefect server, the result
storage (S3) and the registry.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DOCKER = "/usr/bin/docker"  # the client that speaks to dockerd 20.10 (with BuildKit); as tests/conftest.py

__all__ = ["BuildHost", "PrivateDockerd", "build_host"]


class PrivateDockerd:
    """A second dockerd of the test's own: its data root, exec root, pidfile and unix socket under `root`.

    Its default network is a bridge of its own (`--bridge`, created here, deleted by `remove`), with
    `--iptables=false`: it leaves the machine's network alone. Never `--bridge=none`: a dockerd started
    so deletes the interface `docker0`, the machine's dockerd's bridge, and every container of the
    machine loses its network. With `nat`, the bridge reaches the outside world as docker0 does (two
    iptables rules of its own, removed by `remove`): builds that download (apt) work. Stopped with
    SIGTERM, as `systemctl stop docker` does.
    """

    def __init__(self, nat: bool = False) -> None:
        # short: containerd's socket under the exec root must fit in a unix socket path (108 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="sd-dockerd-"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bridge = f"sdbr{secrets.token_hex(3)}"  # an interface name: at most 15 characters
        self.subnet = f"10.213.{secrets.randbelow(256)}"
        rules = [["-t", "nat", "POSTROUTING", "-s", f"{self.subnet}.0/24", "!", "-o", self.bridge, "-j", "MASQUERADE"],
                 ["-t", "filter", "FORWARD", "-i", self.bridge, "-j", "ACCEPT"],
                 ["-t", "filter", "FORWARD", "-o", self.bridge, "-j", "ACCEPT"]]
        self.rules = rules if nat else []

    def start(self, timeout: float = 60) -> PrivateDockerd:
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            for argv in (["link", "add", "name", self.bridge, "type", "bridge"],
                         ["addr", "add", f"{self.subnet}.1/24", "dev", self.bridge],
                         ["link", "set", self.bridge, "up"]):
                subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)
            for rule in self.rules:
                subprocess.run(["iptables", *rule[:2], "-I", *rule[2:]], check=True, capture_output=True, timeout=30)
        argv = ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"), "--host", self.host, f"--bridge={self.bridge}",
                "--iptables=false", "--ip6tables=false", "--ip-masq=false"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while subprocess.run([DOCKER, "--host", self.host, "version"], capture_output=True,
                             check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private dockerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        """Stop it, unmount what it left mounted under its root and delete the root."""
        self.stop()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.root))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False, timeout=30)
        for rule in self.rules:
            subprocess.run(["iptables", *rule[:2], "-D", *rule[2:]], capture_output=True, check=False, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class BuildHost:
    name: str  # its host name (what a process started by `command` sees)
    docker: PrivateDockerd
    home: Path  # its SUNDAY_HOME

    def env(self) -> dict[str, str]:
        """What a worker of this host runs with, besides the platform's settings."""
        return {"DOCKER_HOST": self.docker.host, "SUNDAY_HOME": str(self.home),
                "SUNDAY_TRIVY_CACHE": str(self.home / "trivy-cache")}

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run under this host's name (a UTS namespace of its own)."""
        return ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *argv]

    def images(self) -> list[str]:
        """Every image this host's engine holds (repository:tag, or the id of an untagged one)."""
        done = subprocess.run([DOCKER, "--host", self.docker.host, "images", "-a", "--format",
                               "{{.Repository}}:{{.Tag}} {{.ID}}"], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr
        return [line.split()[1] if line.startswith("<none>") else line.split()[0] for line in done.stdout.splitlines()]


@contextmanager
def build_host(name: str = "build-host-b") -> Iterator[BuildHost]:
    """Start the host's dockerd (its bridge with NAT, so its builds download as the machine's do); stop and
    remove everything on the way out."""
    daemon = PrivateDockerd(nat=True)
    try:
        daemon.start()
        home = daemon.root / "home"
        home.mkdir()
        yield BuildHost(name, daemon, home)
    finally:
        daemon.remove()
