"""The blue-green protocol's pure parts: environment state, router config, smoke verdicts, decisions.

    start idle color → wait healthy → smoke idle → [approval] → switch traffic → watch → keep old
                                         └──────── any failure after the idle color started ───────┘
                                                   → traffic back (if moved), idle color stopped

Nothing here touches Docker, nginx or Prefect; targets (`sunday_release.targets`) do the I/O.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from sunday_release import validate
from sunday_release.config import SmokeCheck
from sunday_release.release import TERMINAL, Phase, advance

__all__ = [
    "Color",
    "EnvState",
    "Release",
    "SmokeResult",
    "WATCH_MIN_REQUESTS",
    "WatchVerdict",
    "evaluate_smoke",
    "other",
    "render_rollout",
    "render_router_config",
    "watch_should_stop",
    "watch_verdict",
]

WATCH_MIN_REQUESTS = 20  # an error rate judged before the window ends needs at least this many requests

Color = Literal["blue", "green"]


def other(color: Color) -> Color:
    """The other color."""
    return "green" if color == "blue" else "blue"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Release(BaseModel):
    """One entry of an environment's release history."""

    revision: int
    version: str
    digests: dict[str, str]  # service → registry/name@sha256:…
    color: Color
    started: str
    finished: str | None = None
    outcome: Literal["in-progress", "live", "rolled-back", "failed", "superseded"] = "in-progress"
    phase: Phase = "started"  # where the release state machine (sunday_release.release) is
    reason: str = ""
    commit: str = ""
    committed_at: str = ""
    database: str = ""  # the application database its containers use ("": the environment's first)
    restored_from: str = ""  # a restore: the backup (S3 key) that database was restored from
    # healthy_to_switch (s), switched_at (epoch s), rollback_seconds (s), failed_at (epoch s)
    timings: dict[str, float] = Field(default_factory=dict)


class EnvState(BaseModel):
    """What an environment is running: the live color and its release history."""

    env: str
    live: Color | None = None
    revision: int = 0  # the live revision
    replicas: dict[str, int] = Field(default_factory=dict)
    history: list[Release] = Field(default_factory=list)

    def live_release(self) -> Release | None:
        return next((r for r in reversed(self.history) if r.revision == self.revision and self.live), None)

    def find(self, revision: int) -> Release | None:
        return next((r for r in self.history if r.revision == revision), None)

    def next_revision(self) -> int:
        return max((r.revision for r in self.history), default=0) + 1

    def close_interrupted(self, live: Color | None) -> None:
        """After a crash: releases left in progress failed; `live` (the router's color) is what serves."""
        for release in self.history:
            if release.outcome == "in-progress":
                release.outcome, release.finished = "failed", now_iso()
                if release.phase not in TERMINAL:
                    release.phase = advance(release.phase, "failed")
                release.reason = release.reason or "interrupted (the deploy process died)"
        if live is not None and self.live != live:
            self.live = live
            serving = [r for r in self.history if r.color == live and r.outcome in ("live", "failed", "superseded")]
            if serving:
                self.revision = serving[-1].revision

    @classmethod
    def load(cls, path: Path, env: str) -> EnvState:
        if not path.is_file():
            return cls(env=env)
        return cls.model_validate_json(path.read_text())

    def save(self, path: Path) -> None:
        """Write atomically (rename), so a killed process leaves the old or the new state, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            f.write(self.model_dump_json(indent=2))
        os.replace(tmp, path)


@dataclass(frozen=True)
class SmokeResult:
    """One smoke check against one endpoint."""

    service: str
    path: str
    endpoint: str
    passed: bool
    status: int | None
    elapsed_ms: float
    reason: str = ""


def evaluate_smoke(check: SmokeCheck, endpoint: str, status: int | None, body: bytes, elapsed_ms: float,
                   error: str = "") -> SmokeResult:
    """Judge one response against a smoke check: status, JSON field, latency budget."""
    def result(passed: bool, reason: str = "") -> SmokeResult:
        return SmokeResult(check.service, check.path, endpoint, passed, status, round(elapsed_ms, 1), reason)

    if status is None:
        return result(False, f"no response: {error}")
    if status != check.status:
        return result(False, f"status {status}, expected {check.status}")
    if check.json_field is not None:
        try:
            value: Any = json.loads(body)
            for part in check.json_field.split("."):
                value = value[part]
        except (ValueError, KeyError, TypeError, IndexError):
            return result(False, f"no JSON field {check.json_field!r} in the response")
        if check.equals is not None and value != check.equals:
            return result(False, f"{check.json_field} = {value!r}, expected {check.equals!r}")
    if elapsed_ms > check.budget_ms:
        return result(False, f"took {elapsed_ms:.0f} ms, budget {check.budget_ms} ms")
    return result(True)


@dataclass(frozen=True)
class WatchVerdict:
    """The watch window's verdict on the live color."""

    passed: bool
    requests: int
    errors: int
    reason: str = ""


