"""ZeroMQ sockets: every socket is made by ``make_socket`` from one named option table.

Convention: the producing side binds, the consuming side connects. ipc:// endpoints live
in the run folder the supervisor creates (and removes); tcp:// works the same way so a
stage can run on another host.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import zmq

from segstream.errors import EndpointError
from segstream.pipeline.wire.keys import CurveClient, CurveServer
from segstream.pipeline.wire.security import PeerGuard, is_tcp, make_client, make_server

logger = logging.getLogger(__name__)


class Role(str, Enum):
    """What a socket is for; each role has one row in ``SOCKET_OPTIONS``."""

    STAGE_OUT_LOSSLESS = "stage_out_lossless"  # PUSH to the next stage, blocking when full
    STAGE_OUT_LIVE = "stage_out_live"  # PUSH to the next stage, never blocks
    STAGE_IN_LOSSLESS = "stage_in_lossless"  # PULL from the previous stage
    STAGE_IN_LIVE = "stage_in_live"  # PULL, drained to the newest message
    RESULTS_PUB = "results_pub"  # PUB to downstream consumers
    RESULTS_SUB = "results_sub"  # SUB of a downstream consumer
    RESULTS_PUSH = "results_push"  # lossless channel to one consumer: backpressure by design
    RESULTS_PULL = "results_pull"  # the consumer's side of it
    CONTROL_OUT = "control_out"  # stage -> supervisor events
    CONTROL_IN = "control_in"  # supervisor collects events
    COMMANDS_PUB = "commands_pub"  # supervisor -> stages
    COMMANDS_SUB = "commands_sub"


_RECONNECT_FAST = {zmq.RECONNECT_IVL: 10, zmq.RECONNECT_IVL_MAX: 0}

# role -> (socket type, options). HWMs count messages. Lossless links keep a short queue:
# the shared-memory ring is the real buffer and credits bound it; live links keep a longer
# one that the receiver drains to the newest message, so nothing queues for long.
SOCKET_OPTIONS: dict[Role, tuple[int, dict[int, Any]]] = {
    Role.STAGE_OUT_LOSSLESS: (zmq.PUSH, {zmq.SNDHWM: 4, zmq.LINGER: 2000}),
    Role.STAGE_OUT_LIVE: (zmq.PUSH, {zmq.SNDHWM: 64, zmq.LINGER: 500}),
    # A stage's input often connects before the stage in front binds (publish binds after
    # its subscribers' grace): retry every 10 ms, not ZeroMQ's 100, or the first frames of
    # a live run find no peer there and are dropped.
    Role.STAGE_IN_LOSSLESS: (zmq.PULL, {zmq.RCVHWM: 4, zmq.LINGER: 0, **_RECONNECT_FAST}),
    Role.STAGE_IN_LIVE: (zmq.PULL, {zmq.RCVHWM: 64, zmq.LINGER: 0, **_RECONNECT_FAST}),
    Role.RESULTS_PUB: (zmq.PUB, {zmq.SNDHWM: 256, zmq.LINGER: 1000}),
    Role.RESULTS_SUB: (zmq.SUB, {zmq.RCVHWM: 256, zmq.LINGER: 0, zmq.RECONNECT_IVL: 100, zmq.RECONNECT_IVL_MAX: 0}),
    Role.RESULTS_PUSH: (zmq.PUSH, {zmq.SNDHWM: 16, zmq.LINGER: 1000}),
    Role.RESULTS_PULL: (zmq.PULL, {zmq.RCVHWM: 16, zmq.LINGER: 0, zmq.RECONNECT_IVL: 100, zmq.RECONNECT_IVL_MAX: 0}),
    Role.CONTROL_OUT: (zmq.PUSH, {zmq.SNDHWM: 1000, zmq.LINGER: 1000}),
    Role.CONTROL_IN: (zmq.PULL, {zmq.RCVHWM: 10000, zmq.LINGER: 0}),
    Role.COMMANDS_PUB: (zmq.PUB, {zmq.SNDHWM: 100, zmq.LINGER: 0}),
    # A stage busy for a while (loading a model, a long frame) must not lose a command.
    Role.COMMANDS_SUB: (zmq.SUB, {zmq.RCVHWM: 10000, zmq.LINGER: 0}),
}


def make_socket(context: zmq.Context, role: Role, bind: str | None = None, connect: list[str] | str | None = None,
                server: CurveServer | None = None, client: CurveClient | None = None,
                guard: PeerGuard | None = None) -> zmq.Socket:
    """Create a socket for ``role`` with its table options, then bind and/or connect.

    On tcp:// a socket that binds with ``server`` keys is a CURVE server (watched by
    ``guard``, whose ZAP handler admits only ``server.authorized``), and one that connects
    with ``client`` keys a CURVE client (``security.py``). SUB sockets subscribe to every
    topic; filter with ``setsockopt(zmq.SUBSCRIBE, ...)`` after unsubscribing from ``b""``.
    """
    sock_type, options = SOCKET_OPTIONS[role]
    sock = context.socket(sock_type)
    for option, value in options.items():
        sock.setsockopt(option, value)
    if sock_type == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    endpoints = [connect] if isinstance(connect, str) else connect or []
    if bind and is_tcp(bind) and server is not None:
        if guard is not None:
            guard.protect(sock, server)
        else:
            make_server(sock, server)
    elif client is not None and any(is_tcp(e) for e in endpoints):
        make_client(sock, client)
    try:
        if bind:
            sock.bind(bind)
        for endpoint in endpoints:
            sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        target = bind or connect
        hint = "another program (or another segstream run) already uses it; pick another port or path" \
            if exc.errno == zmq.EADDRINUSE else "check the address: ipc:///path/to/socket or tcp://HOST:PORT"
        raise EndpointError(f"cannot use endpoint {target!r} for {role.value}: {exc.strerror}; {hint}") from exc
    return sock


