"""The git-push receiver: signature, payload and build rule (pure), a real server on a free port,
and the `git.push` event read back from a real Prefect server."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from adapters.webhook import (
    PullRequestEvent,
    PushEvent,
    PushPayloadError,
    WebhookServer,
    emit_prefect_event,
    event_payload,
    load_secret,
    make_server,
    parse_pull_request,
    parse_push,
    printable,
    repository_slug,
    should_build,
    sign,
    verify_signature,
)
from sunday_release.errors import InputError
from tests.conftest import free_port, read_events
from tests.waiting import wait_for_healthz

SECRET = b"It's a Secret to Everybody"
SHA = "0123456789abcdef0123456789abcdef01234567"
RELEASE_TAGS = r"^v\d+\.\d+\.\d+$"


def github_signature(secret: bytes, body: bytes) -> str:
    """How GitHub documents the header, written out here independently of the module."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def push_body(ref: Any = "refs/heads/main", after: Any = SHA, **extra: Any) -> bytes:
    payload: dict[str, Any] = {
        "ref": ref, "before": "f" * 40, "after": after, "deleted": False, "created": False,
        "repository": {"full_name": "acme/shop", "html_url": "https://github.com/acme/shop",
                       "clone_url": "https://github.com/acme/shop.git"},
        "pusher": {"name": "octocat", "email": "octocat@example.invalid"},
        "head_commit": {"id": after, "message": "fix"},
    }
    payload.update(extra)
    return json.dumps(payload).encode()


# --- verify_signature ---------------------------------------------------------------------------


def test_signature_of_githubs_documented_example() -> None:
    # https://docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert verify_signature(SECRET, b"Hello, World!", header)
    assert not verify_signature(SECRET, b"Hello, World?", header)


def _equivalent_keys(a: bytes, b: bytes) -> bool:
    # HMAC pads keys shorter than the block with zero bytes, so b"k" and b"k\0" are the same key.
    return a.rstrip(b"\0") == b.rstrip(b"\0")


@given(secret=st.binary(min_size=1, max_size=80), body=st.binary(max_size=512),
       other_secret=st.binary(min_size=1, max_size=80), other_body=st.binary(max_size=512))
def test_a_header_verifies_iff_it_was_made_from_the_same_secret_and_body(
        secret: bytes, body: bytes, other_secret: bytes, other_body: bytes) -> None:
    assert verify_signature(secret, body, github_signature(secret, body))
    assert sign(secret, body) == github_signature(secret, body)
    assume(not (_equivalent_keys(secret, other_secret) and body == other_body))
    assert not verify_signature(secret, body, github_signature(other_secret, other_body))


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=256), data=st.data())
def test_a_tampered_header_never_verifies(secret: bytes, body: bytes, data: st.DataObject) -> None:
    good = github_signature(secret, body)
    i = data.draw(st.integers(min_value=len("sha256="), max_value=len(good) - 1))
    flipped = good[:i] + ("0" if good[i] != "0" else "1") + good[i + 1:]
    for header in (flipped, good[:-1], good[len("sha256="):], "sha1=" + good[len("sha256="):], good.upper(),
                   good + "0", "", None):
        assert not verify_signature(secret, body, header)


def test_an_empty_secret_verifies_nothing() -> None:
    assert not verify_signature(b"", b"x", github_signature(b"", b"x"))


def test_a_non_ascii_header_is_refused_not_an_error() -> None:
    assert not verify_signature(SECRET, b"x", "sha256=é")


# --- parse_push ---------------------------------------------------------------------------------


def test_parse_push() -> None:
    event = parse_push(push_body(), delivery="d-1")
    assert event == PushEvent(ref="refs/heads/main", sha=SHA, repository="https://github.com/acme/shop.git",
                              pusher="octocat", delivery="d-1", deleted=False)


def test_parse_push_falls_back_to_html_url_and_other_pusher_fields() -> None:
    event = parse_push(push_body(repository={"html_url": "https://git.example.com/acme/shop"},
                                 pusher={"username": "gitea-user"}))
    assert (event.repository, event.pusher) == ("https://git.example.com/acme/shop", "gitea-user")


def test_parse_push_marks_deleted_refs() -> None:
    assert parse_push(push_body(deleted=True)).deleted
    assert parse_push(push_body(after="0" * 40)).deleted


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "(body)"),
    (b"\xff\xfe", "(body)"),
    (b"[1, 2]", "(body)"),
    (json.dumps({"after": SHA}).encode(), "ref"),
    (push_body(ref=""), "ref"),
    (push_body(ref=7), "ref"),
    (push_body(ref="refs/heads/../../etc"), "ref"),
    (push_body(ref="refs/heads/x; rm -rf /"), "ref"),
    (push_body(after="HEAD"), "after"),
    (push_body(after=None), "after"),
    (push_body(repository={"full_name": "acme/shop"}), "repository.clone_url or repository.html_url"),
    (push_body(repository="acme/shop"), "repository.clone_url or repository.html_url"),
    (push_body(repository={"clone_url": "/srv/git/shop"}), "repository.clone_url"),
    (push_body(pusher={"email": "x@y"}), "pusher.name or pusher.username or pusher.login"),
    (push_body(deleted="yes"), "deleted"),
])
def test_parse_push_names_the_bad_field(body: bytes, field: str) -> None:
    with pytest.raises(PushPayloadError) as info:
        parse_push(body)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert field in str(info.value)


# --- should_build -------------------------------------------------------------------------------


def event(ref: str, sha: str = SHA, deleted: bool = False) -> PushEvent:
    return PushEvent(ref=ref, sha=sha, repository="https://github.com/acme/shop.git", pusher="o", deleted=deleted)


