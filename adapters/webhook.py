"""The git receiver: verifies GitHub-style signed webhooks and emits `git.push` and `git.pull_request` Prefect events.

Prefect's incoming webhooks are Cloud-only, so this small stdlib HTTP server takes their place:
it checks `X-Hub-Signature-256` before it looks at the body, decides whether the pushed ref is
one the pipeline builds (`should_build`), refuses a body it accepted before (a redelivery or a
replay: the key is the SHA-256 of the signed body, kept across restarts by `replay.ReplayStore`),
and hands the push to `emit` (in production `emit_prefect_event`, whose `git.push` event the `ci`
deployment's trigger in prefect.yaml turns into a CI run). Each request has a total deadline for its
head and body, the number of connections served at once is capped, and whatever a client sent is
escaped before it reaches a log line. The pure part (`verify_signature`, `parse_push`, `should_build`,
`printable`) does not touch Prefect; Prefect is imported only where events and the Secret block are
used. docs/webhook.md is the operator's guide.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import io
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sunday_release import validate
from sunday_release.errors import InputError, PipelineError
from sunday_release.refs import pull_ref, short_ref, validate_ref
from sunday_release.replay import ReplayStore, body_key, default_store_path

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DEFAULT_BRANCH",
    "DEFAULT_RELEASE_TAGS",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "REQUEST_DEADLINE",
    "SECRET_BLOCK",
    "SECRET_ENV",
    "PR_ACTIONS",
    "PR_EVENT_NAME",
    "PullRequestEvent",
    "PushEvent",
    "PushPayloadError",
    "WebhookServer",
    "emit_prefect_event",
    "event_payload",
    "load_secret",
    "make_server",
    "parse_pull_request",
    "parse_push",
    "printable",
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
REQUEST_DEADLINE = 10.0  # seconds for a request's line, headers and body together, not per read
MAX_CONNECTIONS = 32  # connections served at once; more are answered 503 without a thread
EVENT_NAME = "git.push"
PR_EVENT_NAME = "git.pull_request"
# the pull request actions the pipeline acts on: CI of the head (the first three); the preview's teardown (closed)
PR_ACTIONS = ("opened", "synchronize", "reopened", "closed")
DEFAULT_CI_BRANCHES = ("main", "develop")
PATHS = ("/", "/webhook")

_ZERO_SHA = "0" * 40
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_URL = re.compile(r"^(?:https?|ssh|git|file)://\S+$|^[\w.-]+@[\w.-]+:\S+$")
_SIGNATURE_PREFIX = "sha256="

logger = logging.getLogger("adapters.webhook")


def printable(text: str) -> str:
    r"""`text` for one log line: backslashes and every non-printable character (C0/C1 controls such as
    ESC and newline, DEL, U+2028, bidi overrides, …) escaped as `\\`, `\x1b`, `\n`, `\u2028`, as `repr` does."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape_char(ch) for ch in text)


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


