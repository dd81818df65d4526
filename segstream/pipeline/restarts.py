"""Restarting a stage process that died, without stopping the others.

A restarted stage rejoins the graph where the dead one was: it binds the same endpoints
(ZeroMQ peers reconnect by themselves), writes a new shared-memory ring (the dead one's
is swept; a reader whose frame went with it counts the frame as skipped), and a capture
goes on from the frame its ledger says it got to. In lossless flow the supervisor
releases, on the dead reader's behalf, every frame it held upstream, or the writer would
wait for them forever.

How often: ``max_restarts`` per ``RESTART_WINDOW_S`` per stage, each after a backoff that
doubles from ``BACKOFF_MIN_S`` to ``BACKOFF_MAX_S``; past that the run fails.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace

from segstream.pipeline.spec import CaptureSettings, StageSpec
from segstream.pipeline.stage_process import StageProcess
from segstream.pipeline.telemetry.ledger import Entry, read_ledger
from segstream.pipeline.telemetry.stats import StageReport, combine, retire
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.ring_recovery import release_everything
from segstream.pipeline.wire.shm_segments import sweep

logger = logging.getLogger(__name__)

RESTART_WINDOW_S = 600.0
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 4.0


@dataclass
class RestartBudget:
    """How many restarts one stage has had lately, and how long to wait before the next.

    Args:
        limit: restarts allowed within ``window_s``.
        window_s: the sliding window.
    """

    limit: int
    window_s: float = RESTART_WINDOW_S
    times: deque[float] = field(default_factory=deque)
    total: int = 0

    def _recent(self, now: float) -> int:
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        return len(self.times)

    def take(self, now: float) -> float | None:
        """Count a restart at ``now`` and return the wait before it; None once the
        budget is spent."""
        recent = self._recent(now)
        if recent >= self.limit:
            return None
        self.times.append(now)
        self.total += 1
        return min(BACKOFF_MIN_S * 2 ** recent, BACKOFF_MAX_S)


class CaptureDeaths:
    """Which captures to stop restarting because they die at start-up, before their first
    frame, on the same error twice: another try would only die again (a source that cannot
    run, such as a frame too large to allocate). Such a source fails alone (its stream ended
    on its behalf), as one whose restart budget is spent does."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}  # capture stage -> the error it died of at start-up

    def give_up(self, stage: str, error: str, started: bool) -> str | None:
        """Note a death of capture ``stage``; the reason to stop restarting it, or None."""
        if started or not error:
            self._last.pop(stage, None)  # a kill, or a death after a start, is restarted as usual
            return None
        if self._last.get(stage) == error:
            return f"its capture died twice at start-up on the same error ({error}), so it is not restarted"
        self._last[stage] = error
        return None

    def forget(self, stage: str) -> None:
        """``stage`` is gone for good."""
        self._last.pop(stage, None)


def ring_name(spec: StageSpec, incarnation: int) -> str:
    """The output ring name of a stage's ``incarnation`` (the first keeps the planned one)."""
    assert spec.ring is not None
    base = spec.ring.name.split(".r", 1)[0]
    return base if incarnation == 0 else f"{base}.r{incarnation}"


def next_incarnation(spec: StageSpec, ledger: dict[Entry, int] | None, ended_sources: tuple[str, ...],
                     failed: str = "") -> StageSpec:
    """The spec of the process that replaces a dead one.

    Args:
        spec: the dead process's spec.
        ledger: the counters it left (a capture goes on from its position).
        ended_sources: sources whose end of stream went through before the death.
        failed: for a capture given up on: why; the new process opens nothing, reports the
            source failed and ends its stream.
    """
    incarnation = spec.incarnation + 1
    changes: dict[str, object] = {"incarnation": incarnation, "ended_sources": ended_sources}
    if spec.ring is not None:
        changes["ring"] = replace(spec.ring, name=ring_name(spec, incarnation))
    settings = spec.settings
    if isinstance(settings, CaptureSettings) and ledger is not None:
        settings = replace(settings, start_index=max(settings.start_index, ledger[Entry.NEXT_INDEX]),
                           start_seq=max(settings.start_seq, ledger[Entry.NEXT_SEQ]))
    if isinstance(settings, CaptureSettings):
        changes["settings"] = replace(settings, failed=failed) if failed else settings
    return replace(spec, **changes)  # type: ignore[arg-type]


class Restarter:
    """The restart budgets of a run's stages and what their dead processes did.

    Args:
        limit: restarts allowed per stage within ``RESTART_WINDOW_S``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.budgets: dict[str, RestartBudget] = {}
        self.retired: dict[str, StageReport] = {}
        self.capture_deaths = CaptureDeaths()

    def after_death(self, stage: StageProcess, death: str, now: float) -> tuple[float | None, str]:
        """What follows the death of ``stage`` (``death`` says how it died): ``(wait, "")``
        to restart it after ``wait``; ``(None, error)`` when the run must end (a stage
        other than a capture spent its budget). A capture that spent its budget, or died
        twice at start-up on the same error, fails its source alone: ``(0, "")`` with
        ``stage.give_up`` set, so that one last process of it opens nothing, reports the
        source failed and ends its stream through every stage."""
        capture = isinstance(stage.spec.settings, CaptureSettings)
        give_up = self.capture_deaths.give_up(stage.spec.name, stage.error, stage.started) if capture else None
        budget = self.budget(stage.spec.name)
        wait = None if give_up else budget.take(now)
        if wait is not None:
            return wait, ""
        spent = f"died {budget.limit + 1} times within {budget.window_s / 60:.0f} minutes (--max-restarts {budget.limit})"
        if not capture:
            return None, f"{death}; it {spent}, so the run ends"
        stage.give_up = f"{death}; {give_up or f'its capture {spent}'}"
        return 0.0, ""

    def budget(self, stage: str) -> RestartBudget:
        """The budget of ``stage``."""
        return self.budgets.setdefault(stage, RestartBudget(self.limit))

    def forget(self, stage: str) -> None:
        """``stage`` is gone for good (a released capture): drop its budget and figures."""
        self.budgets.pop(stage, None)
        self.retired.pop(stage, None)
        self.capture_deaths.forget(stage)

    def restarts(self) -> dict[str, int]:
        """Restarts so far, by stage (stages that never died left out)."""
        return {name: budget.total for name, budget in self.budgets.items() if budget.total}

    def retire(self, dead: StageProcess, stages: list[StageProcess], policy: FlowPolicy) -> None:
        """Keep what a dead process did, sweep its ring, and in lossless flow release
        what it held upstream."""
        name = dead.spec.name
        done = retire(dead.report, name, read_ledger(dead.ledger_path))
        earlier = self.retired.get(name)
        self.retired[name] = combine(earlier, done, 0) if earlier is not None else done
        if dead.spec.ring is not None:
            sweep(f"{dead.spec.ring.name}-")
        if policy is FlowPolicy.LOSSLESS:
            for upstream in stages:
                ring = upstream.spec.ring
                reader = ring.reader_id(dead.spec.kind) if ring is not None else None
                if ring is not None and reader is not None:
                    # readers after it on the ring are downstream of it (RING_READERS order)
                    release_everything(ring.name, reader, tuple(range(reader + 1, len(ring.readers))))

    def reports(self, stages: list[StageProcess]) -> dict[str, StageReport]:
        """Each stage's figures over all its processes."""
        reports = {}
        for stage in stages:
            name = stage.spec.name
            earlier = self.retired.get(name)
            current = None if stage.restart_at is not None else stage.report
            if earlier is not None:
                reports[name] = combine(earlier, current, self.budget(name).total)
            elif current is not None:
                reports[name] = current
        return reports