@pytest.mark.parametrize(("ref", "built"), [
    ("refs/heads/main", True),
    ("refs/heads/feature/x", False),
    ("refs/heads/main-old", False),
    ("refs/heads/v1.2.3", False),  # a branch named like a release is not a release
    ("refs/tags/v1.2.3", True),
    ("refs/tags/v1.2", False),
    ("refs/tags/v1.2.3-rc1", False),
    ("refs/tags/main", False),
    ("main", False),
])
def test_should_build(ref: str, built: bool) -> None:
    assert should_build(event(ref), "main", RELEASE_TAGS) is built


def test_should_build_never_builds_a_deleted_ref() -> None:
    assert not should_build(event("refs/heads/main", deleted=True), "main", RELEASE_TAGS)
    assert not should_build(event("refs/tags/v1.2.3", sha="0" * 40), "main", RELEASE_TAGS)


def test_should_build_follows_the_config() -> None:
    assert should_build(event("refs/heads/trunk"), "trunk", r"^release-\d+$")
    assert not should_build(event("refs/heads/main"), "trunk", r"^release-\d+$")
    assert should_build(event("refs/tags/release-7"), "trunk", r"^release-\d+$")


def test_event_payload_carries_the_short_ref_ci_expects() -> None:
    payload = event_payload(PushEvent("refs/tags/v1.2.3", SHA, "git@github.com:acme/shop.git", "o", "d"))
    assert payload == {"ref": "v1.2.3", "full_ref": "refs/tags/v1.2.3", "sha": SHA,
                       "repository": "git@github.com:acme/shop.git", "pusher": "o", "delivery": "d"}


@pytest.mark.parametrize(("url", "slug"), [
    ("https://github.com/acme/shop.git", "github.com/acme/shop"),
    ("https://github.com/acme/shop", "github.com/acme/shop"),
    ("git@github.com:acme/shop.git", "github.com/acme/shop"),
    ("ssh://git@git.example.com:2222/acme/shop.git", "git.example.com/acme/shop"),
])
def test_repository_slug(url: str, slug: str) -> None:
    assert repository_slug(url) == slug


def test_should_build_takes_the_ci_branches_too() -> None:
    assert should_build(event("refs/heads/develop"), "main", RELEASE_TAGS, ("main", "develop"))
    assert should_build(event("refs/heads/release/2.x"), "main", RELEASE_TAGS, ("release/2.x",))
    assert not should_build(event("refs/heads/feature/x"), "main", RELEASE_TAGS, ("main", "develop"))
    assert not should_build(event("refs/heads/develop", deleted=True), "main", RELEASE_TAGS, ("develop",))


# --- pull requests: GitHub's documented `pull_request` payload (Gitea and Forgejo send the same fields) ---------

FORK_SHA = "2" * 40


def pr_body(action: str = "opened", number: Any = 7, sha: Any = SHA, head_owner: str = "acme",
            head_repo: bool = True, **extra: Any) -> bytes:
    base = {"full_name": "acme/shop", "html_url": "https://github.com/acme/shop",
            "clone_url": "https://github.com/acme/shop.git", "fork": False}
    head = {"full_name": f"{head_owner}/shop", "html_url": f"https://github.com/{head_owner}/shop",
            "clone_url": f"https://github.com/{head_owner}/shop.git", "fork": head_owner != "acme"}
    payload: dict[str, Any] = {
        "action": action, "number": number,
        "pull_request": {"number": number, "state": "open", "title": "Trim board names",
                         "head": {"label": f"{head_owner}:trim", "ref": "trim", "sha": sha,
                                  "repo": head if head_repo else None},
                         "base": {"label": "acme:main", "ref": "main", "sha": "f" * 40, "repo": base}},
        "repository": base, "sender": {"login": "octocat", "type": "User"},
    }
    payload.update(extra)
    return json.dumps(payload).encode()


def test_parse_pull_request_of_the_same_repository() -> None:
    pull = parse_pull_request(pr_body(), "d-1")
    assert pull == PullRequestEvent(action="opened", number=7, sha=SHA, head_ref="trim", base_ref="main",
                                    repository="https://github.com/acme/shop.git",
                                    head_repository="https://github.com/acme/shop.git", fork=False, sender="octocat",
                                    delivery="d-1")
    assert pull.ref == "refs/pull/7/head"  # fetched from the base repository, read-only


def test_parse_pull_request_tells_a_fork_even_a_deleted_one() -> None:
    fork = parse_pull_request(pr_body(head_owner="mallory", sha=FORK_SHA))
    assert fork.fork and fork.head_repository == "https://github.com/mallory/shop.git"
    assert fork.repository == "https://github.com/acme/shop.git"  # CI still fetches refs/pull/7/head from here
    gone = parse_pull_request(pr_body(head_repo=False))
    assert gone.fork and gone.head_repository == ""
    same_names_other_case = parse_pull_request(pr_body(head_owner="ACME"))
    assert not same_names_other_case.fork


@pytest.mark.parametrize(("body", "field"), [
    (b"[]", "(body)"),
    (pr_body(action="Opened; rm -rf"), "action"),
    (pr_body(number="7"), "number"),
    (pr_body(number=True), "number"),
    (pr_body(number=0), "number"),
    (pr_body(sha="not-a-sha"), "pull_request.head.sha"),
    (pr_body(sha="0" * 40), "pull_request.head.sha"),
    (pr_body(repository={"clone_url": "https://x:ghp_S3cr3tT0kenValue1234567890@github.com/acme/shop.git"}),
     "repository.clone_url"),
    (pr_body(repository={"clone_url": "--upload-pack=touch /tmp/x"}), "repository.clone_url"),
])
def test_parse_pull_request_names_the_bad_field(body: bytes, field: str) -> None:
    with pytest.raises(PushPayloadError) as caught:
        parse_pull_request(body)
    assert caught.value.field == field
    assert "ghp_S3cr3t" not in str(caught.value)