class _PrintableMessages(logging.Filter):
    """The last guard: no record of this logger carries a non-printable character to a handler.

    Values from a request are passed through `printable` where they are logged (so a backslash is
    escaped too); this filter escapes what is left, e.g. an exception message with a newline.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg = "".join(ch if ch.isprintable() else _escape_char(ch) for ch in message)
            record.args = None
        return True


logger.addFilter(_PrintableMessages())


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


@dataclass(frozen=True)
class PullRequestEvent:
    """One pull request delivery (`X-GitHub-Event: pull_request`; Gitea and Forgejo send the same shape).

    Attributes:
        action: `opened`, `synchronize` (new commits), `reopened`, `closed`, or another GitHub action.
        number: the pull request's number in the base repository.
        sha: its head commit (`pull_request.head.sha`).
        head_ref: the head branch, in the head repository (`pull_request.head.ref`).
        base_ref: the branch it would merge into (`pull_request.base.ref`).
        repository: the base repository (`repository.clone_url`, else `html_url`): CI fetches
            `refs/pull/N/head` from it, read-only, for a fork too.
        head_repository: the head repository's URL ("" when a fork was deleted).
        fork: the head is in another repository than the base (or its repository is gone).
        sender: who acted (`sender.login`).
        delivery: the sender's delivery id (`X-GitHub-Delivery`), "" when it sent none.
    """

    action: str
    number: int
    sha: str
    head_ref: str
    base_ref: str
    repository: str
    head_repository: str
    fork: bool
    sender: str
    delivery: str = ""

    @property
    def ref(self) -> str:
        """`refs/pull/N/head`: what CI checks out."""
        return pull_ref(self.number)


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
    data = _json_object(body)
    ref = _text(data, "ref")
    try:
        validate_ref(ref)
    except InputError:
        raise PushPayloadError("ref", f"not a valid git ref: {ref!r}") from None
    sha = _text(data, "after").lower()
    if not _SHA.match(sha):
        raise PushPayloadError("after", f"expected a 40-hex commit id, got {sha!r}")
    repository = _repository_url(data, "repository")
    pusher = _text(data, "pusher.name", "pusher.username", "pusher.login")
    deleted = data.get("deleted", False)
    if not isinstance(deleted, bool):
        raise PushPayloadError("deleted", f"expected true or false, got {deleted!r}")
    return PushEvent(ref=ref, sha=sha, repository=repository, pusher=pusher, delivery=delivery,
                     deleted=deleted or sha == _ZERO_SHA)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PushPayloadError("(body)", f"not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PushPayloadError("(body)", f"expected a JSON object, got {type(data).__name__}")
    return data


def _repository_url(data: dict[str, Any], prefix: str) -> str:
    """A repository's clone URL at `prefix` (`repository`, `pull_request.head.repo`): a git URL without secrets."""
    url = _text(data, f"{prefix}.clone_url", f"{prefix}.html_url")
    if not _URL.match(url):
        raise PushPayloadError(f"{prefix}.clone_url", f"expected a git URL, got {validate.redact_url(url)!r}")
    try:  # the URL goes into the event and a CI run's parameters: one with a token (`https://x:TOKEN@…`) is refused
        validate.repo(url, "")
    except InputError as exc:
        raise PushPayloadError(f"{prefix}.clone_url", str(exc)) from None
    return url


def _branch_name(data: dict[str, Any], path: str) -> str:
    name = _text(data, path)
    try:
        validate_ref(f"refs/heads/{name}")
    except InputError:
        raise PushPayloadError(path, f"not a valid branch name: {printable(name)!r}") from None
    return name


def parse_pull_request(body: bytes, delivery: str = "") -> PullRequestEvent:
    """Read a GitHub-style `pull_request` payload (`action`, `number`, `pull_request.head`/`base`, `repository`,
    `sender`).

    Raises:
        PushPayloadError: the body is not a UTF-8 JSON object, or a field is missing or invalid (named).
    """
    data = _json_object(body)
    action = _text(data, "action")
    if not re.fullmatch(r"[a-z_]{1,40}", action):
        raise PushPayloadError("action", f"expected a GitHub action name, got {printable(action[:60])!r}")
    number = data.get("number", _field(data, "pull_request.number"))
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 10**10:
        raise PushPayloadError("number", f"expected a positive integer, got {number!r}")
    sha = _text(data, "pull_request.head.sha").lower()
    if not _SHA.match(sha) or sha == _ZERO_SHA:
        raise PushPayloadError("pull_request.head.sha", f"expected a 40-hex commit id, got {printable(sha[:80])!r}")
    repository = _repository_url(data, "repository")
    head_repo = _field(data, "pull_request.head.repo")
    if head_repo is not None and not isinstance(head_repo, dict):
        raise PushPayloadError("pull_request.head.repo", f"expected an object or null, got {type(head_repo).__name__}")
    head_repository = _repository_url(data, "pull_request.head.repo") if head_repo else ""
    base_name = _field(data, "pull_request.base.repo.full_name") or _field(data, "repository.full_name")
    head_name = _field(data, "pull_request.head.repo.full_name")
    if head_repo and isinstance(base_name, str) and isinstance(head_name, str):
        fork = head_name.lower() != base_name.lower()
    else:  # no names to compare: the head repository's URL against the base's; a deleted fork is a fork
        fork = not head_repo or repository_slug(head_repository).lower() != repository_slug(repository).lower()
    return PullRequestEvent(action=action, number=number, sha=sha,
                            head_ref=_branch_name(data, "pull_request.head.ref"),
                            base_ref=_branch_name(data, "pull_request.base.ref"), repository=repository,
                            head_repository=head_repository, fork=fork,
                            sender=_text(data, "sender.login", "sender.username"), delivery=delivery)


