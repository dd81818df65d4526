"""What a stage process is told: its spec, its typed settings and the rings it shares.

The planner (``graph.py``) builds one ``StageSpec`` per process; the supervisor writes it as
JSON and the stage reads it back (``StageSpec.from_json`` checks every field). Pure data:
no sockets, no shared memory, so planning never imports the data plane's runtime.

Each stage kind has one frozen settings class (``CaptureSettings`` ... ``RenderSettings``).
Which stage reads which shared-memory ring, and with which reader id, is derived in one
place, ``RingSpec``: a ring names its readers, and a reader's id is its position there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from segstream.engines.metadata import ModelMetadata
from segstream.pipeline.overlay import RenderMode
from segstream.pipeline.sources.streams import LiveOptions
from segstream.pipeline.typed_json import dump, load, load_dataclass
from segstream.pipeline.wire.choices import FlowPolicy
from segstream.pipeline.wire.keys import CurveServer, RunKeys
from segstream.pipeline.wire.messages import MaskEncoding


class StageKind(str, Enum):
    """The stage processes of a pipeline."""

    CAPTURE = "capture"
    PREPROCESS = "preprocess"
    INFER = "infer"
    PUBLISH = "publish"
    RENDER = "render"


class PayloadChoice(str, Enum):
    """How a stage ships its arrays: ``auto`` (shared memory on ipc://, inline on tcp://)."""

    AUTO = "auto"
    SHM = "shm"
    INLINE = "inline"


class MaskResolution(str, Enum):
    """The resolution published masks have."""

    FRAME = "frame"
    MODEL = "model"


MAX_RATE = 10_000.0  # frames per second a replay may be paced at (beyond any camera)


def frame_rate(rate: str) -> bool:
    """Whether ``rate`` is a number of frames per second a replay can be paced at: above 0,
    finite, at most ``MAX_RATE`` (``inf`` and ``nan`` are not)."""
    try:
        value = float(rate)
    except ValueError:
        return False
    return 0 < value <= MAX_RATE


@dataclass(frozen=True)
class CaptureSettings:
    """Capture: which source, under which id, paced how.

    Attributes:
        source: the source URI.
        source_id: the id its frames carry.
        max_frames: stop after this many frames (0 = all).
        rate: pacing of replays: ``native``, ``max`` or frames per second.
        loop: start a video file over at its end.
        live: how streams and cameras connect.
        start_index: index of the first frame to send (a restarted capture goes on where
            the one before it got to; a replay skips the frames before).
        start_seq: sequence number of the first frame handed on (``meta.seq``).
        instance_gt: send dataset replays' instance ground truth (Cityscapes
            ``gtFine_instanceIds.png``) with each frame, as part ``gt_instances``, for the
            live evaluation of an instance model.
        reduce_to: decode JPEG images at 1/2, 1/4 or 1/8 of their size where that is still
            at least this (height, width), the model's input (``--reduced-decode``; None:
            whole). Frames so read carry their full size (``meta.full_size``), at which
            publish puts the mask.
        failed: a capture given up on (it kept dying): why. It opens nothing, reports the
            source failed and sends its end of stream, so the other stages close it.
        removed: the source was removed while its capture did not listen (blocked opening
            it: a FIFO without a writer, a device that hangs): this process opens nothing
            and ends the stream at once, as removed.
    """

    source: str
    source_id: str
    max_frames: int = 0
    rate: str = "max"
    loop: bool = False
    live: LiveOptions = field(default_factory=LiveOptions)
    start_index: int = 0
    start_seq: int = 0
    instance_gt: bool = False
    reduce_to: tuple[int, int] | None = None
    failed: str = ""
    removed: bool = False

    def __post_init__(self) -> None:
        if self.reduce_to is not None:
            object.__setattr__(self, "reduce_to", tuple(self.reduce_to))
            if len(self.reduce_to) != 2 or not all(isinstance(v, int) and v > 0 for v in self.reduce_to):
                raise ValueError(f"reduce_to must be a (height, width) of positive integers, found {self.reduce_to!r}")
        if self.rate not in ("native", "max") and not frame_rate(self.rate):
            raise ValueError(f"rate must be 'native', 'max' or a positive number of frames per second, "
                             f"found {self.rate!r}")


@dataclass(frozen=True)
class PreprocessSettings:
    """Preprocess: the model's metadata, and whether the engine takes resized images only.

    Attributes:
        metadata: the model's metadata (input size, normalisation).
        images: resize only (engines that normalise on their GPU).
    """

    metadata: ModelMetadata
    images: bool = False


@dataclass(frozen=True)
class InferSettings:
    """Inference: the model file, the backend and its options.

    Attributes:
        model: ONNX or engine file.
        backend: the backend chosen for this run.
        engine: keyword arguments of the backend's loader.
        confidence: pass the model's confidence output on.
        preprocess: the worker makes the model input from the frame itself (live flow:
            only the frames it will infer are preprocessed, with no stage in between).
        batch: frames of different sources inferred in one engine call at most
            (``batching``; the engine's own limit applies too).
        batch_timeout_ms: how long a batch waits to fill (None: a third of the fastest
            source's frame interval).
    """

    model: str
    backend: str
    engine: dict[str, Any] = field(default_factory=dict)
    confidence: bool = False
    preprocess: bool = False
    batch: int = 1
    batch_timeout_ms: float | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, found {self.batch}")
        if self.batch_timeout_ms is not None and not 0 <= self.batch_timeout_ms <= 10_000:
            raise ValueError(f"batch_timeout_ms must be between 0 and 10000, found {self.batch_timeout_ms}")


@dataclass(frozen=True)
class PublishSettings:
    """Publish: the PUB endpoint, the public mask's form, and the sinks it drives.

    Attributes:
        metadata: the model's metadata (name, classes, ignore label).
        endpoint: PUB bind address ("" for none).
        mask_encoding: how published masks are encoded.
        mask_resolution: frame or model resolution.
        sinks: the sink URIs publish drives (``pipeline.sinks``).
        per_source_dirs: outputs under ``<folder>/<source id>/`` (several sources).
        publish_keys: CURVE keys of the public tcp:// endpoints (``--publish-keys``).
        sink_maxlen: entries a broker stream keeps (``--sink-maxlen``).
        sink_budget_mb: memory a broker stream may take before its sink warns.
        sink_wait_s: lossless flow: how long a sink that cannot write holds the stage back.
    """

    metadata: ModelMetadata
    endpoint: str = ""
    mask_encoding: MaskEncoding = MaskEncoding.RAW
    mask_resolution: MaskResolution = MaskResolution.FRAME
    sinks: tuple[str, ...] = ()
    per_source_dirs: bool = False
    publish_keys: CurveServer | None = None
    sink_maxlen: int = 10_000
    sink_budget_mb: int = 1024
    sink_wait_s: float = 30.0


@dataclass(frozen=True)
class RenderSettings:
    """Render: how overlays look, and the sinks it drives.

    Attributes:
        metadata: the model's class names and palette.
        opacity: overlay opacity.
        legend: draw the legend.
        mode: blend, mask or side by side.
        classes: class ids to colour (None: all).
        sinks: the sink URIs render drives (``pipeline.sinks``).
        per_source_dirs: outputs under ``<folder>/<source id>/`` (several sources).
        sink_wait_s: lossless flow: how long a sink that cannot write holds the stage back.
    """

    metadata: ModelMetadata
    opacity: float = 0.5
    legend: bool = True
    mode: RenderMode = RenderMode.BLEND
    classes: tuple[int, ...] | None = None
    sinks: tuple[str, ...] = ()
    per_source_dirs: bool = False
    sink_wait_s: float = 30.0


StageSettings = Union[CaptureSettings, PreprocessSettings, InferSettings, PublishSettings, RenderSettings]

SETTINGS: dict[StageKind, type] = {
    StageKind.CAPTURE: CaptureSettings,
    StageKind.PREPROCESS: PreprocessSettings,
    StageKind.INFER: InferSettings,
    StageKind.PUBLISH: PublishSettings,
    StageKind.RENDER: RenderSettings,
}


@dataclass(frozen=True)
class RingSpec:
    """A stage's shared-memory output ring and the stages that read it.

    Attributes:
        name: segment name prefix (``segstream-<run>-<stage>``).
        slots: slots of the ring (the lossless flow-control window).
        readers: the kinds of stage that release what they read, in reader-id order;
            parallel inference workers share one id.
    """

    name: str
    slots: int
    readers: tuple[StageKind, ...] = ()

    def reader_id(self, kind: StageKind) -> int | None:
        """The reader id of ``kind`` on this ring (None: it does not take part)."""
        return self.readers.index(kind) if kind in self.readers else None


@dataclass(frozen=True)
class StageSpec:
    """Everything a stage process needs to run, JSON-serialisable.

    Attributes:
        name: unique stage name in the run (``capture-0``, ``infer``...).
        kind: which stage program runs.
        run_id: the run's id.
        policy: live or lossless.
        settings: the stage kind's settings.
        inputs: endpoints the input PULL socket connects to.
        outputs: endpoints to bind output PUSH sockets on, one per parallel worker
            downstream (empty for the last stage).
        control: supervisor endpoint for events (None when started alone).
        commands: supervisor endpoint for commands (None: start at once).
        payloads: how this stage ships its arrays.
        ring: this stage's output ring.
        reads: this stage's reader id on the upstream rings, per part name.
        reader_in_order: this stage sees every frame of its upstream rings in order
            (False for one of several parallel workers).
        sources: number of sources.
        source_ids: their ids (a message of another source is refused).
        eos_per_source: end-of-stream messages that end one source here (one per
            parallel worker upstream).
        reorder: put frames back in capture order (after parallel workers).
        delay_ms: artificial extra processing time per frame (tests of slow stages).
        nice: scheduling niceness added to the process (light stages yield the cores to
            inference, whose parallel sections stall when one of their threads is
            preempted).
        incarnation: 0 for the first process of this stage, k for its k-th restart.
        ended_sources: sources that ended before this process started (a restart): it
            passes their end of stream on at once.
        keys: the run's CURVE keys for its tcp:// sockets (None on ipc://).
        control_token: the run's secret, sent with every event (the supervisor refuses
            events without it).
        open_ended: sources come and go while the pipeline runs (``--api``): the stage
            goes on when every source it knows has ended, until a stop.
    """

    name: str
    kind: StageKind
    run_id: str
    policy: FlowPolicy
    settings: StageSettings
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    control: str | None = None
    commands: str | None = None
    payloads: PayloadChoice = PayloadChoice.AUTO
    ring: RingSpec | None = None
    reads: dict[str, int] = field(default_factory=dict)
    reader_in_order: bool = True
    sources: int = 1
    source_ids: tuple[str, ...] = ()
    eos_per_source: int = 1
    reorder: bool = False
    delay_ms: float = 0.0
    nice: int = 0
    incarnation: int = 0
    ended_sources: tuple[str, ...] = ()
    keys: RunKeys | None = None
    open_ended: bool = False
    control_token: str = ""

    def __post_init__(self) -> None:
        expected = SETTINGS[self.kind]
        if not isinstance(self.settings, expected):
            raise ValueError(f"stage {self.name} ({self.kind.value}) needs {expected.__name__}, "
                             f"found {type(self.settings).__name__}")

    def to_json(self) -> str:
        """The spec as JSON (``from_json`` reads it back)."""
        return json.dumps(dump(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "StageSpec":
        """Read and check a spec written by ``to_json``.

        Raises:
            ValueError: a field is missing, unknown or of the wrong type; says which.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a stage spec is a JSON object, found {type(data).__name__}")
        kind = load(StageKind, data.get("kind"), "spec.kind")
        settings = load_dataclass(SETTINGS[kind], data.get("settings"), "spec.settings")
        return load_dataclass(cls, {**data, "settings": settings}, "spec")