def watch_verdict(statuses: Sequence[int], smoke: Sequence[SmokeResult], max_error_rate: float) -> WatchVerdict:
    """Failed smoke checks or a 5xx rate above `max_error_rate` fail the watch."""
    errors = sum(1 for s in statuses if s >= 500)
    failed = [s for s in smoke if not s.passed]
    if failed:
        return WatchVerdict(False, len(statuses), errors, f"smoke {failed[0].path}: {failed[0].reason}")
    if statuses and errors / len(statuses) > max_error_rate:
        return WatchVerdict(False, len(statuses), errors,
                            f"error rate {errors}/{len(statuses)} above {max_error_rate:.1%}")
    return WatchVerdict(True, len(statuses), errors)


def watch_should_stop(verdict: WatchVerdict, smoke: Sequence[SmokeResult],
                      min_requests: int = WATCH_MIN_REQUESTS) -> bool:
    """Can the watch fail before its window ends? At once on a failed smoke check; on the error rate only
    once `min_requests` requests were seen (one 500 among the first two requests is no rate yet).

    A passing verdict never stops the watch early: healthy means healthy for the whole window.
    """
    if verdict.passed:
        return False
    return any(not s.passed for s in smoke) or verdict.requests >= min_requests


def render_router_config(env: str, listen: int, routes: Mapping[str, str], upstreams: Mapping[str, Sequence[str]],
                         color: Color, run_dir: Path, project: str = "") -> str:
    """The nginx config of an environment's router: one upstream per service, `routes` path → service.

    Every upstream lists the live color's replicas (`127.0.0.1:PORT`). Idempotent GETs are retried
    on the next replica when one resets (`proxy_next_upstream`), and keep-alive connections make a
    reload cheap. The access log records the upstream and the color for the watch window.

    Raises:
        InputError: a name or route that does not match its grammar (`sunday_release.validate`): the
            config validates them already; this keeps anything else out of the nginx config.
    """
    validate.name(env, "--env")
    if project:
        validate.name(project, "project")
    for path, service in routes.items():
        validate.route(path, f"services.{service}.route")
    for service in {*routes.values(), *upstreams}:
        validate.name(service, "services")
    lines = [
        f"# sunday-release router of environment {f'{project}/' if project else ''}{env}: live color {color}. "
        "Written by the pipeline.",
        f"pid {run_dir}/nginx.pid;",
        f"error_log {run_dir}/error.log warn;",
        "worker_processes 2;",
        "events { worker_connections 1024; }",
        "http {",
        f"  client_body_temp_path {run_dir}/tmp; proxy_temp_path {run_dir}/tmp;",
        f"  fastcgi_temp_path {run_dir}/tmp; uwsgi_temp_path {run_dir}/tmp; scgi_temp_path {run_dir}/tmp;",
        "  log_format sunday '$msec $status $request_time \"$request_method $uri\" $upstream_addr "
        f"{color}';",
        f"  access_log {run_dir}/access.log sunday;",
        "  server_tokens off;",
    ]
    for service, servers in sorted(upstreams.items()):
        lines.append(f"  upstream {service} {{")
        lines += [f"    server {s} max_fails=0;" for s in servers] or ["    server 127.0.0.1:9 down;"]
        lines += ["    keepalive 32;", "  }"]
    lines += ["  server {", f"    listen 127.0.0.1:{listen};",
              "    location = /router/healthz { return 200 \"ok\\n\"; }"]
    for path, service in sorted(routes.items(), key=lambda kv: -len(kv[0])):
        lines += [
            f"    location {path} {{",
            f"      proxy_pass http://{service};",
            "      proxy_http_version 1.1;",
            "      proxy_set_header Connection \"\";",
            "      proxy_set_header Host $host;",
            "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "      proxy_next_upstream error timeout http_502 http_503;",
            "      proxy_next_upstream_tries 3;",
            "      proxy_connect_timeout 2s;",
            "    }",
        ]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def render_rollout(where: str, release: Release, evidence: Sequence[str]) -> str:
    """The markdown of a rollout decision: outcome, images, and the evidence it rests on (one line each)."""
    lines = [f"# {where}: revision {release.revision} — {release.outcome}", "",
             f"Version `{release.version}` on color **{release.color}**.",
             *([f"Reason: {release.reason}"] if release.reason else []), "", "| service | image |", "|---|---|"]
    lines += [f"| {s} | `{d}` |" for s, d in release.digests.items()]
    lines += ["", "## Evidence", "", *[f"- {e}" for e in evidence]]
    return "\n".join(lines) + "\n"
