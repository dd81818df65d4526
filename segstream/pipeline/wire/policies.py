"""Flow policies: how a stage receives and sends so that latency or completeness holds.

``live``: never build a backlog. The receiver drains its socket and keeps the newest frame
of each source, counting the others as ``superseded``; a sender whose peer is full drops
the frame and counts it (``downstream_full``). A stage that is fast next to its sources'
frame rate still takes the few frames that came together in a burst (a hiccup of the
scheduler, not a lack of CPU), as many as it can clear within two frame intervals
(``CatchUp``): end-to-end latency stays bounded by a couple of frame times per stage, and
a frame is dropped only where the stage cannot keep up. The stage gets a burst one frame
at a time, and what is left of it is judged again after each, with the stage's newest
cost and the frames that came meanwhile.

``lossless``: every frame, in order, exactly once. Sends block (in short polls, so a stop
request is still seen) and upstream shared-memory rings wait for credits; nothing drops.

A ZeroMQ socket at its high-water mark drops the *newest* message and CONFLATE keeps only
one part of a multipart message, so "newest wins" is done here explicitly by draining.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

import zmq

from segstream.errors import MessageError
from segstream.log_throttle import LogThrottle
from segstream.pipeline.telemetry.stats import SkipCounter
from segstream.pipeline.wire.checks import source_rate
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Kind, Message, decode, encode

logger = logging.getLogger(__name__)

POLL_MS = 50  # how long any blocking wait lasts before the stop flag is checked again
CATCH_UP_INTERVALS = 2  # a live stage takes a burst it can clear within this many frame intervals
CATCH_UP_MAX = 4  # and never more frames of one source at once than this
CATCH_UP_WARM_UP_S = 2.0  # a stage's first seconds, while every process of the run warms up
DEFAULT_FPS = 30.0  # for frames that do not say their source's rate


class CatchUp:
    """How many frames of a source that arrived together a live stage still takes.

    The stage notes how long each frame kept it busy; a burst of frames is taken whole
    when the stage can clear it within ``CATCH_UP_INTERVALS`` frame intervals of the
    source at its median cost over the last ``window`` frames (a frame slowed by the
    scheduler does not count, a slow stage does), else only its newest frames (at least
    one). A stage slower than its source keeps only the newest frame, as strict live flow
    does. A stage's first frames pay for one-off set-up (encoders opened, buffers first
    touched, every process of the run warming up at once): the very first is not
    counted; until ``window`` frames are measured, a stage whose median cost so far is
    within those intervals takes up to twice ``CATCH_UP_MAX`` frames of a burst (what
    queued behind the set-up), and so does one within a single interval for
    ``warm_up_s`` after its first frame (what queued while the other stages' set-up took
    the cores: it keeps up, so the backlog clears). Before anything is measured, up to
    twice ``CATCH_UP_MAX`` frames are taken for the time being: the inbox hands them
    out one at a time and asks again after each, by when the cost of the first is known
    (a slow stage then drops the rest; one stale frame is what it costs).

    Args:
        window: frames whose median cost counts.
        warm_up_s: how long after its first frame a stage is still warming up.
        clock: seconds, monotonic (a test's own clock).

    Example:
        >>> catch_up = CatchUp(warm_up_s=0)  # warmed up after 16 frames, however soon
        >>> catch_up.allowance(30.0, burst=3), catch_up.allowance(30.0, burst=9)  # nothing measured
        (3, 8)
        >>> catch_up.note(90_000_000); catch_up.note(5_000_000)  # first frame, then 5 ms a frame
        >>> catch_up.allowance(30.0, burst=9)  # warming up
        8
        >>> for _ in range(16): catch_up.note(5_000_000)
        >>> catch_up.allowance(30.0, burst=9)
        4
        >>> for _ in range(16): catch_up.note(400_000_000)  # a slow model, warmed up
        >>> catch_up.allowance(25.0, burst=3)
        1
    """

    def __init__(self, window: int = 16, warm_up_s: float = CATCH_UP_WARM_UP_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._costs: deque[int] = deque(maxlen=window)
        self._warm_up_s = warm_up_s
        self._clock = clock
        self._first_at: float | None = None  # when the first frame was done

    def note(self, busy_ns: int) -> None:
        """One frame kept the stage busy for ``busy_ns``."""
        if self._first_at is None:
            self._first_at = self._clock()
            return
        self._costs.append(max(int(busy_ns), 1))

    def allowance(self, fps: object, burst: int, sharing: int = 1) -> int:
        """Frames of one source to take (1 or more) from a ``burst`` of them that came
        together, at the source's ``fps``, when ``sharing`` sources' bursts came at once
        (they share the stage's time: each gets its part of the budget)."""
        share = max(1, sharing)
        if not self._costs:  # taken for the time being, and judged again after one
            return min(burst, max(1, 2 * CATCH_UP_MAX // share))
        rate = source_rate(fps) or DEFAULT_FPS
        budget_ns = CATCH_UP_INTERVALS * 1e9 / rate / share
        cost = sorted(self._costs)[len(self._costs) // 2]
        # Warming up and keeping up: its first frames within the budget, or its first
        # seconds at most one frame interval a frame (the backlog clears by itself).
        early = self._first_at is not None and self._clock() - self._first_at < self._warm_up_s
        if (len(self._costs) < (self._costs.maxlen or 0) and cost <= budget_ns) or \
                (early and cost <= budget_ns / CATCH_UP_INTERVALS):
            return min(burst, max(1, 2 * CATCH_UP_MAX // share))
        return max(1, min(CATCH_UP_MAX, int(budget_ns // cost)))


class Inbox:
    """Receives messages from a PULL (or SUB) socket under a flow policy.

    Args:
        socket: the receiving socket.
        policy: live (drain to newest) or lossless (one at a time, in order).
        skipped: counter shared with the stage's stats, keyed by reason.
        catch_up: the stage's costs, for taking bursts it can clear (live); None: the
            newest frame of each source only.
    """

    def __init__(self, socket: zmq.Socket, policy: FlowPolicy, skipped: SkipCounter,
                 catch_up: CatchUp | None = None) -> None:
        self.socket = socket
        self.policy = policy
        self.skipped = skipped
        self.catch_up = catch_up
        self.superseded: list[Message] = []
        self._pending: list[Message] = []  # live: kept from a burst, handed out one by one
        self._throttle = LogThrottle()
        self._turn = 0
        self._served: dict[str, int] = {}  # live: source -> the turn its message was last handed out

    def _recv_one(self) -> Message | None:
        frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        try:
            return decode([f.buffer for f in frames])
        except MessageError as exc:
            self.skipped.add(f"malformed_{exc.reason}", None)
            if self._throttle.allow(exc.reason):
                logger.warning("dropped a malformed message: %s (counted; logged at most every %.0f s)",
                               exc, self._throttle.every_s)
            return None

    def receive(self, timeout_ms: int = POLL_MS) -> list[Message]:
        """Messages to process now, oldest first; empty after ``timeout_ms`` of silence.

        In live flow, frames superseded by newer frames of the same source (beyond what
        ``catch_up`` allows) are left out, counted, and kept in ``self.superseded`` so the
        stage can release them upstream; of what is kept one message comes back: the
        first of the source served least recently (round robin, so that with more sources
        than the stage can serve every one gets its share, and a source whose frame was
        superseded does not go to the back of the line); the rest waits here to be judged
        again, with whatever came meanwhile, at the next call (which then does not wait).
        End-of-stream messages are never dropped, and never pass a frame of their source.
        """
        if not self.socket.poll(0 if self._pending else timeout_ms, zmq.POLLIN) and not self._pending:
            return []
        out, self._pending = self._pending, []
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
            first = self._fairest(out)
            out, self._pending = [out[first]], out[:first] + out[first + 1:]
        if self.policy is FlowPolicy.LIVE and out:
            source = out[0].header.source
            self._turn += 1
            if out[0].header.kind is Kind.EOS:
                self._served.pop(source, None)
            else:
                self._served[source] = self._turn
        return out

    def _fairest(self, messages: list[Message]) -> int:
        """The index of the first message of the source served least recently."""
        best = min(range(len(messages)), key=lambda i: (self._served.get(messages[i].header.source, -1), i))
        source = messages[best].header.source
        return next(i for i, m in enumerate(messages) if m.header.source == source)

    def _keep_newest(self, messages: list[Message]) -> list[Message]:
        frames: dict[str, list[int]] = {}
        for i, m in enumerate(messages):
            if m.header.kind is not Kind.EOS:
                frames.setdefault(m.header.source, []).append(i)
        keep: set[int] = set()
        for positions in frames.values():
            newest = messages[positions[-1]]
            n = self.catch_up.allowance(newest.header.meta.get("fps"), len(positions), len(frames)) \
                if self.catch_up else 1
            keep.update(positions[-n:])
        kept = []
        for i, m in enumerate(messages):
            if m.header.kind is Kind.EOS or i in keep:
                kept.append(m)
            else:
                self.skipped.add("superseded", m.header.source)
                self.superseded.append(m)
        return kept


class Outbox:
    """Sends messages to one or more PUSH sockets under a flow policy.

    With several sockets (one per parallel worker downstream) frames go round-robin to
    the next socket that can take one; end-of-stream goes to every socket.

    Args:
        sockets: the sending sockets.
        policy: live (never block) or lossless (block until sent or stopped).
        skipped: counter shared with the stage's stats.
        stop: returns True when the stage must stop.
    """

    def __init__(self, sockets: list[zmq.Socket], policy: FlowPolicy, skipped: SkipCounter,
                 stop: Callable[[], bool]) -> None:
        if not sockets:
            raise ValueError("an Outbox needs at least one socket")
        self.sockets = sockets
        self.policy = policy
        self.skipped = skipped
        self.stop = stop
        self._next = 0
        self._poller = zmq.Poller()
        for sock in sockets:
            self._poller.register(sock, zmq.POLLOUT)

    def _try_each(self, frames: list) -> bool:
        n = len(self.sockets)
        for k in range(n):
            sock = self.sockets[(self._next + k) % n]
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            self._next = (self._next + k + 1) % n
            return True
        return False

    def _send_blocking(self, sockets: list[zmq.Socket], frames: list, timeout_s: float | None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = list(sockets)
        while pending and not self.stop():
            for sock in list(pending):
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                    pending.remove(sock)
                except zmq.Again:
                    pass
            if pending:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                pending[0].poll(POLL_MS, zmq.POLLOUT)
        return not pending

    def send(self, message: Message, timeout_s: float | None = None) -> bool:
        """Send ``message``; returns False if it was dropped (live) or a stop came first.

        End-of-stream is always sent blocking, to every socket, whatever the policy.
        """
        frames = encode(message)
        if message.header.kind is Kind.EOS:
            return self._send_blocking(self.sockets, frames, timeout_s)
        if self.policy is FlowPolicy.LIVE:
            if self._try_each(frames):
                return True
            self.skipped.add("downstream_full", message.header.source)
            return False
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.stop():
            if self._try_each(frames):
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._poller.poll(POLL_MS)
        return False

    def close(self, linger_ms: int) -> None:
        """Close every socket."""
        for sock in self.sockets:
            sock.close(linger=linger_ms)
