"""Where a frame's time went, from the stamps its message collected (DESIGN.md section 3).

One vocabulary everywhere (frames.jsonl, stats.json, the end table, the report, the live
view, Prometheus), per stage *process* (``capture-0``, ``infer-1``...):

- ``queue_ms``, **queued**: from the previous stage's send to this stage's receive (time in
  sockets and queues);
- ``stage_ms``, **in stage**: from receive to send, including any wait for room downstream
  (lossless flow). The capture stage's runs from the capture timestamp (the scheduled time
  of a paced replay) to its send;
- **busy** (stats.json ``stages.<name>.process_ms``): in stage minus that wait, the stage's
  own work. Publish is the exception: its *in stage* ends when consumers are sent the mask,
  and its sinks run after, so its busy includes them;
- ``e2e_ms``, **end to end**: capture to the moment the last stage finished. By
  construction ``sum(queue_ms + stage_ms) == e2e_ms``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from segstream.pipeline.wire.messages import Header

logger = logging.getLogger(__name__)

_WORKER_SUFFIX = re.compile(r"-\d+$")
STAGE_ORDER = ("capture", "preprocess", "infer", "publish", "render")


def stage_kind(name: str) -> str:
    """``capture-1`` -> ``capture``, ``infer-0`` -> ``infer``; other names unchanged."""
    return _WORKER_SUFFIX.sub("", name)


def pipeline_order(name: str) -> tuple[int, str]:
    """Sort key: stage names in the order a frame passes them (workers by number)."""
    kind = stage_kind(name)
    return (STAGE_ORDER.index(kind) if kind in STAGE_ORDER else len(STAGE_ORDER), name)


def frame_timing(header: Header, done_ns: int) -> dict[str, Any]:
    """One frame's breakdown: ``{"source", "index", "name", "capture_ns", "e2e_ms",
    "stages": {stage name: {"queue_ms", "stage_ms"}}}``.

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
        stages[s.stage] = {"queue_ms": round((in_ns - previous_out) / 1e6, 3),
                                       "stage_ms": round((out_ns - in_ns) / 1e6, 3)}
        previous_out = out_ns
    return {"source": header.source, "index": header.index, "name": header.name, "capture_ns": header.capture_ns,
            "e2e_ms": round((done_ns - header.capture_ns) / 1e6, 3), "stages": stages}


def stage_latency(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stage name, its ``stage`` (in stage) and ``queue`` series from stats.json: the
    published frames' breakdown, and render's from the rendered frames'."""
    latency = stats.get("latency_ms", {})
    merged = dict(latency.get("breakdown", {}))
    for name, parts in latency.get("breakdown_to_render", {}).items():
        merged.setdefault(name, parts)
    return merged
