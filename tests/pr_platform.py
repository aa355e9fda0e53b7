"""Pull requests on a running platform: a git host made of a real `git daemon` serving the application's
repository and a FAKE of its REST API (tests/fake_git_host.py), beside `make server` and the webhook receiver.
Used by tests/faults/test_pull_request_platform.py and bench/preview.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.webhook import sign
from tests.conftest import DOCKER, _git, free_port
from tests.fake_git_host import FakeGitHost
from tests.faults.test_platform_e2e import SECRET, Stack, running_stack

__all__ = ["TOKEN", "Host", "pr_platform"]

TOKEN = f"ghs_canary{uuid.uuid4().hex}"  # the git host token: a fork's checks must never see it


@dataclass
class Host:
    stack: Stack
    api: FakeGitHost
    url: str  # the repository's clone URL (git daemon)
    bare: Path
    first_port: int
    api_url: str

    def deliver(self, action: str, number: int, sha: str, fork: bool = False) -> None:
        """What GitHub sends for a pull request event, signed with the shared secret."""
        base = {"full_name": "acme/shop", "clone_url": self.url, "html_url": self.url, "fork": False}
        owner = "mallory" if fork else "acme"
        head = {"full_name": f"{owner}/shop", "clone_url": self.url.replace("acme", owner), "fork": fork}
        body = json.dumps({
            "action": action, "number": number,
            "pull_request": {"number": number, "state": "closed" if action == "closed" else "open",
                             "head": {"ref": f"topic-{number}", "sha": sha, "repo": head},
                             "base": {"ref": "main", "sha": "f" * 40, "repo": base}},
            "repository": base, "sender": {"login": owner}}).encode()
        answer = httpx.post(self.stack.webhook, content=body, timeout=30, headers={
            "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(SECRET.encode(), body)})
        assert answer.status_code == 202 and answer.json()["status"] == "accepted", answer.text

    def push_pr(self, number: int, title: str, files: dict[str, str] | None = None) -> str:
        """A commit on the PR's branch (frontend title `title`), published as refs/pull/N/head of the git host."""
        repo = self.stack.repo
        _git(repo, "checkout", "-q", "-B", f"topic-{number}", "main")
        index = repo / "frontend" / "public" / "index.html"
        text = index.read_text()
        start, end = text.index("<title>") + len("<title>"), text.index("</title>")
        index.write_text(text[:start] + f"Sunday @{title}" + text[end:])
        for path, content in (files or {}).items():
            (repo / path).write_text(content)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", title)
        sha = _git(repo, "rev-parse", "HEAD")
        _git(repo, "push", "-q", str(self.bare), f"+HEAD:refs/pull/{number}/head")
        _git(repo, "checkout", "-q", "main")
        return sha

    def statuses(self, sha: str, context: str) -> list[dict[str, Any]]:
        """The statuses of `context` on `sha`, oldest first."""
        return [s for s in reversed(self.api.statuses.get(sha, [])) if s["context"] == context]

    def wait_status(self, sha: str, context: str, states: set[str], timeout: float,
                    poll: float = 1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.statuses(sha, context)
            if found and found[-1]["state"] in states:
                return found[-1]
            time.sleep(poll)
        pytest.fail(f"{context} on {sha[:12]}: {[s['state'] for s in self.statuses(sha, context)]}, not {states} "
                    f"in {timeout} s\n{self.stack.logs()}")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.3)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def pr_platform(top: Path, previews: str) -> Iterator[Host]:
    """`make server` and the webhook receiver (tests/faults/test_platform_e2e.py's stack) for a copy of the sample
    app served by `git daemon` as git://127.0.0.1:PORT/acme/shop.git, the FAKE git host API, and the project
    registered with the policy `previews: {PREVIEWS}` (its `ports` added: ten free ones). Torn down afterwards."""
    api = FakeGitHost(token=TOKEN)
    api_url = api.start()
    daemon_port, first = free_port(), 20000 + 10 * (uuid.uuid4().int % 800)
    base = top / "git"
    bare = base / "acme" / "shop.git"
    url = f"git://127.0.0.1:{daemon_port}/acme/shop.git"
    bare.parent.mkdir(parents=True)
    project = ""
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
                               "--listen=127.0.0.1", f"--port={daemon_port}", str(base)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _listening(daemon_port):
            assert daemon.poll() is None, f"git daemon exited: {daemon.communicate()[1]}"
            assert time.monotonic() < deadline, "git daemon did not listen in 30 s"
            time.sleep(0.1)
        extra = {"SUNDAY_APP_REPO": url, "SUNDAY_GIT_API": api_url, "SUNDAY_GIT_TOKEN": TOKEN,
                 "SUNDAY_K6_VUS": "2", "SUNDAY_K6_DURATION": "5s"}
        with running_stack(top, extra) as stack:
            project = stack.staging.project
            _git(stack.repo, "clone", "-q", "--bare", str(stack.repo), str(bare))
            policy = top / "policy.yaml"
            policy.write_text(f"previews: {{ports: [{first}, {first + 9}], {previews}}}\n")
            added = subprocess.run([sys.executable, "-m", "adapters.cli", "project", "add", stack.staging.project,
                                    "--repo", url, "--policy", str(policy)], env=stack.platform.client_env(),
                                   capture_output=True, text=True, timeout=120, check=False)
            assert added.returncode == 0, added.stderr
            yield Host(stack, api, url, bare, first, api_url)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        api.stop()
        if project:  # previews the case left behind
            ids = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label=sunday.project={project}"],
                                 capture_output=True, text=True, check=False).stdout.split()
            if ids:
                subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True, check=False)
