"""Per-stage counters and timing samples (``StageStats``, kept by a stage while it runs) and
the typed report a stage sends to the supervisor (``StageReport``, checked on receipt)."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field, replace
from typing import Any

from segstream.pipeline.telemetry.ledger import Entry, Ledger
from segstream.pipeline.telemetry.series import SampleWindow, Series, summarize
from segstream.pipeline.telemetry.timing import pipeline_order

# A run that takes sources for weeks (``--api``) keeps the per-source figures of the last
# sources that ended (the supervisor this many, each stage twice as many, so that what
# the supervisor shows is never one a stage forgot); older ones count in the totals only.
KEEP_ENDED_SOURCES = 32
RELEASED_CAPTURES = "captures-released"  # the added-up figures of the captures released before those
RECENT = 200  # samples behind the live figures (latency "now", not since the start)


class SkipCounter(Counter):
    """Frames skipped, by reason (the counter itself) and by source and reason."""

    def __init__(self) -> None:
        super().__init__()
        self.by_source: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.ledger: Ledger | None = None  # where the total also goes (``StageStats.keep_ledger``)

    def add(self, reason: str, source: str | None, count: int = 1) -> None:
        """Count ``count`` frames of ``source`` (None: unknown, e.g. an undecodable
        message) skipped for ``reason``."""
        self[reason] += count
        if self.ledger is not None:
            self.ledger.add(Entry.SKIPPED, count)
        if source is not None:
            self.by_source[source][reason] += count


@dataclass
class StageStats:
    """What one stage counts while it runs.

    Attributes:
        stage: stage name.
        frames_in: frames received (or read from the source, for capture).
        frames_out: frames sent on.
        skipped: frames dropped here, by reason.
        handed_over_skipped: frames finished here that the stage behind did not take
            (publish: published, but not drawn by render), by reason.
        process_ms: processing time per frame (waits for downstream excluded).
        blocked_ms: time per frame spent waiting for downstream (lossless flow control).
        latency_ms: end-to-end latency from capture to the end of this stage, per frame
            (kept by publish and render).
        pacing_error_ms: how late a paced replay emitted each frame against its schedule
            (kept by capture; absolute values).
        per_source: frames out per source.
        breakdown: per stage kind, ``queue`` and ``stage`` series of the frames this stage
            finished (``pipeline.timing``; kept by publish).
        latency_by_source: end-to-end latency series per source (kept by publish).
        source_span: first and last time a frame went out, per source (ns).
        cpu_s: CPU time the stage used (set at its end).
        cpu_setup_s: of that, what it used before its first frame could come (imports,
            model loading), so that ``cpu_s - cpu_setup_s`` is the work on frames.
        reconnects: reopened streams (capture).
        connect_attempts: attempts to open a stream (capture).
        frame_count: frames the source says it holds (capture; 0 when unknown).
        error: why the stage's source or output failed, if it did.
        sinks: each sink's own figures, by sink name.
        extra: descriptive facts for stats.json (source, fps, model...).
        ledger: where the counters accounting needs are kept as they change, for the
            supervisor to read if this process dies (``keep_ledger``).
    """

    stage: str
    frames_in: int = 0
    frames_out: int = 0
    skipped: SkipCounter = field(default_factory=SkipCounter)
    handed_over_skipped: SkipCounter = field(default_factory=SkipCounter)
    process_ms: SampleWindow = field(default_factory=SampleWindow)
    blocked_ms: SampleWindow = field(default_factory=SampleWindow)
    latency_ms: SampleWindow = field(default_factory=SampleWindow)
    pacing_error_ms: SampleWindow = field(default_factory=SampleWindow)
    per_source: Counter[str] = field(default_factory=Counter)
    breakdown: dict[str, dict[str, Series]] = field(default_factory=dict)
    latency_by_source: dict[str, Series] = field(default_factory=dict)
    source_span: dict[str, list[int]] = field(default_factory=dict)
    first_out_ns: int = 0
    last_out_ns: int = 0
    cpu_s: float = 0.0
    cpu_setup_s: float = 0.0
    reconnects: int = 0
    connect_attempts: int = 0
    frame_count: int = 0
    error: str = ""
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    ledger: Ledger | None = None
    ended_sources: deque[str] = field(default_factory=deque)
    capture_of: dict[str, str] = field(default_factory=dict)  # source -> its capture stage (first stamp)

    def source_ended(self, source: str) -> None:
        """``source`` ended (its last figures were reported): drop its latency samples and
        those of its capture's breakdown (their summaries stay), and forget the figures of
        the source that ended ``2 * KEEP_ENDED_SOURCES`` sources ago (totals keep them)."""
        capture = self.breakdown.get(self.capture_of.get(source, ""), {})
        for series in (self.latency_by_source.get(source), *capture.values()):
            if series is not None:
                series.freeze()
        self.ended_sources.append(source)
        while len(self.ended_sources) > 2 * KEEP_ENDED_SOURCES:
            old = self.ended_sources.popleft()
            self.breakdown.pop(self.capture_of.pop(old, ""), None)
            for per in (self.per_source, self.latency_by_source, self.source_span, self.skipped.by_source,
                        self.handed_over_skipped.by_source):
                per.pop(old, None)

    def keep_ledger(self, ledger: Ledger) -> None:
        """Keep the counters accounting needs in ``ledger`` too, as they change."""
        self.ledger = self.skipped.ledger = ledger

    def count_in(self) -> None:
        """Count one frame received (read from the source, for capture)."""
        self.frames_in += 1
        if self.ledger is not None:
            self.ledger.set(Entry.FRAMES_IN, self.frames_in)

    def leaving(self) -> None:
        """A frame is about to be sent on: the ledger counts it out already, so a death
        during the send never counts it as held as well (``retire``); ``record_out`` or
        ``stayed`` settles it."""
        if self.ledger is not None:
            self.ledger.set(Entry.FRAMES_OUT, self.frames_out + 1)

    def stayed(self) -> None:
        """The frame announced by ``leaving`` was not sent (dropped, or a stop)."""
        if self.ledger is not None:
            self.ledger.set(Entry.FRAMES_OUT, self.frames_out)

    def record_out(self, source: str, now_ns: int) -> None:
        """Count one frame sent on."""
        self.frames_out += 1
        if self.ledger is not None:
            self.ledger.set(Entry.FRAMES_OUT, self.frames_out)
        self.per_source[source] += 1
        self.source_span.setdefault(source, [now_ns, now_ns])[1] = now_ns
        if not self.first_out_ns:
            self.first_out_ns = now_ns
        self.last_out_ns = now_ns

    def record_timing(self, in_ns: int, out_ns: int, blocked_ns: int) -> None:
        """Processing time of one frame, split into own work and waiting for downstream."""
        self.process_ms.append((out_ns - in_ns - blocked_ns) / 1e6)
        self.blocked_ms.append(blocked_ns / 1e6)

    def record_frame(self, timing: dict[str, Any]) -> None:
        """Add one finished frame's breakdown (``pipeline.timing.frame_timing``)."""
        for kind, parts in timing["stages"].items():
            series = self.breakdown.setdefault(kind, {"queue": Series(), "stage": Series()})
            series["queue"].add(parts["queue_ms"])
            series["stage"].add(parts["stage_ms"])
        self.latency_by_source.setdefault(timing["source"], Series()).add(timing["e2e_ms"])
        if timing["stages"] and timing["source"] not in self.capture_of:
            self.capture_of[timing["source"]] = next(iter(timing["stages"]))
        self.latency_ms.append(timing["e2e_ms"])

    def throughput_fps(self, source: str | None = None) -> float:
        """Frames out per second between the first and the last frame out (of ``source``)."""
        first, last = self.source_span.get(source, [0, 0]) if source else (self.first_out_ns, self.last_out_ns)
        count = self.per_source.get(source, 0) if source else self.frames_out
        span = (last - first) / 1e9
        return round((count - 1) / span, 3) if count > 1 and span > 0 else 0.0

    def report(self) -> "StageReport":
        """The figures so far, as the supervisor receives them."""
        return StageReport(
            stage=self.stage,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            skipped=dict(self.skipped),
            skipped_by_source={sid: dict(c) for sid, c in self.skipped.by_source.items()},
            handed_over_skipped=dict(self.handed_over_skipped),
            process_ms=summarize(self.process_ms),
            blocked_ms=summarize(self.blocked_ms),
            latency_ms=summarize(self.latency_ms),
            latency_recent_ms=summarize(self.latency_ms.values()[-RECENT:]),
            throughput_fps=self.throughput_fps(),
            per_source=dict(self.per_source),
            throughput_by_source_fps={sid: self.throughput_fps(sid) for sid in self.per_source},
            pacing_error_ms=summarize(self.pacing_error_ms) if self.pacing_error_ms else None,
            breakdown_ms={stage: {part: series.to_json() for part, series in self.breakdown[stage].items()}
                          for stage in sorted(self.breakdown, key=pipeline_order)},
            latency_by_source_ms={sid: series.to_json() for sid, series in self.latency_by_source.items()},
            cpu_s=self.cpu_s,
            cpu_setup_s=self.cpu_setup_s,
            reconnects=self.reconnects,
            connect_attempts=self.connect_attempts,
            frame_count=self.frame_count,
            error=self.error,
            sinks=dict(self.sinks),
            extra=dict(self.extra),
        )


