"""The git-push receiver: verifies GitHub-style signed webhooks and emits a `git.push` Prefect event.

Prefect's incoming webhooks are Cloud-only, so this small stdlib HTTP server takes their place:
it checks `X-Hub-Signature-256` before it looks at the body, decides whether the pushed ref is
one the pipeline builds (`should_build`), drops re-deliveries, and hands the push to `emit`
(in production `emit_prefect_event`, whose `git.push` event the `ci` deployment's trigger in
prefect.yaml turns into a CI run). The pure part (`verify_signature`, `parse_push`,
`should_build`) does not touch Prefect; Prefect is imported only where events and the Secret
block are used. docs/webhook.md is the operator's guide.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sunday_release.errors import InputError, PipelineError
from sunday_release.refs import short_ref, validate_ref

__all__ = [
    "DEFAULT_BRANCH",
    "DEFAULT_RELEASE_TAGS",
    "MAX_BODY",
    "SECRET_BLOCK",
    "SECRET_ENV",
    "PushEvent",
    "PushPayloadError",
    "WebhookServer",
    "emit_prefect_event",
    "event_payload",
    "load_secret",
    "make_server",
    "parse_push",
    "repository_slug",
    "serve",
    "should_build",
    "sign",
    "verify_signature",
]

SECRET_BLOCK = "sunday-webhook-secret"
SECRET_ENV = "SUNDAY_WEBHOOK_SECRET"
DEFAULT_BRANCH = "main"
DEFAULT_RELEASE_TAGS = r"^v\d+\.\d+\.\d+$"
MAX_BODY = 1024 * 1024
EVENT_NAME = "git.push"
REMEMBERED_DELIVERIES = 10_000
PATHS = ("/", "/webhook")

_ZERO_SHA = "0" * 40
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_URL = re.compile(r"^(?:https?|ssh|git|file)://\S+$|^[\w.-]+@[\w.-]+:\S+$")
_SIGNATURE_PREFIX = "sha256="

logger = logging.getLogger("sunday_release.webhook")


class PushPayloadError(ValueError):
    """A push body that is not JSON or lacks a field; `field` names it (dotted path)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"push payload: {field}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.field, self.problem))


@dataclass(frozen=True)
class PushEvent:
    """One push as the pipeline sees it.

    Attributes:
        ref: the full ref pushed (`refs/heads/main`, `refs/tags/v1.2.3`).
        sha: the commit the ref points at after the push (`after`; 40 zeros when deleted).
        repository: where to clone from (`repository.clone_url`, else `repository.html_url`).
        pusher: who pushed (`pusher.name`, else `pusher.username` / `pusher.login`).
        delivery: the sender's delivery id (`X-GitHub-Delivery`), "" when it sent none.
        deleted: the push deleted the ref.
    """

    ref: str
    sha: str
    repository: str
    pusher: str
    delivery: str = ""
    deleted: bool = False


# --- the pure part ---------------------------------------------------------------------------


