"""Receivers of Alertmanager's notifications for tests, and a real Alertmanager delivering to them.

A Slack-compatible incoming webhook and a FAKE PagerDuty Events v2 endpoint (a local HTTP server checking the
documented request shape) on one HTTP server, and an SMTP server (aiosmtpd) for mail."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from deployments.alerting import local_receivers, render
from tests.conftest import free_port
from tests.prometheus_fixture import wait_ready

PAGERDUTY_SEVERITIES = {"critical", "error", "warning", "info"}


class Receivers:
    """A Slack-compatible incoming webhook and a FAKE PagerDuty Events v2 endpoint on one HTTP server."""

    def __init__(self) -> None:
        self.slack: list[dict[str, Any]] = []
        self.pagerduty: list[dict[str, Any]] = []
        self.problems: list[str] = []
        receivers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/slack":
                    receivers.slack.append(body)
                    self._answer(200, b"ok")
                elif self.path == "/v2/enqueue":
                    problems = pagerduty_problems(body)
                    receivers.problems += problems
                    receivers.pagerduty.append(body)
                    self._answer(400 if problems else 202, json.dumps(
                        {"status": "invalid event" if problems else "success", "errors": problems,
                         "dedup_key": body.get("dedup_key")}).encode())
                else:
                    self._answer(404, b"")

            def _answer(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def pagerduty_problems(body: dict[str, Any]) -> list[str]:
    """What PagerDuty's Events API v2 (POST /v2/enqueue) would refuse in `body`."""
    problems = []
    if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
        problems.append("routing_key missing")
    if body.get("event_action") not in {"trigger", "acknowledge", "resolve"}:
        problems.append(f"event_action {body.get('event_action')!r}")
    if not isinstance(body.get("dedup_key"), str) or len(body["dedup_key"]) > 255:
        problems.append("dedup_key")
    payload = body.get("payload")
    if body.get("event_action") == "trigger":
        if not isinstance(payload, dict):
            return [*problems, "payload missing"]
        if not payload.get("summary") or len(payload["summary"]) > 1024:
            problems.append("payload.summary")
        if not payload.get("source"):
            problems.append("payload.source")
        if payload.get("severity") not in PAGERDUTY_SEVERITIES:
            problems.append(f"payload.severity {payload.get('severity')!r}")
    return problems


class Mail:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


@contextmanager
def running_alertmanager(home: Path, group_wait: str = "1s", group_interval: str = "1s",
                         ) -> Iterator[tuple[str, Receivers, Mail]]:
    """A real Alertmanager (Debian's) with the configuration `make server` writes, its receivers those above;
    yields its URL and the receivers."""
    receivers, mail = Receivers(), Mail()
    smtp = Controller(mail, hostname="127.0.0.1", port=free_port())
    smtp.start()
    env = {"SUNDAY_ALERT_SLACK_URL": f"{receivers.url}/slack", "SUNDAY_ALERT_PAGERDUTY_KEY": "R0UT1NGKEY",
           "SUNDAY_ALERT_PAGERDUTY_URL": f"{receivers.url}/v2/enqueue", "SUNDAY_ALERT_EMAIL_TO": "oncall@sunday.test",
           "SUNDAY_ALERT_SMTP": f"127.0.0.1:{smtp.port}", "SUNDAY_ALERT_SMTP_TLS": "false"}
    (home / "alertmanager.yml").write_text(render(local_receivers(home, env), group_wait=group_wait,
                                                  group_interval=group_interval))
    port = free_port()
    binary = shutil.which("prometheus-alertmanager")
    assert binary, "no prometheus-alertmanager: run `make setup`"
    with (home / "log").open("w") as log:
        process = subprocess.Popen([binary, f"--config.file={home / 'alertmanager.yml'}",
                                    f"--storage.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                    "--cluster.listen-address="], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, home / "log")
        yield url, receivers, mail
    finally:
        process.terminate()
        process.wait(timeout=30)
        smtp.stop()
        receivers.server.shutdown()