@dataclass(frozen=True)
class StageReport:
    """What one stage reports (``stats`` and ``done`` events; ``stats.json`` ``stages``).

    Summaries (``process_ms`` ...) are ``{"count", "median", "p95", "mean", "max"}`` in ms;
    series (``breakdown_ms``, ``latency_by_source_ms``) add a ``histogram``.

    Attributes:
        stage: the stage's name.
        frames_in: frames received (read from the source, for capture).
        frames_out: frames sent on.
        skipped: frames dropped here, by reason.
        skipped_by_source: the same per source.
        handed_over_skipped: frames finished here that the stage behind did not take
            (publish: published but not drawn), by reason.
        process_ms: processing time per frame, waits for downstream excluded.
        blocked_ms: time per frame spent waiting for downstream.
        latency_ms: capture to the end of this stage (publish and render).
        latency_recent_ms: the same over the last frames.
        throughput_fps: frames out per second.
        per_source: frames out per source.
        throughput_by_source_fps: frames out per second, per source.
        pacing_error_ms: how late paced frames left (capture), or None.
        breakdown_ms: per stage kind, ``queue`` and ``stage`` series (publish, render).
        latency_by_source_ms: end-to-end series per source (publish, render).
        cpu_s: CPU time used (in the final report).
        cpu_setup_s: of ``cpu_s``, what was used before the stage started on frames.
        reconnects: reopened streams (capture).
        connect_attempts: attempts to open a stream (capture).
        frame_count: frames the source holds (capture; 0 when unknown).
        error: why the stage's source or output failed.
        sinks: each sink's own figures, by sink name.
        extra: descriptive facts (source, fps, model...).
        restarts: how often the supervisor restarted the stage (set by the supervisor).
    """

    stage: str
    frames_in: int = 0
    frames_out: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    handed_over_skipped: dict[str, int] = field(default_factory=dict)
    process_ms: dict[str, float] = field(default_factory=lambda: summarize([]))
    blocked_ms: dict[str, float] = field(default_factory=lambda: summarize([]))
    latency_ms: dict[str, float] = field(default_factory=lambda: summarize([]))
    latency_recent_ms: dict[str, float] = field(default_factory=lambda: summarize([]))
    throughput_fps: float = 0.0
    per_source: dict[str, int] = field(default_factory=dict)
    throughput_by_source_fps: dict[str, float] = field(default_factory=dict)
    pacing_error_ms: dict[str, float] | None = None
    breakdown_ms: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    latency_by_source_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu_s: float = 0.0
    cpu_setup_s: float = 0.0
    reconnects: int = 0
    connect_attempts: int = 0
    frame_count: int = 0
    error: str = ""
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0

    def __post_init__(self) -> None:
        counts = [self.frames_in, self.frames_out, *self.skipped.values(), *self.per_source.values()]
        if any(n < 0 for n in counts):
            raise ValueError(f"stage {self.stage}: counts must not be negative")

    @property
    def skipped_total(self) -> int:
        """Frames skipped here, all reasons."""
        return sum(self.skipped.values())

    def to_json(self) -> dict[str, Any]:
        """The report as stats.json holds it."""
        from segstream.pipeline.typed_json import dump

        return dump(self)


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in [*a, *(k for k in b if k not in a)]}


