"""The automations of prefect.yaml, registered by infra/prefect/automations.py on a real Prefect server."""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, read_events

SCRIPT = ROOT / "infra" / "prefect" / "automations.py"
DECLARED = {a["name"]: a for a in yaml.safe_load((ROOT / "prefect.yaml").read_text())["automations"]}


def _register(tmp_path: Path, name: str, *args: str, **changes: Any) -> str:
    """Register prefect.yaml's automation `name` (renamed for this test, `changes` on its trigger) with the
    project's script; the test's name of it."""
    automation = json.loads(json.dumps(DECLARED[name]))
    automation["name"] = f"{name}-{uuid.uuid4().hex[:8]}"
    automation["trigger"].update(changes)
    declared = tmp_path / "prefect.yaml"
    declared.write_text(yaml.safe_dump({"automations": [automation]}))
    done = subprocess.run([sys.executable, str(SCRIPT), str(declared), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and automation["name"] in done.stdout, done.stdout + done.stderr
    return str(automation["name"])


@pytest.fixture
def registered(prefect_api: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """`registered(name, *args, **trigger_changes)`; every automation registered is deleted afterwards."""
    from prefect.client.orchestration import get_client

    names: list[str] = []

    def register(name: str, *args: str, **changes: Any) -> str:
        names.append(_register(tmp_path, name, *args, **changes))
        return names[-1]

    yield register
    with get_client(sync_client=True) as client:
        for name in names:
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)


def _running_run(flow_name: str) -> Any:
    """A flow run of a flow called `flow_name`, set Running as a worker's run would be."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name=flow_name)
    def nothing() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(nothing)
        client.set_flow_run_state(run.id, Running(), force=True)
        return client.read_flow_run(run.id)


def _heartbeat(run: Any) -> None:
    """The event Prefect's engine sends every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds for a running flow run."""
    from prefect.events import emit_event

    emit_event(event="prefect.flow-run.heartbeat",
               resource={"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name},
               related=[{"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow"}])


def _state(run: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run.id).state


def test_a_run_whose_heartbeats_stop_is_marked_crashed_and_a_heartbeating_one_is_not(
        registered: Callable[..., str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    registered("sunday-crash-zombie-flow-runs", within=12)  # prefect.yaml: 300 s (5 missed heartbeats)
    zombie, alive = _running_run("zombie-probe"), _running_run("zombie-probe")
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            _heartbeat(alive)
            stop.wait(3)

    # the test's settings (its server) are a context variable: the thread runs in a copy of this context
    beating = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True)
    beating.start()
    try:
        _heartbeat(zombie)  # and then nothing: its process "died"
        time.sleep(2)
        _heartbeat(zombie)
        deadline = time.monotonic() + 45
        while not _state(zombie).is_crashed() and time.monotonic() < deadline:
            time.sleep(1)
        state = _state(zombie)
        assert state.is_crashed(), state
        assert "heartbeat" in (state.message or "")
        assert _state(alive).is_running()  # it kept sending heartbeats the whole time, and they arrived:
        assert len(read_events("prefect.flow-run.heartbeat", f"prefect.flow-run.{alive.id}")) >= 3
    finally:
        stop.set()
        beating.join(10)
    with get_client(sync_client=True) as client:  # its final state closes its heartbeat window
        client.set_flow_run_state(alive.id, Completed(), force=True)


class _Webhook:
    """A Slack-compatible incoming webhook on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_crashed_run_of_a_pipeline_flow_is_notified(registered: Callable[..., str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    webhook = _Webhook()
    try:
        registered("sunday-notify-crashed-flow-runs", "--notify-url", webhook.url)
        pipeline, other = _running_run("ci"), _running_run("not-a-pipeline-flow")
        with get_client(sync_client=True) as client:
            for run in (other, pipeline):
                client.set_flow_run_state(run.id, Crashed(message="the worker's machine went away"), force=True)
        deadline = time.monotonic() + 30
        while not webhook.received and time.monotonic() < deadline:
            time.sleep(0.5)
        assert webhook.received, "no notification for the crashed ci run"
        time.sleep(3)  # the other run's Crashed event came first: a notification for it would be here by now
        texts = [body["text"] for body in webhook.received]
        assert len(texts) == 1, texts
        assert f"ci run {pipeline.name} crashed: the worker's machine went away" in texts[0]
        assert str(pipeline.id) in texts[0]
        assert other.name not in texts[0]
    finally:
        webhook.close()


def _module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sunday_automations", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_zombie_window_is_overridden_only_for_the_zombie_automation_and_says_so() -> None:
    module = _module()
    entries = module.load(ROOT / "prefect.yaml")
    changed = {e["name"]: e for e in module.with_zombie_window(entries, 45)}
    zombie = changed["sunday-crash-zombie-flow-runs"]
    assert zombie["trigger"]["within"] == 45 and zombie["actions"][0]["message"].startswith("No heartbeat for 45 s")
    assert changed["sunday-notify-crashed-flow-runs"] == DECLARED["sunday-notify-crashed-flow-runs"]
    assert DECLARED["sunday-crash-zombie-flow-runs"]["trigger"]["within"] == 300  # the default is prefect.yaml's
    assert {e["name"]: e for e in entries} == DECLARED  # the entries read are left as they were


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_zombie_window_is_refused_before_anything_is_registered(value: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "prefect.yaml"), "--zombie-seconds", value],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert done.returncode == 2 and "--zombie-seconds" in done.stderr and "SUNDAY_ZOMBIE_SECONDS" in done.stderr, \
        done.stderr