def should_build(event: PushEvent, default_branch: str, release_tags: str | re.Pattern[str],
                 ci_branches: tuple[str, ...] | list[str] = ()) -> bool:
    """True for a push to `default_branch` or one of `ci_branches`, or of a tag matching `release_tags`
    (`re.match`, as CI tags images); never for a deleted ref."""
    if event.deleted or event.sha == _ZERO_SHA:
        return False
    if event.ref in {f"refs/heads/{branch}" for branch in (default_branch, *ci_branches)}:
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


def event_payload(event: PushEvent | PullRequestEvent) -> dict[str, str]:
    """The event's payload. `git.push`: `ref` short (`main`, `v1.2.3`), as `flows/ci.py` expects.
    `git.pull_request`: `ref` is `refs/pull/N/head`, which CI fetches from the base repository."""
    if isinstance(event, PullRequestEvent):
        return {"action": event.action, "number": str(event.number), "ref": event.ref, "sha": event.sha,
                "head_ref": event.head_ref, "base_ref": event.base_ref, "repository": event.repository,
                "head_repository": event.head_repository, "fork": str(event.fork).lower(), "sender": event.sender,
                "delivery": event.delivery}
    return {"ref": short_ref(event.ref), "full_ref": event.ref, "sha": event.sha, "repository": event.repository,
            "pusher": event.pusher, "delivery": event.delivery}


def _summary(event: PushEvent | PullRequestEvent) -> tuple[str, str, str]:
    """(event name, what, who) of a log line."""
    if isinstance(event, PullRequestEvent):
        return PR_EVENT_NAME, f"{event.action} #{event.number} ({event.ref})", event.sender
    return EVENT_NAME, event.ref, event.pusher


