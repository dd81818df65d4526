"""An HTTP server on a daemon thread of its own: the control API, the metrics endpoint
and the live view each run one next to their process's real work."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)


class BackgroundHttpServer:
    """Serves ``handler`` on ``host:port`` (0: any free port) until ``close``; each
    connection gets a daemon thread, so an open one never holds the process.

    Raises:
        OSError: the address cannot be listened on (in use, not this machine's).
    """

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
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

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)
