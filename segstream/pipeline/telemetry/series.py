"""Timing series of a stage: the last samples for summaries (median, p95...), and a
histogram that never forgets (Prometheus)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

MAX_SAMPLES = 50_000  # per series; older samples fall off so long runs keep bounded memory
# Histogram bucket upper bounds (ms) for the Prometheus endpoint.
BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class SampleWindow:
    """The last ``maxlen`` samples of a series, as 8-byte floats in one array that grows
    (doubling) up to ``maxlen`` and then wraps: a quarter of what a deque of Python floats
    takes (50,000 samples: 0.4 MB, not 1.6 MB), so a long run's stages reach their
    size early and stay there.

    Args:
        maxlen: how many samples are kept.
    """

    def __init__(self, maxlen: int = MAX_SAMPLES) -> None:
        self.maxlen = maxlen
        self._values = np.empty(min(256, maxlen), np.float64)
        self._count = 0  # samples ever added

    def append(self, value: float) -> None:
        """Add one sample (the oldest falls off once ``maxlen`` are kept)."""
        if self._count == len(self._values) and len(self._values) < self.maxlen:
            grown = np.empty(min(2 * len(self._values), self.maxlen), np.float64)
            grown[:self._count] = self._values
            self._values = grown
        self._values[self._count % len(self._values)] = value
        self._count += 1

    def values(self) -> np.ndarray:
        """The samples kept, oldest first (a copy)."""
        size = len(self)
        if self._count <= len(self._values):
            return self._values[:size].copy()
        start = self._count % len(self._values)
        return np.concatenate([self._values[start:], self._values[:start]])

    def __len__(self) -> int:
        return min(self._count, len(self._values))

    def __iter__(self) -> Iterator[float]:
        return iter(self.values().tolist())


def summarize(samples: Iterable[float]) -> dict[str, float]:
    """Median, p95, mean and max (ms) of ``samples``; zeros for an empty series."""
    values = samples.values() if isinstance(samples, SampleWindow) else np.fromiter(samples, dtype=np.float64)
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
class Histogram:
    """Counts per bucket (cumulative on output), sum and count of a series, in ms; unlike
    the samples it never forgets, as Prometheus histograms require."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_MS) + 1))
    total: float = 0.0

    def observe(self, value_ms: float) -> None:
        """Count one value."""
        k = next((i for i, bound in enumerate(BUCKETS_MS) if value_ms <= bound), len(BUCKETS_MS))
        self.counts[k] += 1
        self.total += value_ms

    def to_json(self) -> dict[str, Any]:
        """``{"buckets": [[le, cumulative count], ..., ["+Inf", count]], "sum": ms, "count": n}``."""
        cumulative, running = [], 0
        for bound, n in zip([*BUCKETS_MS, "+Inf"], self.counts):
            running += n
            cumulative.append([bound, running])
        return {"buckets": cumulative, "sum": round(self.total, 3), "count": running}


class Series:
    """A timing series: bounded samples for summaries plus a histogram."""

    def __init__(self) -> None:
        self.samples = SampleWindow()
        self.histogram = Histogram()
        self._summary: dict[str, float] | None = None

    def add(self, value_ms: float) -> None:
        """Add one value."""
        self.samples.append(value_ms)
        self.histogram.observe(value_ms)
        self._summary = None

    def freeze(self) -> None:
        """No more values will come (its source ended): keep the summary, drop the samples."""
        self._summary = summarize(self.samples)
        self.samples = SampleWindow(1)

    def to_json(self) -> dict[str, Any]:
        """The summary (``summarize``) plus ``histogram``."""
        summary = self._summary if self._summary is not None else summarize(self.samples)
        return {**summary, "histogram": self.histogram.to_json()}
