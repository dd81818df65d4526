"""Where a frame's time went, from the stamps its message collected (DESIGN.md section 3).

Per stage: ``queue_ms`` (from the previous stage's send to this stage's receive: time in
sockets and queues) and ``stage_ms`` (from receive to send, including any wait for a
lossless downstream). The capture stage's ``stage_ms`` runs from the capture timestamp
(the scheduled time of a paced replay) to its send. By construction the parts add up:
``sum(queue_ms + stage_ms) == e2e_ms`` (the end-to-end latency from capture to the moment
the last stage finished).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from segstream.pipeline.wire.messages import Header

logger = logging.getLogger(__name__)

_WORKER_SUFFIX = re.compile(r"-\d+$")


def stage_kind(name: str) -> str:
    """``capture-1`` -> ``capture``, ``infer-0`` -> ``infer``; other names unchanged."""
    return _WORKER_SUFFIX.sub("", name)


def frame_timing(header: Header, done_ns: int) -> dict[str, Any]:
    """One frame's breakdown: ``{"source", "index", "name", "capture_ns", "e2e_ms",
    "stages": {kind: {"queue_ms", "stage_ms"}}}``.

    Args:
        header: the frame's header; its last stamp is the stage that finished it, whose
            send time is replaced by ``done_ns``.
        done_ns: when that stage finished (monotonic ns).
    """
    stages: dict[str, dict[str, float]] = {}
    previous_out = header.capture_ns
    last = len(header.stamps) - 1
    for k, s in enumerate(header.stamps):
        out_ns = done_ns if k == last else s.out_ns
        in_ns = header.capture_ns if k == 0 else s.in_ns
        stages[stage_kind(s.stage)] = {"queue_ms": round((in_ns - previous_out) / 1e6, 3),
                                       "stage_ms": round((out_ns - in_ns) / 1e6, 3)}
        previous_out = out_ns
    return {"source": header.source, "index": header.index, "name": header.name, "capture_ns": header.capture_ns,
            "e2e_ms": round((done_ns - header.capture_ns) / 1e6, 3), "stages": stages}
