"""Per-stage counters and timing samples, and their summaries for stats.json."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

MAX_SAMPLES = 50_000  # per series; older samples fall off so long runs keep bounded memory


def summarize(samples: Iterable[float]) -> dict[str, float]:
    """Median, p95, mean and max (ms) of ``samples``; zeros for an empty series."""
    values = np.fromiter(samples, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "median": 0.0, "p95": 0.0, "mean": 0.0, "max": 0.0}
    return {
        "count": int(values.size),
        "median": round(float(np.median(values)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "mean": round(float(values.mean()), 3),
        "max": round(float(values.max()), 3),
    }


@dataclass
class StageStats:
    """What one stage counts while it runs.

    Attributes:
        stage: stage name.
        frames_in: frames received (or read from the source, for capture).
        frames_out: frames sent on.
        skipped: frames dropped here, by reason.
        process_ms: processing time per frame (waits for downstream excluded).
        blocked_ms: time per frame spent waiting for downstream (lossless flow control).
        latency_ms: end-to-end latency from capture to the end of this stage, per frame
            (kept by publish and render).
        pacing_error_ms: how late a paced replay emitted each frame against its schedule
            (kept by capture; absolute values).
        per_source: frames out per source.
    """

    stage: str
    frames_in: int = 0
    frames_out: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    process_ms: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    blocked_ms: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    pacing_error_ms: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    per_source: Counter[str] = field(default_factory=Counter)
    first_out_ns: int = 0
    last_out_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def record_out(self, source: str, now_ns: int) -> None:
        """Count one frame sent on."""
        self.frames_out += 1
        self.per_source[source] += 1
        if not self.first_out_ns:
            self.first_out_ns = now_ns
        self.last_out_ns = now_ns

    def record_timing(self, in_ns: int, out_ns: int, blocked_ns: int) -> None:
        """Processing time of one frame, split into own work and waiting for downstream."""
        self.process_ms.append((out_ns - in_ns - blocked_ns) / 1e6)
        self.blocked_ms.append(blocked_ns / 1e6)

    def throughput_fps(self) -> float:
        """Frames out per second between the first and the last frame out."""
        span = (self.last_out_ns - self.first_out_ns) / 1e9
        return round((self.frames_out - 1) / span, 3) if self.frames_out > 1 and span > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "stage": self.stage,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "skipped": dict(self.skipped),
            "process_ms": summarize(self.process_ms),
            "blocked_ms": summarize(self.blocked_ms),
            "latency_ms": summarize(self.latency_ms),
            "throughput_fps": self.throughput_fps(),
            "per_source": dict(self.per_source),
            **({"pacing_error_ms": summarize(self.pacing_error_ms)} if self.pacing_error_ms else {}),
            **({"extra": self.extra} if self.extra else {}),
        }
