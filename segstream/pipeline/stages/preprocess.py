"""Preprocess stage: frame -> model input, as the model's metadata prescribes.

The output part is named ``input``: a normalised (1, 3, H, W) float32 tensor, or, for
engines that normalise on their GPU, the BGR uint8 (H, W, 3) frame resized to the input.

Settings: ``spec.PreprocessSettings``.
"""

from __future__ import annotations

import logging

import numpy as np

from segstream.engines.preprocess import Preprocessor
from segstream.pipeline.expect import IMAGE, part_problem
from segstream.pipeline.loop import CARRIED, open_writer, run_middle_stage
from segstream.pipeline.runtime import StageRuntime
from segstream.pipeline.spec import PreprocessSettings, StageSpec
from segstream.pipeline.wire.messages import Kind, Message, derive
from segstream.pipeline.wire.payloads import PayloadReader

logger = logging.getLogger(__name__)


class PreprocessProcessor:
    """Reads the frame, writes the tensor, carries the frame reference on for render."""

    finishes_frames = False

    def __init__(self, spec: StageSpec, runtime: StageRuntime) -> None:
        self.spec = spec
        self.runtime = runtime
        settings = spec.settings
        assert isinstance(settings, PreprocessSettings)  # StageSpec checks the kind's settings type
        meta = settings.metadata
        self.preprocess = Preprocessor(meta)
        self._images = settings.images
        self.frames = PayloadReader(spec.reads.get("frame"))
        self.writer = open_writer(spec)

    def process(self, message: Message) -> Message | None:
        problem = part_problem(message, "frame", IMAGE)
        if problem:
            self.frames.release(message, "frame")
            self.runtime.refuse(message.header.source, "bad_input", problem)
            return None
        # Read in place (no copy of the frame) and write the model input straight into
        # this stage's ring slot (no copy of the tensor).
        frame = self.frames.view(message, "frame")
        if frame is None:
            self.frames.release(message, "frame")
            self.runtime.stats.skipped.add("overwritten", message.header.source)
            return None
        out = derive(message, Kind.TENSOR)
        self.frames.forward(message, out, *CARRIED)
        meta = self.preprocess.metadata

        def fill(slot: np.ndarray) -> None:
            if self._images:
                np.copyto(slot, self.preprocess.resize(frame))
            else:
                self.preprocess(frame, slot)

        shape = (meta.input_height, meta.input_width, 3) if self._images else (1, 3, meta.input_height,
                                                                              meta.input_width)
        try:
            added = self.writer.add_with(out, "input", shape, np.uint8 if self._images else np.float32, fill,
                                         lambda: self.runtime.stopping)
            torn = not self.frames.intact(message, "frame")  # live flow: capture may have reused the slot
        finally:
            self.frames.release(message, "frame")
        if torn:  # the tensor came from a torn frame: take it back (nobody will release it)
            self.writer.withdraw(out, "input")
            self.runtime.stats.skipped.add("overwritten", message.header.source)
            return None
        return out if added else None

    def blocked_ns(self) -> int:
        return self.writer.blocked_ns

    def discard(self, message: Message) -> None:
        self.frames.release(message, "frame")

    def end_of_stream(self, message: Message) -> None:
        self.frames.forget_source(message.header.source)  # its capture's ring

    def close(self) -> None:
        self.frames.close()
        self.writer.close(unlink=True)


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Run the preprocess stage until end of stream or stop."""
    return run_middle_stage(spec, runtime, PreprocessProcessor(spec, runtime))