# --- the server ------------------------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """The read side of a connection where no recv waits past the handler's deadline.

    A per-read timeout lets a client that sends a byte every few seconds keep a thread forever;
    here every read may only take what is left of the request's total deadline.
    """

    def __init__(self, sock: socket.socket, deadline: Callable[[], float]) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        remaining = self._deadline() - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class WebhookServer(ThreadingHTTPServer):
    """The receiver: a ThreadingHTTPServer holding the secret, the build rule, the replay store and the emit
    seam; at most `max_connections` handler threads, each request bounded by `request_deadline`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: connections over the cap are accepted and refused at once

    def __init__(self, address: tuple[str, int], secret: bytes, emit: Callable[[PushEvent | PullRequestEvent], None],
                 *, default_branch: str, release_tags: str, max_body: int, store: ReplayStore,
                 request_deadline: float = REQUEST_DEADLINE, max_connections: int = MAX_CONNECTIONS,
                 ci_branches: tuple[str, ...] = ()) -> None:
        self.secret = secret
        self.emit = emit
        self.default_branch = default_branch
        self.ci_branches = ci_branches
        self.release_tags = re.compile(release_tags)
        self.max_body = max_body
        self.store = store
        self.request_deadline = request_deadline
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._count_lock = threading.Lock()
        self._active = 0
        self._refused = 0
        self._refusals_logged_at = 0.0
        # Handler threads start with an empty context; emit runs in (a copy of) the creator's, so it
        # sees the same Prefect settings (e.g. a `temporary_settings` PREFECT_API_URL).
        self.context = contextvars.copy_context()
        super().__init__(address, _Handler)

    @property
    def active_connections(self) -> int:
        """Connections being served now (each holds one handler thread)."""
        with self._count_lock:
            return self._active

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve `request` in a thread if a slot is free; else answer 503 from here, without one."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        with self._count_lock:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: give its slot back
            self._leave()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._count_lock:
            self._active -= 1
        self._slots.release()

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        body = json.dumps({"error": f"too many connections (limit {self.max_connections}): retry later"}).encode()
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)  # the accepting thread never waits on a client
            request.send(head + body)
            request.recv(65536)  # what already arrived, so that closing sends FIN rather than RST
        except OSError:
            pass
        self.shutdown_request(request)
        now = time.monotonic()
        with self._count_lock:
            self._refused += 1
            if now - self._refusals_logged_at < 1.0:
                return
            refused, self._refused, self._refusals_logged_at = self._refused, 0, now
        logger.warning("refused %d connection(s) with 503, the latest from %s: %d connections in progress "
                       "(the limit)", refused, printable(str(client_address[0])), self.max_connections)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a reply: one log line for a client gone away, a traceback else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            logger.info("connection from %s ended: %s: %s", printable(str(client_address[0])),
                        type(exc).__name__, exc)
        else:
            logger.exception("error while serving %s", printable(str(client_address[0])))

    def server_close(self) -> None:
        super().server_close()
        self.store.close()


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    timeout = None  # no per-read timeout: `_DeadlineReader` bounds the whole request instead
    server_version = "sunday-release-webhook"
    sys_version = ""
    _deadline = 0.0

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket file made by StreamRequestHandler; ours bounds every read
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, lambda: self._deadline))

    def handle_one_request(self) -> None:
        # The deadline runs from when the request (or, on a kept-alive connection, the next one) is awaited
        # until its body is read: an idle or slow client holds the thread for request_deadline at most.
        self._deadline = time.monotonic() + self.server.request_deadline
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        text = format % tuple(printable(a) if isinstance(a, str) else a for a in args)
        logger.info("%s %s", self.address_string(), text)

    def _delivery(self) -> str:
        """The X-GitHub-Delivery header for a log line (unsigned: escaped and cut to 100 characters)."""
        return printable((self.headers.get("X-GitHub-Delivery") or "-").strip()[:100])

    def _reply(self, code: int, /, **body: Any) -> None:
        self.connection.settimeout(self.server.request_deadline)  # a reply is small; a client must take it
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
        except TimeoutError:
            self.close_connection = True
            self._reply(408, error=f"the request was not received within {self.server.request_deadline:g}s")
            return None
        except OSError:  # the client went away
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
                           self._delivery(), "invalid" if signature else "missing")
            self._reply(401, error="missing or invalid X-Hub-Signature-256")
            return
        kind = self.headers.get("X-GitHub-Event")
        if kind == "ping":
            self._reply(200, status="pong")
            return
        if not kind:
            self._reply(400, error="missing X-GitHub-Event header")
            return
        delivery = (self.headers.get("X-GitHub-Delivery") or "").strip()
        if kind == "pull_request":
            try:
                pull = parse_pull_request(body, delivery)
            except PushPayloadError as exc:
                self._reply(400, error=str(exc), field=exc.field)
                return
            if pull.action not in PR_ACTIONS:
                self._reply(202, status="ignored", reason=f"pull request action {pull.action!r} is not one of "
                                                          f"{', '.join(PR_ACTIONS)}")
                return
            self._emit_once(pull, body_key(body))
            return
        if kind != "push":
            self._reply(202, status="ignored", reason=f"event {printable(kind[:60])!r} is neither a push nor a "
                                                      "pull_request")
            return
        try:
            event = parse_push(body, delivery)
        except PushPayloadError as exc:
            self._reply(400, error=str(exc), field=exc.field)
            return
        if not should_build(event, server.default_branch, server.release_tags, server.ci_branches):
            branches = ", ".join(dict.fromkeys((server.default_branch, *server.ci_branches)))
            reason = "ref deleted" if event.deleted else (
                f"{event.ref} is neither a CI branch ({branches}) nor a release tag ({server.release_tags.pattern})")
            self._reply(202, status="ignored", reason=reason)
            return
        self._emit_once(event, body_key(body))

    def _emit_once(self, event: PushEvent | PullRequestEvent, key: str) -> None:
        """Emit `event` unless its body was accepted before (a redelivery, or a replay with a new delivery id)."""
        server = self.server
        name, what, who = _summary(event)
        try:
            first = server.store.claim(key)
        except sqlite3.Error as exc:  # fail closed: without the store a replay could not be told apart
            logger.error("could not record the delivery %s in %s: %s: %s", self._delivery(), server.store.path,
                         type(exc).__name__, exc)
            self._reply(503, error="could not record the delivery in the replay store")
            return
        if not first:
            logger.info("duplicate of an accepted %s (%s at %s, body sha256 %s, delivery %s): not emitted again",
                        "pull request" if isinstance(event, PullRequestEvent) else "push", printable(what),
                        event.sha[:12], key[:16], self._delivery())
            self._reply(200, status="duplicate", delivery=event.delivery)
            return
        try:
            server.context.copy().run(server.emit, event)
        except Exception as exc:
            try:
                server.store.release(key)  # the sender may redeliver once the cause is fixed
            except sqlite3.Error as store_exc:  # the claim then lapses after the store's pending_timeout
                logger.error("could not forget the failed delivery %s: %s", self._delivery(), store_exc)
            logger.error("could not emit %s for %s at %s (delivery %s): %s: %s", name, printable(what),
                         event.sha[:12], self._delivery(), type(exc).__name__, printable(str(exc)))
            self._reply(503, error=f"could not emit the {name} event: {type(exc).__name__}")
            return
        try:
            server.store.confirm(key)
        except sqlite3.Error as exc:  # emitted: say so; the pending claim still refuses replays for a while
            logger.error("could not mark the delivery %s as emitted: %s", self._delivery(), exc)
        logger.info("%s %s at %s by %s (delivery %s)", name, printable(what), event.sha[:12], printable(who),
                    self._delivery())
        if isinstance(event, PullRequestEvent):
            self._reply(202, status="accepted", action=event.action, number=event.number, ref=event.ref,
                        sha=event.sha, fork=event.fork, delivery=event.delivery)
        else:
            self._reply(202, status="accepted", ref=short_ref(event.ref), sha=event.sha, delivery=event.delivery)


