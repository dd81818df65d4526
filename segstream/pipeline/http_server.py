"""An HTTP server on a daemon thread of its own: the control API, the metrics endpoint
and the live view each run one next to their process's real work.

Hardened for a service that runs for weeks with clients it does not control:

- at most ``MAX_CONNECTIONS`` connections are served at once; one more is answered
  ``503`` at once and closed (no thread, no waiting), so a flood of connections cannot
  take the process's threads or fds;
- a request must arrive whole (request line, headers, body) within ``REQUEST_DEADLINE_S``
  of its connection opening, however slowly its bytes trickle in (slowloris) or however
  much shorter its body is than its ``Content-Length``: past that the connection is shut
  (``RequestDeadlines``); a response that streams (the live view's MJPEG) is not limited;
- the listen backlog holds ``BACKLOG`` connections, so hundreds of clients connecting at
  once are queued, not reset.

Why not a framework (DESIGN section 10 asks for one): uvicorn, the usual choice, bounds
neither the time to receive a request (its keep-alive timeout restarts on every byte, so a
trickling client holds a connection for ever) nor, without a proxy, what a flood costs;
those are the two things this server must do. The standard library's server with the
three bounds above does them in one small module, with no new dependency.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 256  # 200 clients at once are served; a flood past it costs no thread
REQUEST_DEADLINE_S = 10.0
BACKLOG = 1024
_BUSY_BODY = b'{"error": "too many connections at once; try again shortly"}\n'
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


class RequestDeadlines:
    """Shuts the connections whose request did not arrive whole in time (one thread)."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self._due: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.expired = 0
        threading.Thread(target=self._watch, name="http-deadlines", daemon=True).start()

    def arm(self, sock: socket.socket) -> None:
        """``sock``'s request must be received within the deadline from now."""
        with self._lock:
            self._due[sock] = time.monotonic() + self.deadline_s

    def disarm(self, sock: socket.socket) -> None:
        """``sock``'s request arrived (or its connection ended)."""
        with self._lock:
            self._due.pop(sock, None)

    def _watch(self) -> None:
        while not self._closed.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, due in self._due.items() if due <= now]
                for sock in late:
                    del self._due[sock]
            for sock in late:
                self.expired += 1
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the handler's read returns, its thread ends
                except OSError:
                    pass

    def close(self) -> None:
        """Stop watching."""
        self._closed.set()


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int,
                 deadlines: RequestDeadlines) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.deadlines = deadlines
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(0.5)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.deadlines.arm(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.deadlines.disarm(request)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.deadlines.disarm(request)
            self._slots.release()


def request_received(handler: BaseHTTPRequestHandler) -> None:
    """Call from a handler once its request (and body) is read: from here on the response
    may take as long as it needs (a stream)."""
    server = handler.server
    if isinstance(server, _BoundedServer):
        server.deadlines.disarm(handler.request)


class BackgroundHttpServer:
    """Serves ``handler`` on ``host:port`` (0: any free port) until ``close``; each
    connection gets a daemon thread, so an open one never holds the process. See the
    module's docstring for its bounds.

    Raises:
        OSError: the address cannot be listened on (in use, not this machine's).
    """

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str,
                 max_connections: int = MAX_CONNECTIONS, deadline_s: float = REQUEST_DEADLINE_S) -> None:
        self._deadlines = RequestDeadlines(deadline_s)
        try:
            self._server = _BoundedServer((host, port), handler, max_connections, self._deadlines)
        except OSError:
            self._deadlines.close()
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """The address it listens on."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def figures(self) -> dict[str, int]:
        """Connections refused for want of a slot, and shut for a request that came too slowly."""
        return {"refused_busy": self._server.refused, "shut_slow": self._deadlines.expired}

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._deadlines.close()
        self._thread.join(timeout=2)
