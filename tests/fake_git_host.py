"""A FAKE git host API (GitHub itself cannot run here): a local HTTP server that records the commit-status calls
the pipeline makes and checks each against GitHub's documented request shape.

Documented shape (docs.github.com, REST "Commit statuses", API version 2022-11-28):
- `POST /repos/{owner}/{repo}/statuses/{sha}`: `sha` a commit id; a JSON object with `state` (error, failure,
  pending, success; required), `target_url`, `description`, `context`, nothing else; answered 201 with the status
  (`id`, `state`, `description`, `target_url`, `context`, `created_at`, `updated_at`).
- `GET /repos/{owner}/{repo}/commits/{ref}/statuses`: the statuses of the ref, newest first.
- authenticated with `Authorization: Bearer TOKEN` (or `token TOKEN`); `Accept: application/vnd.github+json`.
A request of another shape is answered 422 (as GitHub does for a bad body) and recorded in `problems`.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeGitHost"]

_STATUS = re.compile(r"^/repos/([\w.-]+)/([\w.-]+)/statuses/([0-9a-f]{40})$")
_LIST = re.compile(r"^/repos/([\w.-]+)/([\w.-]+)/commits/([0-9a-f]{40})/statuses$")
_BODY_KEYS = {"state", "target_url", "description", "context"}
_STATES = {"error", "failure", "pending", "success"}


@dataclass
class FakeGitHost:
    token: str
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # sha -> newest first
    calls: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests 502 first
    _clock: datetime = field(default_factory=lambda: datetime(2026, 12, 1, tzinfo=UTC))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        """Serve in a thread; the API base URL."""
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def _answer(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                ok = auth in (f"Bearer {host.token}", f"token {host.token}")
                if not ok:
                    host.problems.append(f"{self.command} {self.path}: Authorization missing or wrong")
                if "application/vnd.github+json" not in self.headers.get("Accept", ""):
                    host.problems.append(f"{self.command} {self.path}: Accept is not application/vnd.github+json")
                return ok

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with host._lock:
                    host.calls.append(("GET", path, None))
                    failing = host.fail_next > 0
                    host.fail_next -= 1 if failing else 0
                if failing:
                    self._answer(502, {"message": "Bad Gateway (fake)"})
                    return
                match = _LIST.match(path)
                if not match:
                    host.problems.append(f"GET {path}: not a documented path")
                    self._answer(404, {"message": "Not Found"})
                    return
                if not self._authorized():
                    self._answer(401, {"message": "Bad credentials"})
                    return
                with host._lock:
                    listed = list(host.statuses.get(match.group(3), []))
                self._answer(200, listed)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = None
                with host._lock:
                    host.calls.append(("POST", self.path, body if isinstance(body, dict) else None))
                    failing = host.fail_next > 0
                    host.fail_next -= 1 if failing else 0
                if failing:
                    self._answer(502, {"message": "Bad Gateway (fake)"})
                    return
                match = _STATUS.match(self.path)
                if not match:
                    host.problems.append(f"POST {self.path}: not a documented path")
                    self._answer(404, {"message": "Not Found"})
                    return
                if not self._authorized():
                    self._answer(401, {"message": "Bad credentials"})
                    return
                problem = _body_problem(body)
                if problem:
                    host.problems.append(f"POST {self.path}: {problem}")
                    self._answer(422, {"message": "Validation Failed", "errors": [problem]})
                    return
                assert isinstance(body, dict)
                with host._lock:
                    host._clock += timedelta(seconds=1)
                    stamp = host._clock.strftime("%Y-%m-%dT%H:%M:%SZ")
                    status = {"id": sum(len(v) for v in host.statuses.values()) + 1, "state": body["state"],
                              "description": body.get("description"), "target_url": body.get("target_url"),
                              "context": body.get("context", "default"), "created_at": stamp, "updated_at": stamp}
                    host.statuses.setdefault(match.group(3), []).insert(0, status)
                self._answer(201, status)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def latest(self, sha: str, context: str) -> dict[str, Any] | None:
        """What GitHub would show for `context` on the commit: its newest status."""
        return next((s for s in self.statuses.get(sha, []) if s["context"] == context), None)


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    extra = set(body) - _BODY_KEYS
    if extra:
        return f"unknown fields {sorted(extra)}"
    if body.get("state") not in _STATES:
        return f"state {body.get('state')!r} is not one of {sorted(_STATES)}"
    for key in ("target_url", "description", "context"):
        if key in body and not isinstance(body[key], str):
            return f"{key} is not a string"
    if len(body.get("description", "")) > 140:
        return "description is longer than 140 characters"
    return None