def make_server(host: str, port: int, secret: bytes, emit: Callable[[PushEvent | PullRequestEvent], None], *,
                default_branch: str = DEFAULT_BRANCH, release_tags: str = DEFAULT_RELEASE_TAGS,
                max_body: int = MAX_BODY, store: Path | ReplayStore | None = None,
                request_deadline: float = REQUEST_DEADLINE, max_connections: int = MAX_CONNECTIONS,
                ci_branches: tuple[str, ...] | list[str] = DEFAULT_CI_BRANCHES) -> WebhookServer:
    """A bound, not yet serving receiver; call `serve_forever()` (and `shutdown()`, `server_close()`).

    Args:
        host: the address to listen on.
        port: the port (0 picks a free one; see `server_address`).
        secret: the shared HMAC secret; must not be empty.
        emit: called once per accepted push or pull request (a body accepted before is not emitted again).
        default_branch: pushes to this branch are built.
        ci_branches: pushes to these branches are built too (CI only: only the default branch deploys).
        release_tags: tags matching this regex are built.
        max_body: larger bodies are refused with 413 without being read.
        store: the replay store (or its SQLite file) remembering accepted bodies across restarts;
            default `SUNDAY_HOME/webhook/seen.sqlite3`. The server closes it in `server_close()`.
        request_deadline: seconds a client has for a request's line, headers and body together.
        max_connections: connections served at once; more are answered 503 at once.
    """
    if not secret:
        raise InputError("webhook secret is empty: an empty HMAC key signs nothing")
    if max_body < 1:
        raise InputError(f"max_body: expected a positive number of bytes, got {max_body}")
    if not request_deadline > 0:
        raise InputError(f"request_deadline: expected a positive number of seconds, got {request_deadline}")
    if max_connections < 1:
        raise InputError(f"max_connections: expected a positive number, got {max_connections}")
    try:
        re.compile(release_tags)
    except re.error as exc:
        raise InputError(f"release_tags: not a regular expression: {exc}") from None
    for branch in ci_branches:
        try:
            validate_ref(f"refs/heads/{branch}")
        except InputError:
            raise InputError(f"ci_branches: not a valid branch name: {printable(branch)!r}") from None
    replay = store if isinstance(store, ReplayStore) else ReplayStore(store or default_store_path())
    try:
        return WebhookServer((host, port), secret, emit, default_branch=default_branch, release_tags=release_tags,
                             max_body=max_body, store=replay, request_deadline=request_deadline,
                             max_connections=max_connections, ci_branches=tuple(ci_branches))
    except BaseException:
        replay.close()
        raise


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
        raise PipelineError(f"the event was not sent to the Prefect server within {timeout:.0f}s")


