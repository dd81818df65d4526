"""The stats.json document of a run, assembled from its stages' reports.

Every frame that entered is accounted for: published, or skipped with a reason
(``frames_unaccounted`` is what is neither, 0 for a run that ended on its own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from segstream.engines.resolve import InferenceModel
from segstream.evaluation.metrics import ConfusionAccumulator
from segstream.evaluation.summary import eval_summary
from segstream.pipeline.control import PipelineFigures
from segstream.pipeline.spec import CaptureSettings
from segstream.pipeline.telemetry.stats import RELEASED_CAPTURES, StageReport, summarize
from segstream.pipeline.telemetry.timing import stage_latency
from segstream.pipeline.wire.choices import FlowPolicy


@dataclass(frozen=True)
class RunFacts:
    """What the supervisor knows of a run besides its stages' reports.

    Attributes:
        run_id: the run's id.
        started_wall: when it started (Unix time).
        duration_s: how long it ran so far.
        policy: its flow policy.
        model: the model and backend it runs.
        sources: the source URIs.
        captures: each capture stage's name and settings.
        failed_sources: source id -> why it failed.
        events_refused: control events refused on receipt.
        restarts: restarts by stage (stages that never died left out).
        final: the run is over (frames still in flight are not counted as lost before).
        peers_refused: tcp peers the supervisor's own sockets refused (no key, wrong key).
        released: the capture stages of sources that ended and were released (``--api``):
            their figures are final and metrics no longer export them.
    """

    run_id: str
    started_wall: float
    duration_s: float
    policy: FlowPolicy
    model: InferenceModel
    sources: tuple[str, ...]
    captures: tuple[tuple[str, CaptureSettings], ...]
    failed_sources: dict[str, str]
    events_refused: int
    restarts: dict[str, int] = field(default_factory=dict)
    final: bool = True
    peers_refused: int = 0
    released: frozenset[str] = frozenset()


def assemble_stats(facts: RunFacts, reports: dict[str, StageReport], stopped: bool, error: str) -> dict[str, Any]:
    """The stats.json document of a run from its stages' latest reports."""
    captures = [reports[name] for name, _ in facts.captures if name in reports]
    if RELEASED_CAPTURES in reports:  # the captures of sources released long ago, added up
        captures.append(reports[RELEASED_CAPTURES])
    publish = reports.get("publish")
    render = reports.get("render")
    frames_in = sum(r.frames_in for r in captures)
    published = publish.frames_out if publish else 0
    by_stage = {name: dict(r.skipped) for name, r in reports.items() if r.skipped}
    if publish is not None and publish.handed_over_skipped and render is not None:
        # published, but render never got them: counted with what render left undrawn
        drawn = by_stage.setdefault("render", {})
        for reason, count in publish.handed_over_skipped.items():
            drawn[reason] = drawn.get(reason, 0) + count
    before_publish = sum(r.skipped_total for name, r in reports.items() if name != "render")
    lost = frames_in - published - before_publish
    if facts.final and not stopped and facts.restarts and lost > 0:
        # Frames that were on their way through a stage process when it died: neither
        # published nor skipped by anyone alive. Counted where the restarts were. (A run
        # that was stopped also has frames in flight at the stop: those stay unaccounted.)
        stage = max(facts.restarts, key=lambda name: facts.restarts[name])
        by_stage.setdefault(stage, {})
        by_stage[stage]["stage-restart"] = by_stage[stage].get("stage-restart", 0) + lost
        before_publish += lost
    per_source = _per_source(facts, reports, publish)
    stats: dict[str, Any] = {
        "version": 1,
        "run_id": facts.run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(facts.started_wall)),
        "duration_s": round(facts.duration_s, 3),
        "policy": facts.policy.value,
        "model": facts.model.metadata.name,
        "model_path": str(facts.model.path),
        "backend": {"name": facts.model.choice.backend, "device": facts.model.choice.device,
                    "providers": list(facts.model.choice.providers), "reason": facts.model.choice.reason},
        "sources": list(facts.sources),
        "frames_in": frames_in,
        "frames_published": published,
        "frames_rendered": render.frames_out if render else None,
        "frames_skipped": {"total": before_publish, "by_stage": by_stage},
        "frames_unaccounted": frames_in - published - before_publish,
        "control_events_refused": facts.events_refused,
        "restarts": dict(facts.restarts),
        "peers_refused": facts.peers_refused + sum(int(r.extra.get("peers_refused", 0)) for r in reports.values()),
        "per_source": per_source,
        "released_stages": sorted(facts.released),
        "throughput_fps": publish.throughput_fps if publish else 0.0,
        "latency_ms": {
            "capture_to_publish": publish.latency_ms if publish else {},
            "capture_to_render": render.latency_ms if render else {},
            "recent": publish.latency_recent_ms if publish else {},
            "breakdown": publish.breakdown_ms if publish else {},
            "breakdown_to_render": render.breakdown_ms if render else {},
            "by_source": {sid: series for sid, series in (publish.latency_by_source_ms if publish else {}).items()
                          if sid in per_source},
        },
        "stages": {name: r.to_json() for name, r in reports.items()},
        "stopped": stopped,
        "error": error,
    }
    evaluation = _eval(facts, publish)
    if evaluation is not None:
        stats["eval"] = evaluation
    warnings = [w for w in (facts.model.metadata.untrained_warning,) if w]
    warnings += [f"sink {sink} of {name} stopped: {figures['error']}" for name, report in reports.items()
                 for sink, figures in report.sinks.items() if figures.get("error")]
    if warnings:
        stats["warnings"] = warnings
    return stats

