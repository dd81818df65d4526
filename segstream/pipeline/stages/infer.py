"""Inference stage: model input -> label map at model resolution.

Settings: ``spec.InferSettings``.
The input part is a float tensor, or a uint8 image for engines that take images. In live
flow (``InferSettings.preprocess``) there is no preprocess stage: the input is the frame
itself, preprocessed here, so only the frames this worker infers are preprocessed.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from segstream.engines.backends.base import labels_from_outputs, load_engine, top_labels
from segstream.engines.instance_results import instance_thresholds, instances_from_outputs
from segstream.engines.metadata import OutputKind
from segstream.engines.preprocess import Preprocessor
from segstream.errors import BackendUnavailable
from segstream.log_throttle import LogThrottle
from segstream.pipeline.batching import BatchQueue
from segstream.pipeline.expect import IMAGE, TENSOR, part_problem
from segstream.pipeline.loop import CARRIED, open_writer, run_middle_stage
from segstream.pipeline.runtime import StageRuntime
from segstream.pipeline.sources.streams import Backoff
from segstream.pipeline.spec import InferSettings, StageSpec
from segstream.pipeline.wire.checks import source_rate
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.messages import Kind, Message, derive
from segstream.pipeline.wire.payloads import PayloadReader

logger = logging.getLogger(__name__)

ENGINE_WINDOW = 500  # engine calls behind the engine_ms_p50 figure

UNAVAILABLE = "backend-unavailable"
PIN_MARGIN = 4  # frame times of this stage a frame must have left in capture's ring to go unpinned


class InferProcessor:
    """Runs the engine on each tensor and writes the label map."""

    finishes_frames = False

    def __init__(self, spec: StageSpec, runtime: StageRuntime) -> None:
        self.spec = spec
        self.runtime = runtime
        settings = spec.settings
        assert isinstance(settings, InferSettings)  # StageSpec checks the kind's settings type
        self.engine = load_engine(settings.model, settings.backend, **settings.engine)
        self.inputs = PayloadReader(spec.reads.get("input"), spec.reader_in_order)
        self.writer = open_writer(spec)
        runtime.stats.extra["model"] = self.engine.metadata.name
        meta = self.engine.metadata
        self._takes_images = self.engine.takes_images
        self._input_shape = ((meta.input_height, meta.input_width, 3) if self._takes_images
                             else (1, 3, meta.input_height, meta.input_width))
        self._confidence = self.engine.metadata.output(OutputKind.CONFIDENCE) if settings.confidence else None
        # instance models: detections above these, their masks painted at frame resolution
        self._instances = instance_thresholds(meta) if meta.output(OutputKind.INSTANCE_COUNT) else None
        # Live flow: capture overwrites its ring at the camera's rate, and render needs the
        # frame a good while later (after inference). Copy the frames that do get
        # inferred, at inference rate, into this stage's own ring.
        self._live = spec.policy is FlowPolicy.LIVE
        self._frames = PayloadReader() if self._live else None
        self._preprocess = Preprocessor(meta) if settings.preprocess else None
        self._tensor: np.ndarray | None = None  # the model input this worker makes (settings.preprocess)
        self._last_ns = self._cycle_ns = 0  # when the last frame came, and the time between frames, smoothed
        limit = int(getattr(self.engine, "max_batch", 1))
        if settings.batch > limit:
            logger.warning("%s: --batch %d, but this model takes at most %d frame(s) per call (a fixed batch "
                           "axis: re-export it with segstream export for a dynamic one); batching %d",
                           spec.name, settings.batch, limit, limit)
        self.batch_size = max(1, min(settings.batch, limit))
        timeout = None if settings.batch_timeout_ms is None else int(settings.batch_timeout_ms * 1e6)
        # frames of different sources wait here for one engine call (run_middle_stage)
        self.batch = BatchQueue(self.batch_size, timeout, self._live) if self.batch_size > 1 else None
        runtime.stats.extra["batch"] = self.batch_size
        self._backoff = Backoff(0.1, 2.0)  # between tries of a backend that cannot be reached
        self._refusals = LogThrottle()
        self._calls = self._inferred = 0
        # the engine call alone, per frame (what bare inference is compared with; the
        # stage's own time also has preprocessing in live flow, and the result's making)
        self._engine_ms: deque[float] = deque(maxlen=ENGINE_WINDOW)
        runtime.before_report(self._note_engine_time)

    def _note_engine_time(self) -> None:
        if self._engine_ms:
            self.runtime.stats.extra["engine_ms_p50"] = round(float(np.median(self._engine_ms)), 3)

    def process(self, message: Message) -> Message | None:
        return self.process_batch([message])[0]

    def process_batch(self, messages: list[Message]) -> list[Message | None]:
        """Infer ``messages`` in one engine call (frames of different sources, ``--batch``);
        the result of each, or None where a frame was refused or skipped (counted)."""
        now = time.monotonic_ns()
        if self._last_ns:  # this stage's time from one call to the next, smoothed
            cycle = now - self._last_ns
            self._cycle_ns = cycle if not self._cycle_ns else int(0.8 * self._cycle_ns + 0.2 * cycle)
        self._last_ns = now
        results: list[Message | None] = [None] * len(messages)
        taken: list[tuple[int, Message, Message, bool]] = []  # (position, message, result, pinned)
        inputs: list[np.ndarray] = []
        for position, message in enumerate(messages):
            problem = self._problem(message)
            if problem:
                self.inputs.release(message, "input")
                self.runtime.refuse(message.header.source, "bad_input", problem)
                continue
            out = derive(message, Kind.RESULT)
            pinned = self._pin_frame(message, out)  # before inference: the camera's ring moves on meanwhile
            if pinned is None:
                self.inputs.release(message, "input")
                continue
            model_input = self._input_of(message, len(inputs), len(messages))
            if model_input is None:
                self._drop(message, out)
                self.runtime.stats.skipped.add("overwritten", message.header.source)
                continue
            taken.append((position, message, out, pinned))
            inputs.append(model_input)
        if not taken:
            return results
        stacked = self._stacked(inputs)
        engine_ns = time.monotonic_ns()
        outputs = self._run_available(stacked)
        self._engine_ms.append((time.monotonic_ns() - engine_ns) / 1e6 / len(taken))
        if outputs is None:  # live flow, backend unreachable: these frames are skipped (counted)
            for _, message, out, _ in taken:
                self._drop(message, out)
                self.runtime.stats.skipped.add(UNAVAILABLE, message.header.source)
            return results
        self._calls += 1  # how full batches are: engine calls, and frames in them
        self._inferred += len(taken)
        extra = self.runtime.stats.extra
        extra["engine_calls"], extra["frames_per_call"] = self._calls, round(self._inferred / self._calls, 3)
        for k, (position, message, out, pinned) in enumerate(taken):
            # The engine read the input where preprocess wrote it (no copy); in live flow
            # the slot may have been reused meanwhile: the result is kept only if it stayed.
            if self._preprocess is None and not self.inputs.intact(message, "input"):
                self._drop(message, out)
                self.runtime.stats.skipped.add("overwritten", message.header.source)
                continue
            self.inputs.release(message, "input")
            own = outputs if len(taken) == 1 else {name: value[k:k + 1] for name, value in outputs.items()}
            results[position] = self._result(message, out, pinned, own)
        return results

    def _drop(self, message: Message, out: Message) -> None:
        """A frame skipped after its result was begun: release its input and take back
        the copy of its frame this stage may have pinned in its own ring."""
        self.inputs.release(message, "input")
        self.writer.withdraw(out, "frame")

    def _problem(self, message: Message) -> str:
        """What is wrong with the frame's input part ("" if nothing)."""
        if self._preprocess is not None:
            return part_problem(message, "frame", IMAGE)
        problem = part_problem(message, "input", IMAGE if self._takes_images else TENSOR)
        part = message.header.part("input")
        if not problem and part is not None and part.shape != self._input_shape:
            problem = f"part 'input' has shape {part.shape}; this model takes {self._input_shape}"
        return problem

    def _input_of(self, message: Message, row: int, rows: int) -> np.ndarray | None:
        """The model input of one frame: where preprocess wrote it, or (live flow) made
        here from the frame where capture left it, into row ``row`` of the batch buffer.
        None if a shared-memory slot was reused first."""
        if self._preprocess is None:
            return self.inputs.view(message, "input")
        assert self._frames is not None
        frame = self._frames.view(message, "frame")
        model_input = None if frame is None else self._model_input(frame, row, rows)
        if model_input is None or not self._frames.intact(message, "frame"):  # capture reused the slot meanwhile
            return None
        return model_input

    def _stacked(self, inputs: list[np.ndarray]) -> np.ndarray:
        """One engine input from the frames' inputs: one alone as it is (no copy); rows the
        worker made in its batch buffer as they lie; others copied together."""
        if len(inputs) == 1:
            return inputs[0]
        if self._tensor is not None and all(i.base is self._tensor for i in inputs):
            return self._tensor[: len(inputs)]
        if self._takes_images:
            return np.stack(inputs)
        return np.concatenate(inputs)

    def _run_available(self, model_input: np.ndarray) -> dict[str, np.ndarray] | None:
        """The engine's outputs; while a remote backend (Triton) cannot be reached, retried
        with backoff: in lossless flow until it answers (the frames are held), in live flow
        None at once (the frames are skipped; newer ones try again after the backoff)."""
        while True:
            try:
                outputs = self._run_engine(model_input)
            except BackendUnavailable as exc:
                wait = self._backoff.next()
                if self._refusals.allow(UNAVAILABLE):
                    logger.warning("%s: %s; retrying in %.2f s (%s)", self.spec.name, exc, wait,
                                   "frames skipped meanwhile: live flow" if self._live else
                                   "frames held: lossless flow")
                time.sleep(wait)
                if self._live or self.runtime.stopping:
                    return None
                continue
            self._backoff.reset()
            return outputs

    def _run_engine(self, model_input: np.ndarray) -> dict[str, np.ndarray]:
        if model_input.dtype == np.uint8:
            return self.engine.infer_image(model_input)
        return self.engine.infer(model_input)

    def _model_input(self, frame: np.ndarray, row: int, rows: int) -> np.ndarray:
        assert self._preprocess is not None
        if self._takes_images:
            return self._preprocess.resize(frame)
        if self._tensor is None or self._tensor.shape[0] < rows:
            self._tensor = np.empty((max(rows, self.batch_size), *self._input_shape[1:]), np.float32)
        return self._preprocess(frame, self._tensor[row:row + 1])

    def _result(self, message: Message, out: Message, pinned: bool, outputs: dict[str, np.ndarray]) -> Message | None:
        meta = self.engine.metadata
        labels = labels_from_outputs(outputs, meta) if meta.segments else None
        ids = None
        if self._instances is not None:  # the detections, their ids and classes painted over the frame
            frame = message.header.part("frame")
            frame_hw = frame.shape[:2] if frame is not None else (meta.input_height, meta.input_width)
            detections, ids, labels = instances_from_outputs(outputs, meta, frame_hw, *self._instances)
            out.header.meta["instances"] = [d.to_json() for d in detections]
        classification = top_labels(outputs, meta)
        if classification is not None:  # image-level labels travel in the header
            out.header.meta["classification"] = classification
        self.inputs.forward(message, out, *(name for name in CARRIED if not (pinned and name == "frame")))
        if labels is not None and not self.writer.add(out, "labels", labels, lambda: self.runtime.stopping):
            return None
        if ids is not None and not self.writer.add(out, "instance_ids", ids, lambda: self.runtime.stopping):
            return None
        if self._confidence is not None:
            confidence = outputs[self._confidence.name][0]
            if not self.writer.add(out, "confidence", confidence, lambda: self.runtime.stopping):
                return None
        return out

    def _pin_frame(self, message: Message, out: Message) -> bool | None:
        """In live flow, copy a frame held by reference in capture's ring into this stage's
        own ring (``out`` gets the part): True when pinned, False when there is nothing to
        pin (it is forwarded as it is), None when the stage stops while waiting."""
        part = message.header.part("frame")
        if self._frames is None or part is None or part.ref is None or self._ring_outlasts(message):
            return False
        frame = self._frames.view(message, "frame")
        if frame is None:
            return False  # already overwritten: render will count it
        if not self.writer.add(out, "frame", frame, lambda: self.runtime.stopping):
            return None
        if not self._frames.intact(message, "frame"):  # reused while copied: the copy is torn
            self.writer.withdraw(out, "frame")
            return False
        return True

    def _ring_outlasts(self, message: Message) -> bool:
        """Whether capture's ring will still hold the frame when render draws it, with a
        wide margin: then it goes on by reference and is not copied (6 MB at 1080p). The
        ring lasts its slots, less the one capture holds for the frame it decodes next,
        over the source's frame rate; the frame is this old already, and inference,
        publish and render are still to come (``PIN_MARGIN`` times this stage's time
        between frames; the first frames, with none measured, are copied)."""
        fps = source_rate(message.header.meta.get("fps"))
        slots = self._frames.ring_slots(message, "frame") if self._frames is not None else 0
        if not (fps and slots and self._cycle_ns):
            return False
        lifetime_ns = (slots - 1) / fps * 1e9
        age_ns = time.monotonic_ns() - message.header.capture_ns
        return age_ns + PIN_MARGIN * self._cycle_ns < lifetime_ns / 2

    def blocked_ns(self) -> int:
        return self.writer.blocked_ns

    def discard(self, message: Message) -> None:
        self.inputs.release(message, "input")

    def end_of_stream(self, message: Message) -> None:
        self.inputs.forget_source(message.header.source)  # live flow: its capture's ring
        if self._frames is not None:
            self._frames.forget_source(message.header.source)

    def close(self) -> None:
        self.engine.close()
        self.inputs.close()
        if self._frames is not None:
            self._frames.close()
        self.writer.close(unlink=True)


def run(spec: StageSpec, runtime: StageRuntime) -> int:
    """Run the inference stage until end of stream or stop."""
    return run_middle_stage(spec, runtime, InferProcessor(spec, runtime))