def test_parse_pull_request_refuses_a_branch_name_git_would_take_as_an_option() -> None:
    data = json.loads(pr_body())
    data["pull_request"]["head"]["ref"] = "--upload-pack=x"
    with pytest.raises(PushPayloadError) as caught:
        parse_pull_request(json.dumps(data).encode())
    assert caught.value.field == "pull_request.head.ref"


def test_the_pull_request_event_payload() -> None:
    payload = event_payload(parse_pull_request(pr_body(head_owner="mallory"), "d-9"))
    assert payload == {"action": "opened", "number": "7", "ref": "refs/pull/7/head", "sha": SHA, "head_ref": "trim",
                       "base_ref": "main", "repository": "https://github.com/acme/shop.git",
                       "head_repository": "https://github.com/mallory/shop.git", "fork": "true", "sender": "octocat",
                       "delivery": "d-9"}


# --- the server ---------------------------------------------------------------------------------


class Recorded:
    """The emit test double: records what the server would have sent to Prefect."""

    def __init__(self) -> None:
        self.events: list[PushEvent] = []
        self.lock = threading.Lock()
        self.fail_next = 0

    def __call__(self, event: PushEvent) -> None:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("prefect server unreachable (test double)")
            self.events.append(event)


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


MAX_BODY = 64 * 1024


@contextmanager
def running(emit: Callable[[PushEvent], None], store: Path, **options: Any) -> Iterator[WebhookServer]:
    """A receiver on a free port serving in a thread, always shut down and closed."""
    srv = make_server("127.0.0.1", free_port(), SECRET, emit, default_branch="main", release_tags=RELEASE_TAGS,
                      max_body=MAX_BODY, store=store, **options)
    # polling for shutdown every 50 ms, not 0.5 s: shutdown() waits for the poll, once per test
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "webhook" / "seen.sqlite3"


@pytest.fixture
def server(recorded: Recorded, store_path: Path) -> Iterator[WebhookServer]:
    with running(recorded, store_path) as srv:
        yield srv


def url(srv: WebhookServer, path: str = "/webhook") -> str:
    host, port = srv.server_address[:2]
    return f"http://{host!s}:{port}{path}"


def deliver(srv: WebhookServer, body: bytes, *, kind: str | None = "push", delivery: str | None = None,
            signature: str | None = "sign", path: str = "/webhook") -> httpx.Response:
    headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/test"}
    if kind is not None:
        headers["X-GitHub-Event"] = kind
    headers["X-GitHub-Delivery"] = delivery if delivery is not None else str(uuid.uuid4())
    if signature == "sign":
        headers["X-Hub-Signature-256"] = github_signature(SECRET, body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return httpx.post(url(srv, path), content=body, headers=headers, timeout=10)


def test_a_signed_push_to_main_is_accepted_and_emitted(server: WebhookServer, recorded: Recorded) -> None:
    response = deliver(server, push_body(), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")

    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "ref": "main", "sha": SHA,
                               "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert recorded.events == [PushEvent("refs/heads/main", SHA, "https://github.com/acme/shop.git", "octocat",
                                         "72d3162e-cc78-11e3-81ab-4c9367dc0958")]


def test_a_release_tag_is_accepted_at_the_root_path_too(server: WebhookServer, recorded: Recorded) -> None:
    response = deliver(server, push_body(ref="refs/tags/v2.0.1"), path="/")
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    assert [e.ref for e in recorded.events] == ["refs/tags/v2.0.1"]


@pytest.mark.parametrize("signature", [
    None, "", "sha256=" + "0" * 64, github_signature(b"another secret", push_body()), "sha1=abc",
])
def test_missing_or_bad_signature_is_401(server: WebhookServer, recorded: Recorded, signature: str | None) -> None:
    response = deliver(server, push_body(), signature=signature)
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json()["error"]
    assert SECRET.decode() not in response.text
    assert recorded.events == []


def test_the_signature_is_checked_before_the_json_is_parsed(server: WebhookServer) -> None:
    assert deliver(server, b"{not json", signature="sha256=" + "0" * 64).status_code == 401
    assert deliver(server, b"{not json").status_code == 400


def test_a_signature_over_another_body_is_401(server: WebhookServer, recorded: Recorded) -> None:
    forged = push_body(ref="refs/tags/v9.9.9")
    response = deliver(server, forged, signature=github_signature(SECRET, push_body()))
    assert response.status_code == 401 and recorded.events == []


def test_a_body_over_the_limit_is_413(server: WebhookServer, recorded: Recorded) -> None:
    body = push_body(padding="x" * MAX_BODY)
    response = deliver(server, body)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]
    assert recorded.events == []


def _raw_request(srv: WebhookServer, head: str, timeout: float = 5) -> tuple[int, dict[str, Any], float]:
    """Send only the request head; return status, JSON body and seconds to the answer."""
    host, port = srv.server_address[:2]
    started = time.monotonic()
    with socket.create_connection((str(host), int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1]), time.monotonic() - started


def test_the_declared_length_is_checked_before_anything_is_read(server: WebhookServer) -> None:
    # Content-Length of 1 GiB and no body at all: the answer must come at once, not after a read.
    status, body, took = _raw_request(
        server, f"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: {2**30}\r\n\r\n")
    assert status == 413 and "larger than the limit" in body["error"]
    assert took < 2