def emit_prefect_event(event: PushEvent | PullRequestEvent, *, timeout: float = 10.0) -> None:
    """Emit `git.push` (or `git.pull_request`) for `event` to the Prefect server and wait until it is sent.

    The resource is `git.repository.<host/owner/name>`; the payload (`event_payload`) is what `prefect.yaml`
    triggers template as `{{ event.payload.ref }}`. A pull request's resource also carries `git.pr-action` and
    `git.fork`, which its trigger matches on.

    Raises:
        InputError: PREFECT_API_URL is not set (the event would go to a throwaway server).
        PipelineError: Prefect did not take the event (events disabled) or did not send it in `timeout`.
    """
    from prefect.events import emit_event

    _require_api()
    slug = repository_slug(event.repository)
    resource = {"prefect.resource.id": f"git.repository.{slug}", "prefect.resource.name": slug,
                "git.ref": event.ref, "git.sha": event.sha}
    if isinstance(event, PullRequestEvent):
        resource |= {"git.pr-action": event.action, "git.fork": str(event.fork).lower()}
    name = _summary(event)[0]
    sent = emit_event(event=name, resource=resource, payload=event_payload(event))
    if sent is None:
        raise PipelineError(f"Prefect did not emit the {name} event (events are disabled for this API)")
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


def _build_rule(config_path: Path | None) -> tuple[str, str, tuple[str, ...]]:
    if config_path is None:
        return DEFAULT_BRANCH, DEFAULT_RELEASE_TAGS, DEFAULT_CI_BRANCHES
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
    return config.default_branch, config.release_tags, config.branches_with_ci()


def serve(port: int, host: str = "127.0.0.1", config_path: Path | None = None, store_path: Path | None = None) -> None:
    """Run the receiver until interrupted; accepted pushes become `git.push` events.

    Args:
        port: the port to listen on.
        host: the address to listen on (`0.0.0.0` to take pushes from other machines).
        config_path: a `sunday-release.yaml` (or the repository holding one) whose `default_branch`,
            `ci_branches` and `release_tags` decide what is built; defaults `main`, `develop` and
            `^v\\d+\\.\\d+\\.\\d+$`. Pull requests (opened, synchronize, reopened, closed) are always emitted.
        store_path: the replay store's SQLite file; default `SUNDAY_HOME/webhook/seen.sqlite3`.
    """
    _require_api()
    default_branch, release_tags, ci_branches = _build_rule(config_path)
    secret = load_secret()
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        server = make_server(host, port, secret, emit_prefect_event, default_branch=default_branch,
                             release_tags=release_tags, store=store_path, ci_branches=ci_branches)
    except OSError as exc:
        raise InputError(f"--port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    logger.info("webhook receiver listening on http://%s:%s/webhook (builds %s, tags matching %s and pull "
                "requests; accepted bodies kept in %s)", host, server.server_address[1],
                ", ".join(dict.fromkeys((default_branch, *ci_branches))), release_tags, server.store.path)
    _stop_on_signals(server)
    try:
        server.serve_forever()
        logger.info("webhook receiver stopped")
    except KeyboardInterrupt:  # serve called outside the main thread's signal handlers
        logger.info("webhook receiver stopped")
    finally:
        server.server_close()


def _stop_on_signals(server: WebhookServer) -> None:
    """SIGINT and SIGTERM stop the receiver, even when it inherited SIGINT ignored (a script's background job).

    The handler asks the serving loop to end (`shutdown`, from a thread of its own: it waits for the loop)
    rather than raising in the main thread, where an exception at an arbitrary point (between a handler
    thread's start and its connection count) would leave the accounting wrong and the exit unclean.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, name="webhook-stop", daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
