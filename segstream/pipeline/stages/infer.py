"""Inference stage: model input -> label map at model resolution.

Settings: ``model`` (ONNX file, engine file or zoo name), ``backend``, ``engine`` (the
backend's keyword arguments), ``confidence`` (pass the model's confidence output on).
The input part is a float tensor, or a uint8 image for engines that take images.
"""

from __future__ import annotations

import logging

import numpy as np

from segstream.engines.base import labels_from_outputs, load_engine, top_labels
from segstream.engines.metadata import OutputKind
from segstream.pipeline.messages import Kind, Message, derive
from segstream.pipeline.payloads import PayloadReader
from segstream.pipeline.policies import FlowPolicy
from segstream.pipeline.stage import CARRIED, StageRuntime, StageSpec, close_writer, open_writer, run_middle_stage

logger = logging.getLogger(__name__)


class InferProcessor:
    """Runs the engine on each tensor and writes the label map."""

    def __init__(self, spec: StageSpec, runtime: StageRuntime) -> None:
        self.spec = spec
        self.runtime = runtime
        settings = spec.settings
        self.engine = load_engine(settings["model"], settings["backend"], **settings.get("engine", {}))
        self.inputs = PayloadReader(spec.reader_ids.get("input"), spec.reader_in_order)
        self.writer = open_writer(spec)
        runtime.stats.extra["model"] = self.engine.metadata.name
        self._input: np.ndarray | None = None  # reused input buffer
        self._confidence = self.engine.metadata.output(OutputKind.CONFIDENCE) if settings.get("confidence") else None
        # Live flow: capture overwrites its ring at the camera's rate, and render needs the
        # frame a good while later (after inference). Copy the frames that do get
        # inferred, at inference rate, into this stage's own ring.
        self._frames = PayloadReader() if spec.policy is FlowPolicy.LIVE else None

    def process(self, message: Message) -> Message | None:
        model_input = self._input = self.inputs.take(message, "input", self._input)
        if model_input is None:
            self.runtime.stats.skipped.add("overwritten", message.header.source)
            return None
        frame = self._pinned_frame(message)
        if model_input.dtype == np.uint8:
            outputs = self.engine.infer_image(model_input)
        else:
            outputs = self.engine.infer(model_input)
        meta = self.engine.metadata
        labels = labels_from_outputs(outputs, meta) if meta.segments else None
        out = derive(message, Kind.RESULT)
        classification = top_labels(outputs, meta)
        if classification is not None:  # image-level labels travel in the header
            out.header.meta["classification"] = classification
        if frame is None:
            self.inputs.forward(message, out, *CARRIED)
        else:
            self.inputs.forward(message, out, *(name for name in CARRIED if name != "frame"))
            if not self.writer.add(out, "frame", frame, lambda: self.runtime.stopping):
                return None
        if labels is not None and not self.writer.add(out, "labels", labels, lambda: self.runtime.stopping):
            return None
        if self._confidence is not None:
            confidence = outputs[self._confidence.name][0]
            if not self.writer.add(out, "confidence", confidence, lambda: self.runtime.stopping):
                return None
        return out

    def _pinned_frame(self, message: Message) -> np.ndarray | None:
        """In live flow, a copy of a frame held by reference (None: forward as it is)."""
        part = message.header.part("frame")
        if self._frames is None or part is None or part.ref is None:
            return None
        return self._frames.get(message, "frame")

    def blocked_ns(self) -> int:
        return self.writer.blocked_ns

    def discard(self, message: Message) -> None:
        self.inputs.release(message, "input")

    def end_of_stream(self, message: Message) -> None:
        pass

    def close(self) -> None:
        self.engine.close()
        self.inputs.close()
        if self._frames is not None:
            self._frames.close()
        close_writer(self.writer, self.runtime)


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Run the inference stage until end of stream or stop."""
    return run_middle_stage(spec, runtime, InferProcessor(spec, runtime))
