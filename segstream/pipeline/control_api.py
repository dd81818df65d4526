"""The HTTP control API of a running pipeline (``segstream run --api [HOST:]PORT``).

JSON in and out; see ``docs/api.md``::

    GET    /api/health          is the supervisor there, and in which state
    GET    /api/stats           stats.json's content, live
    GET    /api/sources         every source with its state and figures
    GET    /api/sources/{id}    one source
    POST   /api/sources         {"uri": "...", "id": "optional", "options": {...}} -> 201
    DELETE /api/sources/{id}    end its stream (its records close, its figures stay)

The server runs on threads of its own; every request is handed to the supervisor's loop
(``ApiRequests``) and answered from there, so a request never races the supervisor's own
work. A request the supervisor does not answer within ``ANSWER_S`` gets a 503. Bad
requests get a 4xx whose JSON body says what was expected: ``{"error": "..."}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from segstream.errors import PipelineFailed
from segstream.pipeline.http_server import BackgroundHttpServer, request_received

logger = logging.getLogger(__name__)

MAX_BODY = 64 << 10  # a source request is a few hundred bytes
ANSWER_S = 10.0  # the supervisor answers between two passes of its loop (~50 ms)
METHODS = ("GET", "POST", "DELETE")


class ApiError(Exception):
    """A request refused with an HTTP status and a message that says what was expected.

    Args:
        status: the HTTP status (4xx, or 503).
        message: what was wrong and how to fix it.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ApiRequest:
    """One request waiting for the supervisor.

    Attributes:
        method: GET, POST or DELETE.
        path: the path, without query string or trailing slash.
        body: the parsed JSON body (POST), else None.
        status: the answer's status, set by ``answer``.
        payload: the answer's JSON body.
    """

    method: str
    path: str
    body: Any = None
    status: int = 0
    payload: Any = None
    _done: threading.Event = field(default_factory=threading.Event)

    def answer(self, status: int, payload: Any) -> None:
        """Set the answer; the waiting HTTP thread sends it."""
        self.status, self.payload = status, payload
        self._done.set()

    def wait(self, timeout_s: float) -> bool:
        """Wait for the answer; False if none came in ``timeout_s``."""
        return self._done.wait(timeout_s)


Handler = Callable[[ApiRequest], tuple[int, Any]]


class ApiRequests:
    """Requests handed from the HTTP threads to the supervisor's loop."""

    def __init__(self) -> None:
        self._queue: queue.Queue[ApiRequest] = queue.Queue()

    def submit(self, request: ApiRequest) -> None:
        """Queue ``request`` for the supervisor."""
        self._queue.put(request)

    def serve(self, handler: Handler, limit: int = 32) -> None:
        """Answer up to ``limit`` waiting requests with ``handler`` (on the caller's thread).

        ``handler`` returns ``(status, payload)`` or raises ``ApiError``; any other
        exception is a 500 whose message names it (and is logged), never a dead loop.
        """
        for _ in range(limit):
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                status, payload = handler(request)
            except ApiError as exc:
                status, payload = exc.status, {"error": exc.message}
            except Exception as exc:  # noqa: BLE001 - a bug answers 500, the pipeline goes on
                logger.exception("control API: %s %s failed", request.method, request.path)
                status, payload = 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}
            request.answer(status, payload)


def _parse_body(raw: bytes) -> Any:
    if not raw:
        raise ApiError(400, "the request has no body; send a JSON object such as "
                            '{"uri": "rtsp://camera/stream", "id": "gate-1"}')
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid UTF-8 JSON ({exc}); send a JSON object such as "
                            '{"uri": "rtsp://camera/stream"}') from None


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


class ControlApi:
    """The HTTP server of the control API, on threads of its own.

    Args:
        host: the address to listen on.
        port: the port (0: any free one, see ``port``).
        token: bearer token every request must send ("" for none).
        requests: where requests go for the supervisor to answer.

    Raises:
        PipelineFailed: the address cannot be listened on (in use, not this machine's).
    """

    def __init__(self, host: str, port: int, token: str, requests: ApiRequests) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "segstream"

            def _handle(self) -> None:
                try:
                    api.authorize(self.headers)  # before the body is read: a stranger's body costs nothing
                    body = self._body()
                    request_received(self)  # the supervisor may take its time to answer
                    status, payload = api.handle(self.command, self.path, body)
                except ApiError as exc:
                    self.close_connection = True
                    status, payload = exc.status, {"error": exc.message}
                self._send(status, payload)

            def _body(self) -> bytes:
                length_text = self.headers.get("Content-Length") or "0"
                try:
                    length = int(length_text)
                except ValueError:
                    raise ApiError(400, f"Content-Length {length_text[:40]!r} is not a number") from None
                if length < 0 or length > MAX_BODY:
                    self.close_connection = True  # the body is not read: the connection cannot be reused
                    raise ApiError(413, f"the body is {length} bytes; a request takes at most {MAX_BODY}")
                body = self.rfile.read(length) if length else b""
                if len(body) < length:  # the client stopped, or the deadline shut the connection
                    raise ApiError(400, f"the body ended after {len(body)} of its {length} bytes (Content-Length)")
                return body

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload, indent=1).encode() + b"\n"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Cache-Control", "no-store")
                    if status == 401:
                        self.send_header("WWW-Authenticate", 'Bearer realm="segstream"')
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client went away
                    pass

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815 (http.server's names)

            def do_PUT(self) -> None:  # noqa: N802
                self._send(405, {"error": f"{self.command} is not supported; use {', '.join(METHODS)}"})

            do_PATCH = do_HEAD = do_OPTIONS = do_PUT  # noqa: N815

            def log_message(self, fmt: str, *args: object) -> None:
                logger.debug("control API: " + fmt, *args)

        self.token = token
        self.requests = requests
        try:
            self._server = BackgroundHttpServer(host, port, Handler, "control-api")
        except OSError as exc:
            raise PipelineFailed(f"--api {host}:{port}: cannot listen there ({exc.strerror or exc}); choose "
                                 f"another port, or 0 for any free one") from None
        logger.info("control API on http://%s:%d/api/", host, self.port)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._server.port

    def authorize(self, headers: Any) -> None:
        """Refuse a request without the run's token (from its headers alone).

        Raises:
            ApiError: 401.
        """
        if self.token:
            sent = headers.get("Authorization") or ""
            if not hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode()):
                raise ApiError(401, "this API needs the header 'Authorization: Bearer TOKEN' with the run's "
                                    "--api-token")

    def handle(self, method: str, target: str, raw: bytes) -> tuple[int, Any]:
        """Have the supervisor answer one authorized request (on an HTTP thread)."""
        path = target.split("?", 1)[0].rstrip("/") or "/"
        if not path.startswith("/api/") and path != "/api":
            raise ApiError(404, f"no such path {path[:100]!r}; the API is under /api/ (GET /api/sources)")
        body = _parse_body(raw) if method == "POST" else None
        request = ApiRequest(method, path, body)
        self.requests.submit(request)
        if not request.wait(ANSWER_S):
            raise ApiError(503, f"the supervisor did not answer within {ANSWER_S:.0f} s; try again")
        return request.status, request.payload

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.close()
