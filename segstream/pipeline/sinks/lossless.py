"""``lossless:ENDPOINT``: a PUSH channel for one consumer that must get every mask.

PUSH blocks when that consumer falls behind, and so slows the pipeline: the consumer chose
backpressure (PUB subscribers never do). ``segstream consume --lossless`` reads it.
"""

from __future__ import annotations

from typing import Any

from segstream.pipeline.sinks import BaseSink, SinkContext, SinkResult
from segstream.pipeline.wire.policies import FlowPolicy, Outbox
from segstream.pipeline.wire.transport import Role, make_socket


class LosslessChannel(BaseSink):
    """Binds a PUSH socket at construction (so a consumer can connect before the first
    frame) and sends every public message, end of stream included."""

    def __init__(self, endpoint: str, context: SinkContext) -> None:
        self.endpoint = endpoint
        self.sent = 0
        self._stopping = context.stopping
        self._outbox = Outbox([make_socket(context.zmq_context, Role.RESULTS_PUSH, bind=endpoint,
                                           server=context.publish_keys, guard=context.guard)],
                              FlowPolicy.LOSSLESS, context.skipped, context.stopping)

    def write(self, result: SinkResult) -> None:
        if result.public is not None and self._outbox.send(result.public):
            self.sent += 1

    def end_source(self, final: SinkResult) -> None:
        if final.public is not None:  # the consumer learns that the source ended
            self._outbox.send(final.public)

    def close(self) -> None:
        self._outbox.close(0 if self._stopping() else 1000)

    def figures(self) -> dict[str, Any]:
        return {"sent": self.sent, "endpoint": self.endpoint}