def sign(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value a sender with `secret` puts on `body`."""
    return _SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """True iff `header` is `sha256=<hex HMAC-SHA256 of body keyed with secret>` (constant-time compare)."""
    if not header or not secret:
        return False
    try:
        given = header.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, sign(secret, body).encode("ascii"))


def _field(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _text(data: dict[str, Any], *paths: str) -> str:
    """The first of `paths` holding a non-empty string; PushPayloadError naming the first path otherwise."""
    for path in paths:
        value = _field(data, path)
        if isinstance(value, str) and value.strip():
            return value.strip()
    present = [p for p in paths if _field(data, p) is not None]
    problem = f"expected a non-empty string, got {_field(data, present[0])!r}" if present else "missing"
    raise PushPayloadError(" or ".join(paths), problem)


def parse_push(body: bytes, delivery: str = "") -> PushEvent:
    """Read a GitHub-style push payload (`ref`, `after`, `repository`, `pusher`, `deleted`).

    Raises:
        PushPayloadError: the body is not a UTF-8 JSON object, or a field is missing or invalid.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PushPayloadError("(body)", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PushPayloadError("(body)", f"expected a JSON object, got {type(data).__name__}")
    ref = _text(data, "ref")
    try:
        validate_ref(ref)
    except InputError:
        raise PushPayloadError("ref", f"not a valid git ref: {ref!r}") from None
    sha = _text(data, "after").lower()
    if not _SHA.match(sha):
        raise PushPayloadError("after", f"expected a 40-hex commit id, got {sha!r}")
    repository = _text(data, "repository.clone_url", "repository.html_url")
    if not _URL.match(repository):
        raise PushPayloadError("repository.clone_url", f"expected a git URL, got {repository!r}")
    pusher = _text(data, "pusher.name", "pusher.username", "pusher.login")
    deleted = data.get("deleted", False)
    if not isinstance(deleted, bool):
        raise PushPayloadError("deleted", f"expected true or false, got {deleted!r}")
    return PushEvent(ref=ref, sha=sha, repository=repository, pusher=pusher, delivery=delivery,
                     deleted=deleted or sha == _ZERO_SHA)


def should_build(event: PushEvent, default_branch: str, release_tags: str | re.Pattern[str]) -> bool:
    """True for a push to `default_branch` or of a tag matching `release_tags` (`re.match`, as CI tags
    images); never for a deleted ref."""
    if event.deleted or event.sha == _ZERO_SHA:
        return False
    if event.ref == f"refs/heads/{default_branch}":
        return True
    if event.ref.startswith("refs/tags/"):
        return re.match(release_tags, event.ref.removeprefix("refs/tags/")) is not None
    return False


def repository_slug(url: str) -> str:
    """`https://github.com/acme/app.git` and `git@github.com:acme/app.git` → `github.com/acme/app`."""
    if "://" in url:
        parts = urlsplit(url)
        slug = f"{parts.hostname or ''}{parts.path}"
    else:  # scp-like user@host:path
        host, _, path = url.partition("@")[2].partition(":")
        slug = f"{host}/{path.lstrip('/')}"
    return slug.removesuffix("/").removesuffix(".git").strip("/") or url


def event_payload(event: PushEvent) -> dict[str, str]:
    """The `git.push` event's payload; `ref` is short (`main`, `v1.2.3`), as `flows/ci.py` expects."""
    return {"ref": short_ref(event.ref), "full_ref": event.ref, "sha": event.sha, "repository": event.repository,
            "pusher": event.pusher, "delivery": event.delivery}


# --- the server ------------------------------------------------------------------------------


class _RecentIds:
    """The last `size` delivery ids seen; `add` is atomic across handler threads."""

    def __init__(self, size: int = REMEMBERED_DELIVERIES) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, delivery: str) -> bool:
        """Remember `delivery`; False if it was already remembered."""
        with self._lock:
            if delivery in self._ids:
                self._ids.move_to_end(delivery)
                return False
            self._ids[delivery] = None
            if len(self._ids) > self.size:
                self._ids.popitem(last=False)
            return True

    def discard(self, delivery: str) -> None:
        with self._lock:
            self._ids.pop(delivery, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class WebhookServer(ThreadingHTTPServer):
    """The receiver: a ThreadingHTTPServer holding the secret, the build rule and the emit seam."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], secret: bytes, emit: Callable[[PushEvent], None], *,
                 default_branch: str, release_tags: str, max_body: int) -> None:
        self.secret = secret
        self.emit = emit
        self.default_branch = default_branch
        self.release_tags = re.compile(release_tags)
        self.max_body = max_body
        self.deliveries = _RecentIds()
        # Handler threads start with an empty context; emit runs in (a copy of) the creator's, so it
        # sees the same Prefect settings (e.g. a `temporary_settings` PREFECT_API_URL).
        self.context = contextvars.copy_context()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    timeout = 30  # seconds a client may take to send its request (no thread held forever)
    server_version = "sunday-release-webhook"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def _reply(self, code: int, /, **body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 405:
            self.send_header("Allow", "POST" if self._path() in PATHS else "GET")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _path(self) -> str:
        return urlsplit(self.path).path

    def do_GET(self) -> None:
        if self._path() == "/healthz":
            self._reply(200, status="ok")
        elif self._path() in PATHS:
            self._reply(405, error="method not allowed: send the webhook with POST")
        else:
            self._reply(404, error="not found")

    def _not_allowed(self) -> None:
        self._reply(405, error="method not allowed: send the webhook with POST")

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _read_body(self) -> bytes | None:
        """The body, read only after its declared length was checked; None once an error was sent."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._reply(411, error="send the body with a Content-Length (chunked bodies are not accepted)")
            return None
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.close_connection = True
            self._reply(411, error="Content-Length is required")
            return None
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._reply(400, error="Content-Length is not a non-negative integer")
            return None
        if length > self.server.max_body:
            self.close_connection = True  # the body is never read: the connection cannot be reused
            self._reply(413, error=f"body of {length} bytes is larger than the limit of {self.server.max_body}")
            return None
        try:
            body = self.rfile.read(length)
        except OSError:  # the client stopped sending (socket timeout) or went away
            self.close_connection = True
            return None
        if len(body) != length:
            self.close_connection = True
            self._reply(400, error="the body is shorter than its Content-Length")
            return None
        return body

    def do_POST(self) -> None:
        if self._path() not in PATHS:
            self._reply(404, error="not found: POST to / or /webhook")
            return
        body = self._read_body()
        if body is None:
            return
        server = self.server
        signature = self.headers.get("X-Hub-Signature-256")
        if not verify_signature(server.secret, body, signature):
            logger.warning("rejected a delivery from %s (delivery %s): %s X-Hub-Signature-256", self.address_string(),
                           (self.headers.get("X-GitHub-Delivery") or "-").strip()[:100],
                           "invalid" if signature else "missing")
            self._reply(401, error="missing or invalid X-Hub-Signature-256")
            return
        kind = self.headers.get("X-GitHub-Event")
        if kind == "ping":
            self._reply(200, status="pong")
            return
        if not kind:
            self._reply(400, error="missing X-GitHub-Event header")
            return
        if kind != "push":
            self._reply(202, status="ignored", reason=f"event {kind!r} is not a push")
            return
        delivery = (self.headers.get("X-GitHub-Delivery") or "").strip()
        try:
            event = parse_push(body, delivery)
        except PushPayloadError as exc:
            self._reply(400, error=str(exc), field=exc.field)
            return
        if not should_build(event, server.default_branch, server.release_tags):
            reason = "ref deleted" if event.deleted else (
                f"{event.ref} is neither branch {server.default_branch!r} nor a release tag "
                f"({server.release_tags.pattern})")
            self._reply(202, status="ignored", reason=reason)
            return
        if delivery and not server.deliveries.add(delivery):
            self._reply(200, status="duplicate", delivery=delivery)
            return
        try:
            server.context.copy().run(server.emit, event)
        except Exception as exc:
            if delivery:
                server.deliveries.discard(delivery)  # the sender may redeliver once the cause is fixed
            logger.error("could not emit %s for %s at %s (delivery %s): %s: %s", EVENT_NAME, event.ref,
                         event.sha[:12], delivery or "-", type(exc).__name__, exc)
            self._reply(503, error=f"could not emit the {EVENT_NAME} event: {type(exc).__name__}")
            return
        logger.info("%s %s at %s by %s (delivery %s)", EVENT_NAME, event.ref, event.sha[:12], event.pusher,
                    delivery or "-")
        self._reply(202, status="accepted", ref=short_ref(event.ref), sha=event.sha, delivery=delivery)


def make_server(host: str, port: int, secret: bytes, emit: Callable[[PushEvent], None], *,
                default_branch: str = DEFAULT_BRANCH, release_tags: str = DEFAULT_RELEASE_TAGS,
                max_body: int = MAX_BODY) -> WebhookServer:
    """A bound, not yet serving receiver; call `serve_forever()` (and `shutdown()`, `server_close()`).

    Args:
        host: the address to listen on.
        port: the port (0 picks a free one; see `server_address`).
        secret: the shared HMAC secret; must not be empty.
        emit: called once per accepted push (a duplicate delivery is not emitted again).
        default_branch: pushes to this branch are built.
        release_tags: tags matching this regex are built.
        max_body: larger bodies are refused with 413 without being read.
    """
    if not secret:
        raise InputError("webhook secret is empty: an empty HMAC key signs nothing")
    if max_body < 1:
        raise InputError(f"max_body: expected a positive number of bytes, got {max_body}")
    try:
        re.compile(release_tags)
    except re.error as exc:
        raise InputError(f"release_tags: not a regular expression: {exc}") from None
    return WebhookServer((host, port), secret, emit, default_branch=default_branch, release_tags=release_tags,
                         max_body=max_body)


# --- Prefect: the event and the secret -------------------------------------------------------


def _require_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise InputError("PREFECT_API_URL is not set: the git.push event must go to the server the ci "
                         "deployment's trigger runs on (`sunday-release server start`, or export PREFECT_API_URL)")
    return str(url)


def _flush_events(timeout: float) -> None:
    """Wait until Prefect's events worker has handed every queued event to the server."""
    from prefect.events.worker import EventsWorker

    worker = EventsWorker.instance()
    done = threading.Event()

    def wait() -> None:
        worker.wait_until_empty()
        done.set()

    threading.Thread(target=wait, name="sunday-events-flush", daemon=True).start()
    if not done.wait(timeout):
        raise PipelineError(f"the {EVENT_NAME} event was not sent to the Prefect server within {timeout:.0f}s")


def emit_prefect_event(event: PushEvent, *, timeout: float = 10.0) -> None:
    """Emit `git.push` for `event` to the Prefect server and wait until it is sent.

    The resource is `git.repository.<host/owner/name>`; the payload holds ref (short), full_ref,
    sha, repository, pusher and delivery, which `prefect.yaml` triggers template as
    `{{ event.payload.ref }}`.

    Raises:
        InputError: PREFECT_API_URL is not set (the event would go to a throwaway server).
        PipelineError: Prefect did not take the event (events disabled) or did not send it in `timeout`.
    """
    from prefect.events import emit_event

    _require_api()
    slug = repository_slug(event.repository)
    sent = emit_event(
        event=EVENT_NAME,
        resource={"prefect.resource.id": f"git.repository.{slug}", "prefect.resource.name": slug,
                  "git.ref": event.ref, "git.sha": event.sha},
        payload=event_payload(event),
    )
    if sent is None:
        raise PipelineError(f"Prefect did not emit the {EVENT_NAME} event (events are disabled for this API)")
    _flush_events(timeout)


def load_secret() -> bytes:
    """The HMAC secret: the Prefect Secret block `sunday-webhook-secret`, else env SUNDAY_WEBHOOK_SECRET.

    The block is looked up only when PREFECT_API_URL is set. The value never reaches a log.

    Raises:
        InputError: neither is set (or the one found is empty).
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        import httpx
        from prefect.blocks.system import Secret

        block: Any  # Secret.load is sync here; its async_dispatch typing says "or a coroutine"
        try:
            block = Secret.load(SECRET_BLOCK)
        except ValueError:  # no such block document (Prefect raises ValueError for ObjectNotFound)
            block = None
        except httpx.HTTPError as exc:
            raise PipelineError(f"cannot read the Secret block {SECRET_BLOCK!r} from the Prefect server at "
                                f"{PREFECT_API_URL.value()}: {type(exc).__name__}: {exc}") from None
        if block is not None:
            value = block.get()
            if not isinstance(value, str) or not value:
                raise InputError(f"Secret block {SECRET_BLOCK!r} must hold a non-empty string")
            return value.encode("utf-8")
    value = os.environ.get(SECRET_ENV, "")
    if value:
        return value.encode("utf-8")
    raise InputError(f"no webhook secret: create the Prefect Secret block {SECRET_BLOCK!r} or set {SECRET_ENV} "
                     "(see docs/webhook.md)")


def _build_rule(config_path: Path | None) -> tuple[str, str]:
    if config_path is None:
        return DEFAULT_BRANCH, DEFAULT_RELEASE_TAGS
    import yaml

    from sunday_release.config import CONFIG_FILE, load_config, parse_config
    from sunday_release.errors import ConfigError

    if config_path.is_dir() or config_path.name == CONFIG_FILE:
        root = config_path if config_path.is_dir() else config_path.parent
        config = load_config(root, check_files=False)
    else:
        try:
            data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(str(config_path), "", f"cannot read it: {exc}") from None
        config = parse_config(data, str(config_path))
    return config.default_branch, config.release_tags


def serve(port: int, host: str = "127.0.0.1", config_path: Path | None = None) -> None:
    """Run the receiver until interrupted; accepted pushes become `git.push` events.

    Args:
        port: the port to listen on.
        host: the address to listen on (`0.0.0.0` to take pushes from other machines).
        config_path: a `sunday-release.yaml` (or the repository holding one) whose `default_branch`
            and `release_tags` decide what is built; defaults `main` and `^v\\d+\\.\\d+\\.\\d+$`.
    """
    _require_api()
    default_branch, release_tags = _build_rule(config_path)
    secret = load_secret()
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        server = make_server(host, port, secret, emit_prefect_event, default_branch=default_branch,
                             release_tags=release_tags)
    except OSError as exc:
        raise InputError(f"--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    logger.info("webhook receiver listening on http://%s:%s/webhook (builds %s and tags matching %s)",
                host, server.server_address[1], default_branch, release_tags)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("webhook receiver stopped")
    finally:
        server.server_close()
