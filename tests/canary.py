"""Helpers of the secrets canary test: unique canary values, the places they are searched for, and a
webhook receiver and S3 endpoint that record how the canaries were used."""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import DOCKER, free_port

__all__ = ["Canaries", "Hits", "MotoS3", "NotifyReceiver"]


def _canary(purpose: str) -> str:
    return f"canary-{purpose}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Canaries:
    """One distinct random value per secret place (all `[a-z0-9-]`: nothing escapes them in JSON or URLs)."""

    webhook_secret: str = field(default_factory=lambda: _canary("webhook-secret"))
    s3_access_key_id: str = field(default_factory=lambda: _canary("s3-key-id"))
    s3_secret_access_key: str = field(default_factory=lambda: _canary("s3-secret-key"))
    notify_token: str = field(default_factory=lambda: _canary("notify-url"))  # the path part of the URL
    db_password: str = field(default_factory=lambda: _canary("db-password"))
    git_token: str = field(default_factory=lambda: _canary("git-token"))  # `ci --repo https://x:TOKEN@…`
    git_token_push: str = field(default_factory=lambda: _canary("git-token-push"))  # a push's clone_url
    # a service's `secrets:` (aws-sm://…#key) in AWS Secrets Manager (moto), before and after its rotation
    service_secret: str = field(default_factory=lambda: _canary("service-secret"))
    service_secret_rotated: str = field(default_factory=lambda: _canary("service-secret-rotated"))

    def items(self) -> list[tuple[str, str]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def _base64_forms(value: bytes) -> list[bytes]:
    """The text base64 gives `value` at each of the 3 alignments inside a larger blob (standard and URL-safe).

    Prefect's persisted results are base64 of a pickle: a plain substring search would miss a canary there.
    """
    forms = []
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + value)
        start = 4 if pad else 0  # the first group mixes the padding
        end = (pad + len(value)) // 3 * 4  # the last full group of `value` alone
        core = encoded[start:end]
        forms += [core, core.replace(b"+", b"-").replace(b"/", b"_")]
    return forms


