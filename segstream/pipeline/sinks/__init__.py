"""Outputs: the ``Sink`` protocol and the table of sinks, selected by URI.

Every output of a run is a sink, driven by the stage that has what it needs: publish
drives the sinks of masks and results, render those of overlay images. A stage only
calls ``SinkSet.write`` per frame; it knows none of its outputs.

================== ======= =====================================================
URI                stage   what it writes
================== ======= =====================================================
masks:DIR          publish ``DIR[/<source>]/masks/<frame>.png`` (label ids)
classifications:DIR publish ``DIR[/<source>]/classifications.jsonl``
timings:DIR        publish ``DIR[/<source>]/frames.jsonl`` (where each frame's time went)
cityscapes-results:DIR publish label ids for the official Cityscapes evaluator
eval:              publish confusion matrices against the frames' ground truth
lossless:ENDPOINT  publish a PUSH channel for one consumer that must get every mask
video:DIR          render  ``DIR[/<source>]/overlay.mp4``
view:HOST:PORT     render  the live view in a browser
rtsp://HOST:PORT/PATH render H.264 to an RTSP server
window:            render  an OpenCV window
redis://H:P/KEY    publish Redis Streams (entry point ``segstream.sinks``, ``sinks.broker``)
kafka://H:P/TOPIC  publish Kafka, record key = source id (idem)
mqtt://H:P/TOPIC   publish MQTT QoS 1, ``{source}`` expands (idem)
================== ======= =====================================================

``--record DIR`` is the shorthand for ``masks:DIR``, ``classifications:DIR``,
``timings:DIR`` and (when render runs) ``video:DIR``; ``--view``, ``--rtsp-out``,
``--display``, ``--eval``, ``--cityscapes-results`` and ``--publish-lossless`` are
shorthands too. A sink from another package is one module and one entry point in the
group ``segstream.sinks`` (name = scheme, value = ``module:Class``); see
``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Protocol

import numpy as np

from segstream.errors import ConfigError, OutputError
from segstream.log_throttle import LogThrottle
from segstream.pipeline.telemetry.stats import SkipCounter
from segstream.pipeline.wire.messages import Header, Message

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "segstream.sinks"


class SinkStage(str, Enum):
    """The stage that drives a sink."""

    PUBLISH = "publish"  # masks and results
    RENDER = "render"  # overlay images


@dataclass
class SinkResult:
    """What a sink gets per frame.

    Attributes:
        header: the frame's header (source, index, name, meta with ``fps`` and, for
            models that classify, ``classification``).
        mask: the label map at frame resolution, or None (a pure classifier).
        gt: the frame's ground truth (dataset replays), or None.
        public: the message consumers get (publish's sinks).
        timing: where the frame's time went (publish's sinks; ``telemetry.timing``).
        image: the overlay (render's sinks).
        counts: pixels per class id of ``mask`` (render's sinks).
        fps: frames per second rendered for this source (render's sinks).
        instance_ids: an instance model's (H, W) uint16 instance ids at the mask's
            resolution (the detections are in ``header.meta["instances"]``), or None.
        gt_instances: the frame's instance ground truth (uint16, Cityscapes' ids), or None.
    """

    header: Header
    mask: np.ndarray | None = None
    gt: np.ndarray | None = None
    public: Message | None = None
    timing: dict[str, Any] | None = None
    image: np.ndarray | None = None
    counts: np.ndarray | None = None
    fps: float = 0.0
    instance_ids: np.ndarray | None = None
    gt_instances: np.ndarray | None = None


@dataclass(frozen=True)
class SinkContext:
    """What a sink may use besides its target.

    Attributes:
        per_source_dirs: outputs go under ``<folder>/<source id>/`` (several sources).
        sources: how many sources the run has.
        class_names: the model's class names (palette order).
        palette: the model's colours, BGR.
        ignore_index: the label of unclassified pixels.
        zmq_context: the stage's ZeroMQ context (for sinks that bind sockets).
        stopping: True once the stage is asked to stop (ends blocking sends).
        skipped: the stage's skip counter (a sink that drops a frame counts it here).
        live_figures: pipeline-wide figures for display (the live view).
        model: the model's name.
        publish_keys: CURVE keys for public tcp:// endpoints a sink binds (``--publish-keys``).
        guard: the stage's ``security.PeerGuard`` (counts the peers it refuses).
        lossless: the run's flow is lossless (a sink applies backpressure instead of
            dropping).
        sink_maxlen: how many entries a broker stream keeps (``--sink-maxlen``).
        sink_budget_mb: the memory a broker stream may take at ``sink_maxlen`` entries
            before the sink warns (``--sink-budget-mb``).
        wait_s: lossless flow: how long a sink that cannot write holds the stage back
            before it stops (``--sink-wait-s``).
    """

    per_source_dirs: bool = False
    sources: int = 1
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = 255
    zmq_context: Any = None
    stopping: Callable[[], bool] = lambda: False
    skipped: SkipCounter = field(default_factory=SkipCounter)
    live_figures: Callable[[], dict[str, Any]] = dict
    model: str = ""
    publish_keys: Any = None
    guard: Any = None
    lossless: bool = False
    sink_maxlen: int = 10_000
    sink_budget_mb: int = 1024
    wait_s: float = 30.0


class Sink(Protocol):
    """One output. A sink is opened on the first result it gets, written once per frame,
    told when a source ends, and closed at the end of the run; its figures land in
    ``stats.json`` under the driving stage's ``sinks``.

    Raising ``OutputError`` from any method stops that sink alone (logged and recorded
    in its figures); the run goes on.
    """

    def open(self, first: SinkResult) -> None:
        """Prepare for the first result (create folders, bind sockets...)."""
        ...

    def write(self, result: SinkResult) -> None:
        """Write one frame's result."""
        ...

    def end_source(self, final: SinkResult) -> None:
        """A source ended (``final.header`` is its end of stream, ``final.public`` the one
        consumers get): close what is per source (a video file)."""
        ...

    def close(self) -> None:
        """Release everything; called once, also after a stop."""
        ...

    def figures(self) -> dict[str, Any]:
        """The sink's own figures (JSON-ready)."""
        ...


class BaseSink:
    """Default no-op ``open``, ``end_source``, ``close`` and ``figures`` (subclass and write ``write``)."""

    def open(self, first: SinkResult) -> None:
        pass

    def write(self, result: SinkResult) -> None:
        raise NotImplementedError

    def end_source(self, final: SinkResult) -> None:
        pass

    def close(self) -> None:
        pass

    def figures(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class SinkKind:
    """One row of the sink table.

    Attributes:
        scheme: the URI scheme (``masks`` in ``masks:DIR``).
        stage: the stage that drives it.
        factory: ``module:Class``, imported when the sink is opened; called as
            ``Class(target, context)`` with the URI after ``scheme:`` (the whole URI for
            ``rtsp://``).
        usage: the URI form, for messages.
        needs_target: the URI must name something after the scheme.
    """

    scheme: str
    stage: SinkStage
    factory: str
    usage: str
    needs_target: bool = True


_M = "segstream.pipeline.sinks"
SINKS: dict[str, SinkKind] = {
    "masks": SinkKind("masks", SinkStage.PUBLISH, f"{_M}.files:MaskFiles", "masks:DIR"),
    "classifications": SinkKind("classifications", SinkStage.PUBLISH, f"{_M}.files:ClassificationLog",
                                "classifications:DIR"),
    "timings": SinkKind("timings", SinkStage.PUBLISH, f"{_M}.files:TimingLog", "timings:DIR"),
    "cityscapes-results": SinkKind("cityscapes-results", SinkStage.PUBLISH,
                                   f"{_M}.cityscapes_results:CityscapesResults", "cityscapes-results:DIR"),
    "eval": SinkKind("eval", SinkStage.PUBLISH, f"{_M}.evaluation:Evaluation", "eval:", needs_target=False),
    "lossless": SinkKind("lossless", SinkStage.PUBLISH, f"{_M}.lossless:LosslessChannel",
                         "lossless:tcp://HOST:PORT"),
    "video": SinkKind("video", SinkStage.RENDER, f"{_M}.video:VideoFiles", "video:DIR"),
    "view": SinkKind("view", SinkStage.RENDER, f"{_M}.view:LiveView", "view:HOST:PORT"),
    "rtsp": SinkKind("rtsp", SinkStage.RENDER, f"{_M}.rtsp:RtspOut", "rtsp://HOST:PORT/PATH"),
    "window": SinkKind("window", SinkStage.RENDER, f"{_M}.window:Window", "window:", needs_target=False),
}


def _plugin(scheme: str) -> SinkKind | None:
    """A sink another package declares (entry point group ``segstream.sinks``)."""
    for entry in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == scheme:
            stage = SinkStage(getattr(entry.load(), "stage", SinkStage.PUBLISH.value))
            return SinkKind(scheme, stage, entry.value, f"{scheme}:... (from {entry.value})", needs_target=False)
    return None


def parse_sink(uri: str) -> tuple[SinkKind, str]:
    """The table row of ``uri`` and its target (what follows ``scheme:``).

    Raises:
        ConfigError: an unknown scheme or a missing target; lists the known sinks.
    """
    scheme, sep, target = uri.partition(":")
    if scheme == "rtsp" and target.startswith("//"):
        target = uri
    kind = SINKS.get(scheme) if sep else None
    kind = kind or (_plugin(scheme) if sep and scheme else None)
    if kind is None:
        known = ", ".join(k.usage for k in SINKS.values())
        raise ConfigError(f"unknown sink {uri!r}; expected one of: {known}")
    if kind.needs_target and not target:
        raise ConfigError(f"sink {uri!r} names no target; expected {kind.usage}")
    return kind, target


def _load_factory(path: str) -> Callable[[str, SinkContext], Sink]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class SinkSet:
    """The sinks one stage drives: each opened on its first result; one that fails is
    stopped alone, logged, and its error kept in its figures.

    A write that fails on the system's side (``OSError``: disk full, I/O error) is the
    sink's trouble, never the stage's: in live flow the frame is dropped for that sink and
    counted (``failed``, ``last_error``), and the next frame tries again; in lossless flow
    the write is retried, holding the stage back, for at most ``context.wait_s``; then the
    sink stops with an error that names it and says how long it waited.

    Args:
        uris: the sink URIs of this stage.
        context: what the sinks may use.
    """

    def __init__(self, uris: tuple[str, ...], context: SinkContext) -> None:
        self._sinks: dict[str, Sink] = {}
        self._opened: set[str] = set()
        self._errors: dict[str, str] = {}
        self._context = context
        self._failed: Counter[str] = Counter()  # writes a sink could not make (live flow: dropped)
        self._last_error: dict[str, str] = {}
        self._throttle = LogThrottle()
        for uri in uris:
            kind, target = parse_sink(uri)
            name = kind.scheme if kind.scheme not in self._sinks else f"{kind.scheme}-{len(self._sinks)}"
            self._sinks[name] = _load_factory(kind.factory)(target, context)

    def __bool__(self) -> bool:
        return bool(self._sinks)

    def _guarded(self, name: str, action: Callable[[Sink], None]) -> None:
        waited_from = None
        while True:
            try:
                action(self._sinks[name])
                return
            except OutputError as exc:
                self._stop(name, str(exc))
                return
            except OSError as exc:  # the system's side: a full disk, an I/O error
                problem = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            self._failed[name] += 1
            self._last_error[name] = problem
            if not self._context.lossless:
                if self._throttle.allow(name):
                    logger.warning("sink %s could not write (%s); the frame is dropped for it and counted (live "
                                   "flow; logged at most every %.0f s)", name, problem, self._throttle.every_s)
                return
            now = time.monotonic()
            if waited_from is None:
                waited_from = now
                logger.warning("sink %s could not write (%s); retrying for up to %.0f s (lossless flow: the "
                               "pipeline waits)", name, problem, self._context.wait_s)
            if now - waited_from >= self._context.wait_s or self._context.stopping():
                self._stop(name, f"{problem} (waited {now - waited_from:.0f} s, --sink-wait-s "
                                 f"{self._context.wait_s:g}); free the space or fix the output and run again")
                return
            time.sleep(min(0.5, self._context.wait_s / 4))

    def _stop(self, name: str, error: str) -> None:
        logger.error("sink %s failed: %s; it stops here, the run goes on", name, error)
        self._errors[name] = error
        self._close_one(name)

    def write(self, result: SinkResult) -> None:
        """Hand one frame's result to every working sink (opening it on its first)."""
        for name in list(self._sinks):
            if name in self._errors:
                continue
            if name not in self._opened:
                self._opened.add(name)
                self._guarded(name, lambda sink: sink.open(result))
                if name in self._errors:
                    continue
            self._guarded(name, lambda sink: sink.write(result))

    def end_source(self, final: SinkResult) -> None:
        """Tell every working sink that a source ended (also one that got no frame)."""
        for name in list(self._sinks):
            if name not in self._errors:
                self._guarded(name, lambda sink: sink.end_source(final))

    def _close_one(self, name: str) -> None:
        try:
            self._sinks[name].close()
        except (OutputError, OSError) as exc:
            logger.error("sink %s failed to close: %s", name, exc)
            self._errors.setdefault(name, str(exc))

    def close(self) -> None:
        """Close every sink (once)."""
        for name in self._sinks:
            if name not in self._errors:
                self._close_one(name)

    def figures(self) -> dict[str, dict[str, Any]]:
        """Each sink's figures, with ``error`` for one that failed."""
        out = {}
        for name, sink in self._sinks.items():
            figures = dict(sink.figures())
            if self._failed[name]:
                figures.update(failed=self._failed[name], last_error=self._last_error[name])
            if name in self._errors:
                figures["error"] = self._errors[name]
            out[name] = figures
        return out