def retire(report: StageReport | None, stage: str, ledger: dict[Entry, int] | None) -> StageReport:
    """What a stage process that died had done: its last report, with the counters of its
    ledger (which are never behind) where they are ahead.

    Counted as ``stage-restart``: the frames it skipped after its last report (their
    reason went with it) and the frames it held when it died (received, neither sent on
    nor skipped).
    """
    report = report or StageReport(stage)
    if ledger is None:
        return report
    skipped = dict(report.skipped)
    unreported = max(ledger[Entry.SKIPPED] - report.skipped_total, 0)
    held = max(ledger[Entry.FRAMES_IN] - ledger[Entry.FRAMES_OUT] - ledger[Entry.SKIPPED], 0)
    if unreported + held > 0:
        skipped["stage-restart"] = skipped.get("stage-restart", 0) + unreported + held
    return replace(report, frames_in=max(report.frames_in, ledger[Entry.FRAMES_IN]),
                   frames_out=max(report.frames_out, ledger[Entry.FRAMES_OUT]), skipped=skipped)


def combine(earlier: StageReport, current: StageReport | None, restarts: int) -> StageReport:
    """One stage's figures over its processes: counts added up, timings of the current one."""
    if current is None:
        return replace(earlier, restarts=restarts)
    by_source = {sid: _add_counts(earlier.skipped_by_source.get(sid, {}), current.skipped_by_source.get(sid, {}))
                 for sid in [*earlier.skipped_by_source, *current.skipped_by_source]}
    return replace(current, frames_in=earlier.frames_in + current.frames_in,
                   frames_out=earlier.frames_out + current.frames_out,
                   skipped=_add_counts(earlier.skipped, current.skipped), skipped_by_source=by_source,
                   handed_over_skipped=_add_counts(earlier.handed_over_skipped, current.handed_over_skipped),
                   per_source=_add_counts(earlier.per_source, current.per_source),
                   cpu_s=round(earlier.cpu_s + current.cpu_s, 3),
                   cpu_setup_s=round(earlier.cpu_setup_s + current.cpu_setup_s, 3),
                   reconnects=earlier.reconnects + current.reconnects,
                   connect_attempts=earlier.connect_attempts + current.connect_attempts, restarts=restarts)