def test_a_chunked_body_without_length_is_refused(server: WebhookServer) -> None:
    status, body, _ = _raw_request(
        server, "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert status == 411 and "Content-Length" in body["error"]


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    json.dumps({"ref": "refs/heads/main"}).encode(),
    push_body(after="not-a-sha"),
])
def test_malformed_push_is_400(server: WebhookServer, recorded: Recorded, body: bytes) -> None:
    response = deliver(server, body)
    assert response.status_code == 400
    assert "push payload" in response.json()["error"]
    assert recorded.events == []


def test_ping_is_200_pong(server: WebhookServer, recorded: Recorded) -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    response = deliver(server, body, kind="ping")
    assert response.status_code == 200 and response.json() == {"status": "pong"}
    assert deliver(server, body, kind="ping", signature=None).status_code == 401
    assert recorded.events == []


def test_other_events_are_202_ignored(server: WebhookServer, recorded: Recorded) -> None:
    response = deliver(server, json.dumps({"action": "opened"}).encode(), kind="issues")
    assert response.status_code == 202 and response.json()["status"] == "ignored"
    assert deliver(server, push_body(), kind=None).status_code == 400  # no event header at all
    assert recorded.events == []


@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened", "closed"])
def test_a_signed_pull_request_is_accepted_and_emitted(server: WebhookServer, recorded: Recorded, action: str) -> None:
    response = deliver(server, pr_body(action=action, head_owner="mallory"), kind="pull_request", delivery="d-pr")
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "action": action, "number": 7, "ref": "refs/pull/7/head",
                               "sha": SHA, "fork": True, "delivery": "d-pr"}
    assert [(e.action, e.ref, e.fork) for e in recorded.events] == [(action, "refs/pull/7/head", True)]


def test_pull_request_actions_the_pipeline_does_not_act_on_are_202_ignored(server: WebhookServer,
                                                                           recorded: Recorded) -> None:
    for action in ("labeled", "edited", "review_requested"):
        response = deliver(server, pr_body(action=action), kind="pull_request")
        assert response.status_code == 202 and response.json()["status"] == "ignored", response.text
    assert recorded.events == []


def test_a_pull_request_is_checked_like_a_push(server: WebhookServer, recorded: Recorded) -> None:
    assert deliver(server, pr_body(), kind="pull_request", signature=None).status_code == 401
    bad = deliver(server, pr_body(sha="nope"), kind="pull_request")
    assert bad.status_code == 400 and bad.json()["field"] == "pull_request.head.sha"
    body = pr_body(action="synchronize", sha=FORK_SHA)
    assert deliver(server, body, kind="pull_request").json()["status"] == "accepted"
    assert deliver(server, body, kind="pull_request").json()["status"] == "duplicate"  # a redelivery
    assert [e.sha for e in recorded.events] == [FORK_SHA]


def test_a_push_to_a_ci_branch_is_accepted(server: WebhookServer, recorded: Recorded) -> None:
    assert deliver(server, push_body(ref="refs/heads/develop")).json()["status"] == "accepted"
    assert [e.ref for e in recorded.events] == ["refs/heads/develop"]


@pytest.mark.parametrize("ref", ["refs/heads/feature/login", "refs/tags/v1.2", "refs/tags/nightly"])
def test_refs_the_config_does_not_build_are_202_ignored(server: WebhookServer, recorded: Recorded, ref: str) -> None:
    response = deliver(server, push_body(ref=ref))
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert recorded.events == []


def test_a_deleted_branch_is_ignored(server: WebhookServer, recorded: Recorded) -> None:
    response = deliver(server, push_body(after="0" * 40, deleted=True))
    assert response.status_code == 202 and response.json() == {"status": "ignored", "reason": "ref deleted"}
    assert recorded.events == []


def test_a_duplicate_delivery_is_not_emitted_twice(server: WebhookServer, recorded: Recorded) -> None:
    body = push_body()
    first = deliver(server, body, delivery="d-42")
    again = deliver(server, body, delivery="d-42")
    other = deliver(server, push_body(after="1" * 40), delivery="d-43")

    assert (first.status_code, first.json()["status"]) == (202, "accepted")
    assert (again.status_code, again.json()) == (200, {"status": "duplicate", "delivery": "d-42"})
    assert other.status_code == 202
    assert [e.delivery for e in recorded.events] == ["d-42", "d-43"]


def test_the_same_body_under_a_new_delivery_id_is_a_duplicate(server: WebhookServer, recorded: Recorded) -> None:
    """The delivery id is not signed: a replay brings a fresh one. The signed body is what is remembered."""
    body = push_body()
    assert deliver(server, body, delivery="d-original").status_code == 202
    replay = deliver(server, body, delivery="d-forged-fresh-id")
    assert (replay.status_code, replay.json()) == (200, {"status": "duplicate", "delivery": "d-forged-fresh-id"})
    assert deliver(server, body, delivery=None).json()["status"] == "duplicate"
    assert [e.delivery for e in recorded.events] == ["d-original"]
    assert hashlib.sha256(body).hexdigest() in server.store


def test_a_replayed_push_after_a_restart_is_not_emitted(recorded: Recorded, store_path: Path) -> None:
    body = push_body()
    with running(recorded, store_path) as first:
        assert deliver(first, body, delivery="d-1").status_code == 202
    with running(recorded, store_path) as restarted:  # a new process would open the same file
        replay = deliver(restarted, body, delivery="d-2")
        assert (replay.status_code, replay.json()["status"]) == (200, "duplicate")
        assert deliver(restarted, push_body(after="2" * 40), delivery="d-3").status_code == 202
    assert [e.delivery for e in recorded.events] == ["d-1", "d-3"]


