"""The trust boundary on tcp: CurveZMQ on every tcp:// socket, and who may connect.

- Inside a run (``--transport tcp``): the supervisor makes one server and one client key
  pair per run (``RunKeys.generate``); every binding socket is a CURVE server, every
  connecting one a CURVE client, and a ZAP handler in each binding process accepts only
  the run's client key. A peer without the key (no CURVE, or another key) never completes
  its handshake: it can neither inject a message nor take one.
- The public result endpoints over tcp (``--publish``, ``--publish-lossless``) with
  ``--publish-keys DIR``: the server key pair in ``DIR/server.key_secret`` and the public
  keys of the consumers allowed in ``DIR/authorized/*.key`` (``segstream keys DIR``
  writes both, and a client's key pair). Consumers pass ``--server-key`` and
  ``--client-key`` (``consume``), ``curve=`` (``MaskSubscriber``), or the key files (the
  C consumer).

Refused peers are counted by a ``PeerGuard`` (ZAP denials and failed handshakes) and end
up in stats.json. ipc:// endpoints stay in the run folder (mode 0700); shared memory is
0600.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from segstream.pipeline.wire.keys import CurveClient, CurveServer

logger = logging.getLogger(__name__)

HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def is_tcp(endpoint: str) -> bool:
    """True for a tcp:// endpoint (the ones CURVE protects)."""
    return endpoint.startswith("tcp://")


def make_server(sock: zmq.Socket, server: CurveServer) -> None:
    """Make ``sock`` a CURVE server (before it binds)."""
    sock.curve_server = True
    sock.curve_secretkey = server.secret.encode()
    sock.curve_publickey = server.public.encode()


def make_client(sock: zmq.Socket, client: CurveClient) -> None:
    """Make ``sock`` a CURVE client of ``client.server`` (before it connects)."""
    sock.curve_serverkey = client.server.encode()
    sock.curve_publickey = client.public.encode()
    sock.curve_secretkey = client.secret.encode()


class _Keys:
    """The ZAP handler's credentials provider: counts the keys it turns away."""

    def __init__(self, authorized: set[bytes]) -> None:
        self.authorized = authorized
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.authorized:
            return True
        self.denied += 1
        return False


class PeerGuard:
    """The ZAP handler of one process and the monitors of its CURVE server sockets.

    Args:
        context: the process's ZeroMQ context (the ZAP handler serves all its sockets).
    """

    def __init__(self, context: zmq.Context) -> None:
        self.context = context
        self._keys = _Keys(set())
        self._auth: Any = None  # a zmq ThreadAuthenticator, started with the first protected socket
        self._monitors: list[zmq.Socket] = []
        self._failed = 0
        self._lock = threading.Lock()

    def protect(self, sock: zmq.Socket, server: CurveServer) -> None:
        """Make ``sock`` a CURVE server accepting ``server.authorized``, watched for refusals."""
        with self._lock:
            if self._auth is None:
                from zmq.auth.thread import ThreadAuthenticator  # asyncio and more: only on tcp

                self._auth = ThreadAuthenticator(self.context, log=logging.getLogger(f"{__name__}.zap"))
                self._auth.start()
                self._auth.configure_curve_callback(domain="*", credentials_provider=self._keys)
            self._keys.authorized.update(k.encode() for k in server.authorized)
        make_server(sock, server)
        self._monitors.append(sock.get_monitor_socket(HANDSHAKE_FAILURES))

    def refused(self) -> int:
        """Peers refused so far: failed handshakes (no CURVE, wrong server key) and keys
        the ZAP handler turned away."""
        for monitor in self._monitors:
            while True:
                try:
                    monitor.recv_multipart(zmq.NOBLOCK)
                except (zmq.Again, zmq.ZMQError):
                    break
                self._failed += 1
        # A denied key also fails its handshake (EVENT_HANDSHAKE_FAILED_AUTH): counted once.
        return max(self._failed, self._keys.denied)

    def close(self) -> None:
        """Stop the ZAP handler and close the monitors."""
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
