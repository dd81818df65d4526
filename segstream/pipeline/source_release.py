"""Releasing what a source held once it ended, so that a run taking sources for weeks
(``--api``) does not grow with every camera added and removed.

When a source's end of stream went through every stage and its capture process exited,
the supervisor (``release_source``):

- keeps its capture's final figures in ``ReleasedCaptures``: the last
  ``KEEP_ENDED_SOURCES`` by stage name, older ones added up into one
  ``captures-released`` figure, so the run's totals stay exact and its stats stay small;
- forgets the capture's process, restart budget and files in the run folder (spec
  files of every incarnation, their ledgers, its ipc socket files);
- takes the source out of the other stages' specs, so that a stage restarted later
  neither waits for it nor connects to its capture's endpoints;
- keeps the source in the book among the last ``KEEP_ENDED_SOURCES`` that ended; an
  older one leaves the book (its id stays taken for the run).

The stages themselves unmap the source's ring, disconnect from its capture and freeze its
figures when its end of stream passes (``loop.leave_source``, ``StageStats.source_ended``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.pipeline.spec import CaptureSettings, StageKind
from segstream.pipeline.telemetry.stats import KEEP_ENDED_SOURCES, RELEASED_CAPTURES, StageReport, combine

if TYPE_CHECKING:
    from segstream.pipeline.source_book import SourceEntry
    from segstream.pipeline.stage_process import StageProcess
    from segstream.pipeline.supervisor import Supervisor

logger = logging.getLogger(__name__)


def _totals_only(report: StageReport) -> StageReport:
    """``report`` without what it holds per source (what adds up across captures)."""
    return replace(report, stage=RELEASED_CAPTURES, skipped_by_source={}, per_source={}, throughput_by_source_fps={},
                   latency_by_source_ms={}, extra={}, error="", sinks={})


class ReleasedCaptures:
    """The final figures of the captures of sources that ended and were released.

    Args:
        keep: how many to keep by name; older ones are added up into one figure.
    """

    def __init__(self, keep: int = KEEP_ENDED_SOURCES) -> None:
        self.keep = keep
        self._kept: OrderedDict[str, tuple[CaptureSettings, StageReport]] = OrderedDict()
        self._folded: StageReport | None = None
        self.folded = 0  # captures added up into ``captures-released``

    def add(self, name: str, settings: CaptureSettings, report: StageReport) -> None:
        """Keep the final ``report`` of capture ``name`` (reading ``settings``)."""
        self._kept[name] = (settings, report)
        while len(self._kept) > self.keep:
            _, (_, old) = self._kept.popitem(last=False)
            old = _totals_only(old)
            self._folded = old if self._folded is None else \
                combine(self._folded, old, self._folded.restarts + old.restarts)
            self.folded += 1

    def captures(self) -> tuple[tuple[str, CaptureSettings], ...]:
        """(stage name, settings) of the captures kept by name."""
        return tuple((name, settings) for name, (settings, _) in self._kept.items())

    def restarts(self) -> dict[str, int]:
        """Restarts of the captures kept by name and of those added up (none left out)."""
        return {name: report.restarts for name, report in self.reports().items() if report.restarts}

    def reports(self) -> dict[str, StageReport]:
        """Their figures by stage name, the added-up older ones as ``captures-released``."""
        reports = {name: report for name, (_, report) in self._kept.items()}
        if self._folded is not None:
            reports[RELEASED_CAPTURES] = self._folded
        return reports


def release_source(sup: "Supervisor", entry: "SourceEntry", capture: "StageProcess") -> None:
    """Release what source ``entry`` held in the run: its capture (exited) and its place in
    the other stages' specs (see the module's docstring)."""
    name, sid = capture.spec.name, entry.source_id
    report = sup.restarter.reports([capture]).get(name) or StageReport(name)
    sup.restarter.forget(name)
    assert isinstance(capture.spec.settings, CaptureSettings)
    sup.released.add(name, capture.spec.settings, report)
    sup.stages.remove(capture)
    run_dir = capture.path.parent
    for path in [*run_dir.glob(f"{name}.json"), *run_dir.glob(f"{name}.r*.json")]:
        for leftover in (path, path.with_suffix(".ledger")):
            leftover.unlink(missing_ok=True)
    for endpoint in capture.spec.outputs:  # its ipc socket files (ZeroMQ leaves them)
        socket_file = Path(endpoint.removeprefix("ipc://"))
        if endpoint.startswith("ipc://") and socket_file.parent == run_dir:
            socket_file.unlink(missing_ok=True)
    gone = set(capture.spec.outputs)
    for stage in sup.stages:
        spec = stage.spec
        if spec.kind is not StageKind.CAPTURE and sid in spec.source_ids:
            stage.spec = replace(spec, source_ids=tuple(s for s in spec.source_ids if s != sid),
                                 inputs=tuple(i for i in spec.inputs if i not in gone))
    for dropped in sup.book.release(sid):
        sup.failed_sources.pop(dropped, None)
    logger.info("source %s released (%s exited; its figures kept)", sid, name)