class Hits:
    """Every place a canary was found: `scan(where, data)` searches one text or blob for all of them."""

    def __init__(self, canaries: Canaries) -> None:
        self.needles = [(name, value.encode(), "") for name, value in canaries.items()]
        self.needles += [(name, form, " (base64)") for name, value in canaries.items()
                         for form in _base64_forms(value.encode())]
        self.found: list[str] = []
        self.searched: dict[str, int] = {}  # kind of place → how many were searched

    def scan(self, kind: str, where: str, data: str | bytes | None) -> None:
        self.searched[kind] = self.searched.get(kind, 0) + 1
        if not data:
            return
        blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        reported: set[tuple[str, str]] = set()
        for name, needle, how in self.needles:
            at = blob.find(needle)
            if at >= 0 and (name, how) not in reported:
                reported.add((name, how))
                text = blob[max(0, at - 80):at + len(needle) + 40].decode("utf-8", "replace")
                context = "".join(c if c.isprintable() else "·" for c in text)
                self.found.append(f"{name}{how} in {kind} {where}: …{context}…")

    def scan_json(self, kind: str, where: str, value: Any) -> None:
        self.scan(kind, where, json.dumps(value, default=str))

    # ------------------------------------------------------------------ files
    def scan_tree(self, kind: str, root: Path, skip: Callable[[Path], bool] = lambda p: False) -> None:
        """Every file under `root` (not following symlinks), its bytes and its path."""
        for directory, dirnames, filenames in os.walk(root, followlinks=False):
            for name in [*filenames, *dirnames]:
                path = Path(directory) / name
                self.scan(f"{kind} path", str(path), str(path))
            for name in filenames:
                path = Path(directory) / name
                if skip(path) or path.is_symlink() or not path.is_file():
                    continue
                try:
                    self.scan(f"{kind} file", str(path), path.read_bytes())
                except OSError as exc:  # a socket, a file removed meanwhile
                    self.scan(f"{kind} file (unreadable: {exc.strerror})", str(path), None)

    # ------------------------------------------------------------------ the Prefect API
    def scan_prefect_api(self, since: datetime) -> None:
        """Logs, artifacts, flow runs (parameters, state), task runs, events since `since`, variables, blocks."""
        from prefect.client.orchestration import get_client
        from prefect.events.filters import EventFilter, EventOccurredFilter

        with get_client(sync_client=True) as client:
            for page in _pages(lambda offset: client.read_logs(limit=200, offset=offset)):
                for log in page:
                    self.scan("log", f"{log.flow_run_id}/{log.task_run_id} {log.name}", log.model_dump_json())
            for page in _pages(lambda offset: client.read_artifacts(limit=200, offset=offset)):
                for artifact in page:
                    self.scan("artifact", f"{artifact.key} ({artifact.id})", artifact.model_dump_json())
            for page in _pages(lambda offset: client.read_flow_runs(limit=200, offset=offset)):
                for run in page:
                    self.scan("flow run", f"{run.name} ({run.id})", run.model_dump_json())
                    for state in client.read_flow_run_states(run.id):
                        self.scan("flow run state", f"{run.name} {state.type.value}", state.model_dump_json())
            for page in _pages(lambda offset: client.read_task_runs(limit=200, offset=offset)):
                for task_run in page:
                    self.scan("task run", f"{task_run.name} ({task_run.id})", task_run.model_dump_json())
            events = client.read_events(filter=EventFilter(occurred=EventOccurredFilter(since=since)), limit=50)
            while True:
                for event in events.events:
                    self.scan("event", f"{event.event} {event.resource.id}", event.model_dump_json())
                if not events.next_page:
                    break
                events = client.read_events_page(str(events.next_page))
            for variable in client.read_variables(limit=200):
                self.scan("variable", variable.name, variable.model_dump_json())
            for block in client.read_block_documents(include_secrets=True, limit=200):
                self.scan("block document", str(block.name), block.model_dump_json())

    # ------------------------------------------------------------------ Docker and the registry
    def scan_registry_image(self, ref: str) -> list[dict[str, Any]]:
        """The manifest list `registry/name@digest`, each platform's manifest and image config (labels,
        history, env). Returns the configs."""
        name, _, digest = ref.partition("@")
        registry, _, repository = name.partition("/")
        base = f"http://{registry}/v2/{repository}"
        accept = ", ".join(["application/vnd.oci.image.index.v1+json",
                            "application/vnd.docker.distribution.manifest.list.v2+json",
                            "application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])
        configs = []
        with httpx.Client(timeout=30, headers={"Accept": accept}) as client:
            top = client.get(f"{base}/manifests/{digest}")
            top.raise_for_status()
            self.scan("registry manifest", ref, top.content)
            data = top.json()
            manifests = [m["digest"] for m in data.get("manifests", [])] or [digest]
            for platform_digest in manifests:
                manifest = client.get(f"{base}/manifests/{platform_digest}")
                manifest.raise_for_status()
                self.scan("registry manifest", f"{name}@{platform_digest}", manifest.content)
                config_digest = manifest.json()["config"]["digest"]
                config = client.get(f"{base}/blobs/{config_digest}")
                config.raise_for_status()
                self.scan("image config (labels, history, env)", f"{name}@{platform_digest}", config.content)
                configs.append(config.json())
        return configs

    def scan_local_images(self, refs: Iterable[str]) -> None:
        for ref in sorted(set(refs)):
            out = subprocess.run([DOCKER, "image", "inspect", ref], capture_output=True, text=True, check=False)
            if out.returncode == 0:
                self.scan("local image (labels, env, history)", ref, out.stdout)

    def scan_containers(self, env_name: str) -> dict[str, list[str]]:
        """`docker inspect` of the environment's containers without Config.Env (the app's configuration,
        given by --env-file: a DATABASE_URL belongs there). Returns each container's Env to check that."""
        ids = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label=sunday.env={env_name}"],
                             capture_output=True, text=True, check=True).stdout.split()
        envs: dict[str, list[str]] = {}
        if not ids:
            return envs
        inspected = json.loads(subprocess.run([DOCKER, "inspect", *ids], capture_output=True, text=True,
                                              check=True).stdout)
        for container in inspected:
            envs[container["Name"]] = container["Config"].pop("Env", None) or []
            self.scan_json("container (labels, args, mounts)", container["Name"], container)
        return envs


def _pages(read: Callable[[int], list[Any]], size: int = 200) -> Iterator[list[Any]]:
    offset = 0
    while True:
        page = read(offset)
        yield page
        if len(page) < size:
            return
        offset += size


class NotifyReceiver:
    """A Slack-compatible incoming webhook on 127.0.0.1 that records the path and body of every POST."""

    def __init__(self, token: str) -> None:
        received: list[tuple[str, dict[str, Any]]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.path = f"/hooks/{token}"
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [str(body["event"]) for _, body in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class MotoS3:
    """A real S3 endpoint (`moto_server`: AWS S3 cannot run here) that records every request it serves
    (moto's recorder: method, URL, headers) so a test can see which credentials signed them."""

    def __init__(self, recording: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.recording = recording
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoS3:
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                      str(self.port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.endpoint_url, timeout=1)
                return self
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on {self.endpoint_url}") from None
                time.sleep(0.1)

    def client(self, service: str = "s3") -> Any:
        """A boto3 client with credentials of its own (not the canaries: its requests must not count)."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name="us-east-1",  # type: ignore
                            aws_access_key_id="test-harness-key", aws_secret_access_key="test-harness-secret")

    def requests(self) -> list[dict[str, Any]]:
        if not self.recording.exists():
            return []
        return [json.loads(line) for line in self.recording.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def sigv4_signed_with(request: dict[str, Any], access_key_id: str, secret_access_key: str) -> bool:
    """Whether a recorded S3 request carries a valid AWS Signature V4 made with exactly this key pair.

    Recomputed here from the request (AWS's documented algorithm) because moto does not check signatures.
    """
    import hashlib
    import hmac
    import re
    from urllib.parse import parse_qsl, quote, urlsplit

    headers = {k.lower(): str(v) for k, v in request["headers"].items()}
    match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?"
                         r"SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})", headers.get("authorization", ""))
    if match is None or match.group(1) != access_key_id:
        return False
    _, day, region, service, signed, signature = match.groups()
    url = urlsplit(request["url"])
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                     for k, v in sorted(parse_qsl(url.query, keep_blank_values=True)))
    names = signed.split(";")
    canonical = "\n".join([request["method"], url.path or "/", query,
                           "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names), signed,
                           headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD")])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", headers["x-amz-date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_access_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature)
