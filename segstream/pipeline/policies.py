"""Flow policies: how a stage receives and sends so that latency or completeness holds.

``live``: never build a backlog. The receiver drains its socket and keeps only the newest
frame of each source, counting the others as ``superseded``; a sender whose peer is full
drops the frame and counts it (``downstream_full``). End-to-end latency stays bounded by
about one frame time per stage.

``lossless``: every frame, in order, exactly once. Sends block (in short polls, so a stop
request is still seen) and upstream shared-memory rings wait for credits; nothing drops.

A ZeroMQ socket at its high-water mark drops the *newest* message and CONFLATE keeps only
one part of a multipart message, so "newest wins" is done here explicitly by draining.
"""

from __future__ import annotations

import logging
from collections import Counter
from enum import Enum
from typing import Callable

import zmq

from segstream.pipeline.messages import Kind, Message, MessageError, decode, encode

logger = logging.getLogger(__name__)

POLL_MS = 50  # how long any blocking wait lasts before the stop flag is checked again


class FlowPolicy(str, Enum):
    """How a pipeline trades completeness against latency."""

    LIVE = "live"
    LOSSLESS = "lossless"


class Inbox:
    """Receives messages from a PULL (or SUB) socket under a flow policy.

    Args:
        socket: the receiving socket.
        policy: live (drain to newest) or lossless (one at a time, in order).
        skipped: counter shared with the stage's stats, keyed by reason.
    """

    def __init__(self, socket: zmq.Socket, policy: FlowPolicy, skipped: Counter[str]) -> None:
        self.socket = socket
        self.policy = policy
        self.skipped = skipped
        self.malformed = Counter[str]()
        self.superseded: list[Message] = []

    def _recv_one(self) -> Message | None:
        frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        try:
            return decode([f.buffer for f in frames])
        except MessageError as exc:
            self.malformed[exc.reason] += 1
            self.skipped[f"malformed_{exc.reason}"] += 1
            logger.warning("dropped a malformed message: %s", exc)
            return None

    def receive(self, timeout_ms: int = POLL_MS) -> list[Message]:
        """Messages to process now, oldest first; empty after ``timeout_ms`` of silence.

        In live flow, frames superseded by a newer frame of the same source are left out,
        counted, and kept in ``self.superseded`` so the stage can release them upstream.
        End-of-stream messages are never dropped.
        """
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return []
        out: list[Message] = []
        while True:
            try:
                message = self._recv_one()
            except zmq.Again:
                break
            if message is not None:
                out.append(message)
            if self.policy is FlowPolicy.LOSSLESS:
                break
        if self.policy is FlowPolicy.LIVE and len(out) > 1:
            out = self._keep_newest(out)
        return out

    def _keep_newest(self, messages: list[Message]) -> list[Message]:
        newest: dict[str, int] = {}
        for i, m in enumerate(messages):
            if m.header.kind is not Kind.EOS:
                newest[m.header.source] = i
        kept = []
        for i, m in enumerate(messages):
            if m.header.kind is Kind.EOS or newest.get(m.header.source) == i:
                kept.append(m)
            else:
                self.skipped["superseded"] += 1
                self.superseded.append(m)
        return kept


class Outbox:
    """Sends messages to a PUSH (or PUB) socket under a flow policy.

    Args:
        socket: the sending socket.
        policy: live (never block) or lossless (block until sent or stopped).
        skipped: counter shared with the stage's stats.
        stop: returns True when the stage must stop.
    """

    def __init__(self, socket: zmq.Socket, policy: FlowPolicy, skipped: Counter[str], stop: Callable[[], bool]) -> None:
        self.socket = socket
        self.policy = policy
        self.skipped = skipped
        self.stop = stop

    def send(self, message: Message, timeout_s: float | None = None) -> bool:
        """Send ``message``; returns False if it was dropped (live) or a stop came first.

        End-of-stream is always sent blocking, whatever the policy.
        """
        frames = encode(message)
        blocking = self.policy is FlowPolicy.LOSSLESS or message.header.kind is Kind.EOS
        if not blocking:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                self.skipped["downstream_full"] += 1
                return False
        waited = 0.0
        while not self.stop():
            if self.socket.poll(POLL_MS, zmq.POLLOUT):
                try:
                    self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:
                    pass
            waited += POLL_MS / 1000
            if timeout_s is not None and waited >= timeout_s:
                return False
        return False
