"""HTTP routing and JSON handlers (stdlib http.server)."""
from __future__ import annotations

import json
import re
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Pattern, Tuple, Type

from . import models
from .models import ValidationError
from .logs import log
from .metrics import Metrics
from .store import PostgresStore, Store, StoreUnavailable

MAX_BODY = 64 * 1024

Response = Tuple[int, Any]
Handler = Callable[["ApiContext", Dict[str, int], Any], Response]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApiContext:
    def __init__(self, store: Store, version: str) -> None:
        self.store = store
        self.version = version
        pool = store if isinstance(store, PostgresStore) else None
        self.metrics = Metrics((pool.connections_in_use, pool.max_connections) if pool is not None else None)


def _not_found(what: str) -> HttpError:
    return HttpError(HTTPStatus.NOT_FOUND, f"{what} not found")


def healthz(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    return HTTPStatus.OK, {"status": "ok", "version": ctx.version}


def readyz(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    try:
        ok = ctx.store.ping()
    except Exception:
        ok = False
    if ok:
        return HTTPStatus.OK, {"status": "ready"}
    return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable"}


def list_boards(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    return HTTPStatus.OK, {"boards": [b.to_dict() for b in ctx.store.list_boards()]}


def create_board(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    name = models.parse_board_create(body)
    return HTTPStatus.CREATED, ctx.store.create_board(name).to_dict()


def get_board(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    board = ctx.store.get_board(params["board_id"])
    if board is None:
        raise _not_found("board")
    return HTTPStatus.OK, board.to_dict()


def update_board(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    name = models.parse_board_update(body)
    board = ctx.store.rename_board(params["board_id"], name)
    if board is None:
        raise _not_found("board")
    return HTTPStatus.OK, board.to_dict()


def delete_board(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    if not ctx.store.delete_board(params["board_id"]):
        raise _not_found("board")
    return HTTPStatus.NO_CONTENT, None


def create_item(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    fields = models.parse_item_create(body)
    item = ctx.store.create_item(params["board_id"], fields["title"], fields["status"])
    if item is None:
        raise _not_found("board")
    return HTTPStatus.CREATED, item.to_dict()


def update_item(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    changes = models.parse_item_update(body)
    item = ctx.store.update_item(params["item_id"], changes)
    if item is None:
        raise _not_found("item")
    return HTTPStatus.OK, item.to_dict()


def delete_item(ctx: ApiContext, params: Dict[str, int], body: Any) -> Response:
    if not ctx.store.delete_item(params["item_id"]):
        raise _not_found("item")
    return HTTPStatus.NO_CONTENT, None


ROUTES: List[Tuple[Pattern[str], Dict[str, Handler]]] = [
    (re.compile(r"^/healthz$"), {"GET": healthz}),
    (re.compile(r"^/readyz$"), {"GET": readyz}),
    (re.compile(r"^/api/boards$"), {"GET": list_boards, "POST": create_board}),
    (
        re.compile(r"^/api/boards/(?P<board_id>\d{1,18})$"),
        {"GET": get_board, "PATCH": update_board, "DELETE": delete_board},
    ),
    (re.compile(r"^/api/boards/(?P<board_id>\d{1,18})/items$"), {"POST": create_item}),
    (re.compile(r"^/api/items/(?P<item_id>\d{1,18})$"), {"PATCH": update_item, "DELETE": delete_item}),
]

BODY_METHODS = {"POST", "PATCH", "PUT"}


def route_of(pattern: Pattern[str]) -> str:
    """The route's name in metrics: its pattern with each parameter as {name} (/api/boards/{board_id})."""
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.pattern.strip("^$"))


UNMATCHED = "unmatched"  # the route of a request no route takes (404): one series, whatever the path


def route_name(path: str) -> str:
    for pattern, _methods in ROUTES:
        if pattern.match(path):
            return route_of(pattern)
    return UNMATCHED


def resolve(method: str, path: str) -> Tuple[Handler, Dict[str, int]]:
    for pattern, methods in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        handler = methods.get(method)
        if handler is None:
            raise MethodNotAllowed(sorted(methods))
        return handler, {k: int(v) for k, v in match.groupdict().items()}
    raise HttpError(HTTPStatus.NOT_FOUND, f"no route for {path}")


class MethodNotAllowed(HttpError):
    def __init__(self, allowed: List[str]) -> None:
        super().__init__(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")
        self.allowed = allowed


def make_handler(ctx: ApiContext) -> Type[BaseHTTPRequestHandler]:
    class SundayHandler(BaseHTTPRequestHandler):
        server_version = "sunday-api"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def _dispatch(self) -> None:
            started = time.monotonic()
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and self.command == "GET":  # the scrape: served, not counted
                self._send_metrics()
                return
            status: int = HTTPStatus.INTERNAL_SERVER_ERROR
            extra_headers: Dict[str, str] = {}
            try:
                handler, params = resolve(self.command, path)
                body = self._read_body() if self.command in BODY_METHODS else None
                status, payload = handler(ctx, params, body)
            except MethodNotAllowed as exc:
                status, payload = exc.status, {"error": exc.message}
                extra_headers["Allow"] = ", ".join(exc.allowed)
            except HttpError as exc:
                status, payload = exc.status, {"error": exc.message}
            except ValidationError as exc:
                status, payload = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
            except StoreUnavailable as exc:
                log("error", "database unavailable", method=self.command, path=path, error=str(exc))
                status, payload = HTTPStatus.SERVICE_UNAVAILABLE, {"error": "database unavailable"}
            except Exception as exc:  # pragma: no cover - defensive
                log("error", "unexpected error", method=self.command, path=path, error=repr(exc))
                status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal server error"}
            self._send(status, payload, extra_headers)
            seconds = time.monotonic() - started
            ctx.metrics.observe(self.command, route_name(path), int(status), seconds)
            log("info", "request", method=self.command, path=path, route=route_name(path), status=int(status),
                duration_ms=round(seconds * 1000, 1), version=ctx.version)

        def _send_metrics(self) -> None:
            data, content_type = ctx.metrics.exposition()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> Any:
            raw_length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                self.close_connection = True
                raise HttpError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported")
            try:
                length = int(raw_length) if raw_length is not None else 0
            except ValueError:
                self.close_connection = True
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
            if length < 0:
                self.close_connection = True
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
            if length > MAX_BODY:
                self.close_connection = True  # do not read the oversized body
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body exceeds {MAX_BODY} bytes")
            raw = self.rfile.read(length) if length else b""
            if not raw:
                raise HttpError(HTTPStatus.BAD_REQUEST, "request body must be JSON")
            try:
                return json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise HttpError(HTTPStatus.BAD_REQUEST, "invalid JSON body")

        def _send(self, status: int, payload: Any, extra_headers: Dict[str, str]) -> None:
            data = b"" if payload is None else json.dumps(payload).encode("utf-8")
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for key, value in extra_headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request is printed by _dispatch

        do_GET = _dispatch
        do_POST = _dispatch
        do_PATCH = _dispatch
        do_DELETE = _dispatch
        do_PUT = _dispatch

    return SundayHandler


def make_server(store: Store, version: str, host: str = "0.0.0.0", port: int = 8000) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(ApiContext(store, version)))
    server.daemon_threads = True
    return server