def _per_source(facts: RunFacts, reports: dict[str, StageReport], publish: StageReport | None) -> dict[str, Any]:
    published = publish.per_source if publish else {}
    latency = publish.latency_by_source_ms if publish else {}
    throughput = publish.throughput_by_source_fps if publish else {}
    out = {}
    for name, settings in facts.captures:
        sid = settings.source_id
        capture = reports.get(name) or StageReport(name)
        out[sid] = {
            "uri": settings.source,
            "frames_in": capture.frames_in,
            "frames_published": published.get(sid, 0),
            # every frame that entered is published or skipped: for a run that ended on
            # its own this is the source's skipped count (reasons: frames_skipped.by_stage)
            "frames_not_published": capture.frames_in - published.get(sid, 0),
            "skipped_at_capture": dict(capture.skipped),
            "skipped_by_stage": {name: r.skipped_by_source[sid] for name, r in reports.items()
                                 if sid in r.skipped_by_source},
            "reconnects": capture.reconnects,
            "stalls": int(capture.extra.get("stalls", 0)),
            "frames_missing": int(capture.extra.get("frames_missing", 0)),  # a video file cut short
            "latency_ms": {k: v for k, v in latency.get(sid, summarize([])).items() if k != "histogram"},
            "throughput_fps": throughput.get(sid, 0.0),
            "error": facts.failed_sources.get(sid, ""),
            "released": name in facts.released,
        }
    return out


def _eval(facts: RunFacts, publish: StageReport | None) -> dict[str, Any] | None:
    figures = publish.sinks.get("eval", {}) if publish else {}
    per_source = figures.get("sources") or {}
    if figures.get("instances"):  # an instance model: COCO AP, overall ("all") and per source
        return {"instances": figures["instances"], "frames_without_gt": figures.get("frames_without_gt", 0)}
    if not per_source:
        # evaluation asked for, and no frame came with ground truth: said, not left out
        return {"frames": 0, "frames_without_gt": figures["frames_without_gt"]} if figures else None
    summary = eval_summary({sid: ConfusionAccumulator.from_json(acc) for sid, acc in per_source.items()},
                           facts.model.metadata.class_names)
    if figures.get("frames_without_gt"):
        summary["frames_without_gt"] = figures["frames_without_gt"]
    return summary


def fallback_stats(run_id: str, duration_s: float, stopped: bool, error: str) -> dict[str, Any]:
    """The least stats.json of a run whose figures could not be assembled."""
    return {"version": 1, "run_id": run_id, "duration_s": round(duration_s, 3), "stopped": stopped, "error": error,
            "frames_in": 0, "frames_published": 0, "frames_skipped": {"total": 0, "by_stage": {}}, "stages": {}}


def pipeline_figures(stats: dict[str, Any]) -> PipelineFigures:
    """Pipeline-wide figures for stages that show them (the live view), from the same
    stats as stats.json."""
    return PipelineFigures(
        frames_in=stats["frames_in"],
        skipped=stats["frames_skipped"]["total"],
        stages={name: float(parts["stage"]["median"]) for name, parts in stage_latency(stats).items()},
        miou=stats["eval"].get("miou") if "eval" in stats else None,
    )