def test_ignored_pushes_and_pings_are_not_remembered(server: WebhookServer) -> None:
    deliver(server, push_body(ref="refs/heads/feature"))
    deliver(server, json.dumps({"zen": "z"}).encode(), kind="ping")
    assert len(server.store) == 0


def test_concurrent_duplicates_are_emitted_once(server: WebhookServer, recorded: Recorded) -> None:
    body = push_body()
    statuses: list[int] = []

    def send() -> None:
        statuses.append(deliver(server, body).status_code)  # each with its own delivery id

    threads = [threading.Thread(target=send) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(statuses) == [200] * 15 + [202]
    assert len(recorded.events) == 1


def test_a_failed_emit_is_503_and_the_delivery_can_be_retried(server: WebhookServer, recorded: Recorded) -> None:
    recorded.fail_next = 1
    body = push_body()
    failed = deliver(server, body, delivery="d-retry")
    assert failed.status_code == 503 and "could not emit" in failed.json()["error"]
    assert len(server.store) == 0  # not remembered: the sender's redelivery must go through
    retried = deliver(server, body, delivery="d-retry")
    assert retried.status_code == 202 and [e.delivery for e in recorded.events] == ["d-retry"]


def test_a_failed_emit_is_not_remembered_across_a_restart(recorded: Recorded, store_path: Path) -> None:
    recorded.fail_next = 1
    body = push_body()
    with running(recorded, store_path) as first:
        assert deliver(first, body, delivery="d-1").status_code == 503
    with running(recorded, store_path) as restarted:
        assert deliver(restarted, body, delivery="d-1").status_code == 202
    assert [e.delivery for e in recorded.events] == ["d-1"]


def test_a_broken_store_fails_closed_with_503(server: WebhookServer, recorded: Recorded) -> None:
    server.store.close()  # every claim now raises sqlite3.ProgrammingError
    response = deliver(server, push_body())
    assert response.status_code == 503 and "replay store" in response.json()["error"]
    assert recorded.events == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_non_post_is_405(server: WebhookServer, recorded: Recorded, method: str) -> None:
    response = httpx.request(method, url(server), content=push_body(), timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert recorded.events == []


def test_neither_the_secret_nor_the_signature_is_logged(server: WebhookServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = push_body()
    deliver(server, body)
    deliver(server, body, signature="sha256=" + "ab" * 32)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /webhook" in logged and "git.push refs/heads/main" in logged
    assert "rejected a delivery" in logged and "invalid X-Hub-Signature-256" in logged
    for secret in (SECRET.decode(), github_signature(SECRET, body)[len("sha256="):], "ab" * 32):
        assert secret not in logged


def test_healthz_and_unknown_paths(server: WebhookServer) -> None:
    assert httpx.get(url(server, "/healthz"), timeout=10).json() == {"status": "ok"}
    assert deliver(server, push_body(), path="/elsewhere").status_code == 404


def test_make_server_refuses_an_empty_secret_and_a_bad_regex(recorded: Recorded) -> None:
    with pytest.raises(InputError, match="empty"):
        make_server("127.0.0.1", 0, b"", recorded)
    with pytest.raises(InputError, match="release_tags"):
        make_server("127.0.0.1", 0, SECRET, recorded, release_tags="v(")


# --- limits: a total deadline per request, a cap on connections ---------------------------------

DEADLINE = 1.0  # the tests' request deadline (seconds); production's is REQUEST_DEADLINE
MARGIN = 1.0  # what the tests allow past it (thread scheduling on a busy 2-core machine)


def _connect(srv: WebhookServer) -> socket.socket:
    host, port = srv.server_address[:2]
    return socket.create_connection((str(host), int(port)), timeout=5)


def _dribble(srv: WebhookServer, head: bytes, trickle: bytes, interval: float = 0.2,
             budget: float = 10) -> tuple[bytes, float]:
    """Send `head` at once, then `trickle` one byte every `interval` s (a slow-loris client) until the
    server closes the connection; return what it answered and the seconds from connecting to the close."""
    answer = b""
    with _connect(srv) as sock:
        started = time.monotonic()
        sock.settimeout(interval)
        try:
            if head:
                sock.sendall(head)
            for byte in trickle:
                assert time.monotonic() - started < budget, "the server never closed the connection"
                sock.sendall(bytes([byte]))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                answer += chunk
                if not chunk:
                    break
            else:
                pytest.fail("the client ran out of bytes before the server closed the connection")
            sock.settimeout(2)
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        return answer, time.monotonic() - started


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


_SLOW_HEAD = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-Junk: " + b"a" * 200


@pytest.mark.parametrize(("head", "trickle", "answer"), [
    (b"", _SLOW_HEAD, b""),  # the request line and headers one byte at a time: closed without an answer
    (b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Length: 500\r\n\r\n", b"{" + b" " * 499,
     b"HTTP/1.0 408"),  # the head at once, then the body one byte at a time
], ids=["slow-head", "slow-body"])
def test_a_slow_loris_client_is_cut_off_at_the_total_deadline(recorded: Recorded, store_path: Path, head: bytes,
                                                              trickle: bytes, answer: bytes) -> None:
    with running(recorded, store_path, request_deadline=DEADLINE) as srv:
        threads_before = threading.active_count()
        got, took = _dribble(srv, head, trickle)

        assert DEADLINE - 0.1 <= took <= DEADLINE + MARGIN, took  # across reads: each byte came within 0.2 s
        assert got.startswith(answer), got[:80]
        assert _wait_for(lambda: srv.active_connections == 0, 0.5), "a handler thread is still busy"
        assert _wait_for(lambda: threading.active_count() <= threads_before, 0.5)
        assert deliver(srv, push_body()).status_code == 202  # the receiver still serves
    if answer:
        assert b"408" in got and b"not received within 1s" in got
    assert len(recorded.events) == 1


def _read_refusal(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_connections_over_the_cap_are_refused_at_once_without_a_thread(recorded: Recorded,
                                                                       store_path: Path) -> None:
    cap, extra = 4, 6
    with running(recorded, store_path, request_deadline=2.0, max_connections=cap) as srv:
        threads_before = threading.active_count()
        slow = [_connect(srv) for _ in range(cap)]
        try:
            for sock in slow:
                sock.sendall(b"POST /webhook HTTP/1.1\r\n")  # and then nothing: each holds a slot
            assert _wait_for(lambda: srv.active_connections == cap, 2)
            cut_at = time.monotonic() + 2.0

            for _ in range(extra):
                started = time.monotonic()
                with _connect(srv) as sock:
                    status, body = _read_refusal(sock)
                assert time.monotonic() - started < 0.5
                assert status == 503 and "too many connections (limit 4)" in body["error"]
            assert srv.active_connections == cap
            assert threading.active_count() <= threads_before + cap  # no thread for a refused connection

            # once the slow ones are cut at their deadline, deliveries are served again
            assert _wait_for(lambda: srv.active_connections == 0, cut_at - time.monotonic() + MARGIN)
            assert deliver(srv, push_body()).status_code == 202
        finally:
            for sock in slow:
                sock.close()
    assert len(recorded.events) == 1


def test_concurrent_deliveries_up_to_the_cap_are_all_served(recorded: Recorded, store_path: Path) -> None:
    with running(recorded, store_path, max_connections=8) as srv:
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda i=i: statuses.append(
            deliver(srv, push_body(after=f"{i:040x}")).status_code)) for i in range(1, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert statuses == [202] * 8 and len(recorded.events) == 8


def test_make_server_refuses_bad_limits(recorded: Recorded, store_path: Path) -> None:
    with pytest.raises(InputError, match="request_deadline"):
        make_server("127.0.0.1", 0, SECRET, recorded, store=store_path, request_deadline=0)
    with pytest.raises(InputError, match="max_connections"):
        make_server("127.0.0.1", 0, SECRET, recorded, store=store_path, max_connections=0)


# --- what reaches the log -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "logged"), [
    ("72d3162e-cc78-11e3", "72d3162e-cc78-11e3"),
    ("d-\x1b[31mred\x1b[0m", "d-\\x1b[31mred\\x1b[0m"),
    ("a\nINFO forged line\r\n", "a\\nINFO forged line\\r\\n"),
    ("tab\there\x00\x7f\x9b", "tab\\there\\x00\\x7f\\x9b"),
    ("line\u2028sep\u2029para\u202eevil\u200b", "line\\u2028sep\\u2029para\\u202eevil\\u200b"),
    ("back\\x1b-slash", "back\\\\x1b-slash"),  # a literal backslash cannot pose as an escape
    ("octocat é ü 日本", "octocat é ü 日本"),
])
def test_printable(text: str, logged: str) -> None:
    assert printable(text) == logged


@given(st.text())
def test_printable_output_is_always_one_printable_line(text: str) -> None:
    assert printable(text).isprintable()


def _raw(srv: WebhookServer, request: bytes) -> bytes:
    with _connect(srv) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _signed_request(body: bytes, *headers: bytes, path: bytes = b"/webhook", signature: str | None = None) -> bytes:
    head = [b"POST " + path + b" HTTP/1.1", b"Host: x", b"Connection: close", b"X-GitHub-Event: push",
            b"X-Hub-Signature-256: " + (signature or github_signature(SECRET, body)).encode(),
            b"Content-Length: " + str(len(body)).encode(), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def test_control_characters_from_a_request_are_escaped_in_every_log_line(
        server: WebhookServer, recorded: Recorded, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters.webhook")
    forged = b"2026-12-03 07:00:00 INFO git.push refs/tags/v9.9.9 at 0123456789ab by admin"
    delivery = b"X-GitHub-Delivery: d-\x1b[31mred\x1b[0m\r\n " + forged  # obs-fold: a newline inside the value
    pusher_body = push_body(pusher={"name": "octo\u001b[2J\n\u2028cat"})

    assert b" 202 " in _raw(server, _signed_request(pusher_body, delivery))  # accepted: logged
    assert b" 200 " in _raw(server, _signed_request(pusher_body, delivery))  # duplicate: logged
    assert b" 401 " in _raw(server, _signed_request(push_body(), delivery, signature="sha256=00"))  # rejected
    assert b" 404 " in _raw(server, _signed_request(b"{}", path=b"/x\x1b[2J\x9b\xe2\x80\xa8"))  # the request line
    recorded.fail_next = 1
    assert b" 503 " in _raw(server, _signed_request(push_body(after="3" * 40), delivery))  # emit failed
    assert b" 400 " in _raw(server, b"POST /webhook\x1b[1m HTTP/1.1 extra\r\n\r\n")  # http.server's own error

    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 8
    for message in messages:
        assert message.isprintable(), repr(message)
    logged = "\n".join(messages)
    assert "d-\\x1b[31mred\\x1b[0m\\r\\n " + forged.decode() in logged  # escaped, on the line it belongs to
    assert "octo\\x1b[2J\\n\\u2028cat" in logged
    assert "/x\\x1b[2J\\x9b\u00e2\\x80\u00a8" in logged  # the request line is read as Latin-1
    assert "duplicate of an accepted push" in logged and "rejected a delivery" in logged


def test_a_refused_connection_is_logged_once_per_second(recorded: Recorded, store_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapters.webhook")
    with running(recorded, store_path, max_connections=1, request_deadline=DEADLINE) as srv, _connect(srv) as slow:
        slow.sendall(b"POST")
        assert _wait_for(lambda: srv.active_connections == 1, 2)
        for _ in range(20):
            with _connect(srv) as sock:
                assert _read_refusal(sock)[0] == 503
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 2
    assert "refused 1 connection(s) with 503" in refusals[0].getMessage()


# --- the secret ---------------------------------------------------------------------------------


@pytest.fixture
def no_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def test_load_secret_from_the_environment(no_api: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUNDAY_WEBHOOK_SECRET", "from-env")
    assert load_secret() == b"from-env"


def test_load_secret_without_any_is_an_input_error(no_api: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUNDAY_WEBHOOK_SECRET", raising=False)
    with pytest.raises(InputError, match="no webhook secret"):
        load_secret()


def test_emit_without_an_api_url_is_an_input_error(no_api: None) -> None:
    with pytest.raises(InputError, match="PREFECT_API_URL"):
        emit_prefect_event(event("refs/heads/main"))


# --- against a real Prefect server --------------------------------------------------------------


def test_the_secret_block_wins_over_the_environment(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    monkeypatch.setenv("SUNDAY_WEBHOOK_SECRET", "from-env")
    assert load_secret() == b"from-env"  # no block yet
    Secret(value="from-block").save("sunday-webhook-secret", overwrite=True)
    try:
        assert load_secret() == b"from-block"
    finally:
        Secret.delete("sunday-webhook-secret")


def test_emit_prefect_event_reaches_the_server(prefect_api: str) -> None:
    repo = f"https://git.example.com/acme/shop-{uuid.uuid4().hex[:8]}.git"
    push = PushEvent("refs/tags/v1.4.0", SHA, repo, "octocat", delivery="d-prefect")

    emit_prefect_event(push)

    events = read_events("git.push", f"git.repository.{repository_slug(repo)}")
    assert len(events) == 1
    assert events[0].event == "git.push"
    assert events[0].payload == {"ref": "v1.4.0", "full_ref": "refs/tags/v1.4.0", "sha": SHA, "repository": repo,
                                 "pusher": "octocat", "delivery": "d-prefect"}


def test_a_signed_push_through_the_server_reaches_prefect(prefect_api: str) -> None:
    repo = f"https://git.example.com/acme/shop-{uuid.uuid4().hex[:8]}.git"
    srv = make_server("127.0.0.1", free_port(), SECRET, emit_prefect_event)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        response = deliver(srv, push_body(repository={"clone_url": repo}))
        assert response.status_code == 202, response.text
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)

    events = read_events("git.push", f"git.repository.{repository_slug(repo)}")
    assert [(e.payload["ref"], e.payload["sha"]) for e in events] == [("main", SHA)]


def test_a_replayed_push_after_a_restart_starts_no_run(prefect_api: str, store_path: Path) -> None:
    """The acceptance test of the replay fix: same signed body, a new delivery id, a restarted receiver."""
    repo = f"https://git.example.com/acme/shop-{uuid.uuid4().hex[:8]}.git"
    body = push_body(repository={"clone_url": repo})
    emitted: list[PushEvent] = []

    def emit(event: PushEvent) -> None:
        emit_prefect_event(event)
        emitted.append(event)

    with running(emit, store_path) as first:
        assert deliver(first, body, delivery="d-captured").status_code == 202
    with running(emit, store_path) as restarted:
        replay = deliver(restarted, body, delivery=str(uuid.uuid4()))
        assert (replay.status_code, replay.json()["status"]) == (200, "duplicate"), replay.text

    assert [e.delivery for e in emitted] == ["d-captured"]
    time.sleep(2)  # give a second event, were there one, time to reach the server
    events = read_events("git.push", f"git.repository.{repository_slug(repo)}")
    assert [e.payload["delivery"] for e in events] == ["d-captured"]  # one event: the ci trigger fires once


def test_a_short_lived_process_flushes_the_event_before_it_exits(prefect_api: str, tmp_path: Any) -> None:
    repo = f"https://git.example.com/acme/shop-{uuid.uuid4().hex[:8]}.git"
    code = ("import os, sys\n"
            "from adapters.webhook import PushEvent, emit_prefect_event\n"
            f"emit_prefect_event(PushEvent('refs/heads/main', {SHA!r}, {repo!r}, 'octocat', 'd-short'))\n"
            "os._exit(0)  # no atexit hooks: only emit_prefect_event's own flush can have sent it\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr

    events = read_events("git.push", f"git.repository.{repository_slug(repo)}")
    assert [(e.payload["ref"], e.payload["delivery"]) for e in events] == [("main", "d-short")]


def test_serve_end_to_end_with_the_config_build_rule(prefect_api: str, tmp_path: Any) -> None:
    """What `sunday-release webhook --port P` runs: the env secret, the config's branch, the real server."""
    (tmp_path / "sunday-release.yaml").write_text(
        "project: shop\ndefault_branch: trunk\nservices:\n  web: {context: web, port: 8000}\n")
    port = free_port()
    repo = f"https://git.example.com/acme/shop-{uuid.uuid4().hex[:8]}.git"
    code = ("from pathlib import Path\nfrom adapters.webhook import serve\n"
            f"serve({port}, config_path=Path({str(tmp_path)!r}))\n")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect"),
           "SUNDAY_WEBHOOK_SECRET": SECRET.decode()}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_healthz(proc, port, what="serve")
        srv_url = f"http://127.0.0.1:{port}/webhook"
        for ref, status in (("refs/heads/main", "ignored"), ("refs/heads/trunk", "accepted")):
            body = push_body(ref=ref, repository={"clone_url": repo})
            response = httpx.post(srv_url, content=body, timeout=30, headers={
                "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": github_signature(SECRET, body)})
            assert response.status_code == 202 and response.json()["status"] == status, response.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "listening on http://127.0.0.1" in stderr and "git.push refs/heads/trunk" in stderr
    assert SECRET.decode() not in stderr

    events = read_events("git.push", f"git.repository.{repository_slug(repo)}")
    assert [e.payload["ref"] for e in events] == ["trunk"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_receiver_stops_on_a_signal_even_started_as_a_scripts_background_job(
        prefect_api: str, tmp_path: Any, signum: int) -> None:
    """A script's background job inherits SIGINT ignored: `serve` stops on SIGINT and SIGTERM all the same."""
    port = free_port()
    code = f"from adapters.webhook import serve\nserve({port})\n"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect"),
           "SUNDAY_HOME": str(tmp_path / "sunday"), "SUNDAY_WEBHOOK_SECRET": SECRET.decode()}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        wait_for_healthz(proc, port, what="serve")
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "webhook receiver stopped" in stderr, stderr


# --- fuzzing the receiver over HTTP --------------------------------------------------------------

_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


def _header_text(max_size: int) -> st.SearchStrategy[str]:
    """Printable header values (the HTTP client refuses leading or trailing blanks, so they go)."""
    return st.text(_PRINTABLE, max_size=max_size).map(lambda s: s.strip() or "x")


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, str | None, str | None, dict[str, str]]:
    """A delivery: body, signature header (or none), event kind (or none), extra headers."""
    good = push_body(ref=draw(st.sampled_from(["refs/heads/main", "refs/tags/v1.2.3", "refs/heads/feature"])),
                     nonce=draw(st.integers(0, 1000)))  # distinct bodies reach the emit path, equal ones dedup
    body = draw(st.one_of(
        st.just(good),
        st.integers(0, len(good) - 1).map(lambda n: good[:n]),  # truncated
        st.binary(max_size=2048),
        st.text(max_size=512).map(str.encode),
        st.integers(MAX_BODY - 16, MAX_BODY + 4096).map(lambda n: b"{" + b" " * n + b"}"),  # around the limit
    ))
    signature = draw(st.one_of(
        st.just(github_signature(SECRET, body)),  # valid
        st.just(github_signature(SECRET, body + b"x")),  # another body
        st.just(github_signature(b"wrong secret", body)),
        st.none(),
        _header_text(200),
        st.integers(1, 20_000).map(lambda n: "sha256=" + "a" * n),  # huge header
    ))
    kind = draw(st.sampled_from(["push", "ping", "issues", None]))
    extra = draw(st.dictionaries(st.sampled_from(["X-Junk", "X-GitHub-Hook-ID", "Content-Type", "X-Forwarded-For"]),
                                 _header_text(draw(st.sampled_from([40, 8000]))), max_size=3))
    return body, signature, kind, extra


def _answer(client: httpx.Client, srv: WebhookServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """The server's answer to a delivery. A connection closed (or left hanging) without an answer fails: that is
    what a crashed handler looks like, never a rejection. A body refused unread still gets its 413 (the client
    reads the answer after its write is cut off)."""
    try:
        return client.post(url(srv), content=body, headers=headers)
    except httpx.TransportError as exc:
        raise AssertionError(f"the server dropped the connection without an answer: {exc!r}") from exc


def test_a_handler_that_crashes_is_a_dropped_connection_not_a_rejection(
        server: WebhookServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fuzz test's own check: a handler raising (no reply) fails it; a 4xx passes through as an answer."""
    from adapters import webhook

    body = push_body()
    with httpx.Client(timeout=10) as client:
        assert _answer(client, server, body, {"X-GitHub-Event": "push"}).status_code == 401

        def crash(self: Any) -> None:
            raise RuntimeError("handler bug (test double)")

        monkeypatch.setattr(webhook._Handler, "do_POST", crash)
        with pytest.raises(AssertionError, match="dropped the connection without an answer"):
            _answer(client, server, body, {"X-GitHub-Event": "push"})


def test_fuzzed_deliveries_never_5xx_and_nothing_unsigned_is_emitted(server: WebhookServer,
                                                                     recorded: Recorded) -> None:
    from hypothesis import HealthCheck, settings

    sent = {"requests": 0, "emitted": 0}
    with httpx.Client(timeout=10) as client:
        @settings(max_examples=600, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(_requests())
        def check(request: tuple[bytes, str | None, str | None, dict[str, str]]) -> None:
            body, signature, kind, extra = request
            headers = {**extra, "X-GitHub-Delivery": str(uuid.uuid4())}
            if kind is not None:
                headers["X-GitHub-Event"] = kind
            if signature is not None:
                headers["X-Hub-Signature-256"] = signature
            before = len(recorded.events)
            response = _answer(client, server, body, headers)  # one server for all; no answer is a failure
            sent["requests"] += 1
            assert response.status_code < 500, (response.status_code, response.text)
            emitted = len(recorded.events) - before
            valid = signature == github_signature(SECRET, body) and len(body) <= MAX_BODY
            assert emitted == 0 or (valid and kind == "push"), (signature, kind, body[:80])
            sent["emitted"] += emitted

        check()
    assert sent["requests"] >= 500
    assert sent["emitted"] > 0  # the generator does reach the accepting path
