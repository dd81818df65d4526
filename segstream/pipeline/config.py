"""The run configuration: one frozen dataclass, loaded from YAML and overridden by flags.

Example ``configs/*.yaml``::

    sources: [../shared/data/solidWhiteRight.mp4]
    model: espnet-cityscapes
    policy: lossless
    record: out/
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segstream.pipeline.messages import ENCODINGS
from segstream.pipeline.policies import FlowPolicy
from segstream.pipeline.stage import StageKind

logger = logging.getLogger(__name__)

DEFAULT_PUBLISH = "tcp://127.0.0.1:5560"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one ``segstream run``.

    Attributes:
        sources: source URIs (video, image folder, glob, ``test-pattern``).
        model: zoo model name or path to an ONNX file with segstream metadata.
        weights: weights file for a zoo model (overrides the lookup).
        backend: ``auto`` (TensorRT where TensorRT and a GPU are, else ONNX Runtime with
            CUDA where that is, else ONNX Runtime on the CPU), ``onnxruntime``, ``torch``
            or ``tensorrt``.
        precision: ``fp32`` or ``fp16`` (GPU backends).
        providers: ONNX Runtime execution providers in order (``tensorrt``, ``cuda``,
            ``cpu`` or full names); empty: CUDA when usable, then CPU.
        cuda_graph: the torch backend on CUDA replays the model as a CUDA graph.
        policy: ``live`` or ``lossless``; None picks per source (files lossless,
            live sources live).
        record: folder for masks, overlay video and stats.json, or None.
        publish: endpoint of the PUB socket for downstream consumers ("" = none).
        max_frames: stop each source after this many frames (0 = no limit).
        rate: pacing of replays: ``native`` (the dataset's timestamps or nominal rate, a
            video's frame rate), ``max`` (as fast as the pipeline goes) or frames per
            second; None: ``native`` in live flow, ``max`` in lossless flow.
        loop: start video files over at their end.
        mask_encoding: how published masks are encoded: ``raw``, ``png`` or ``rle``.
        mask_resolution: publish masks at the ``frame``'s resolution or the ``model``'s.
        confidence: publish a per-pixel confidence map (uint8) beside each mask.
        publish_lossless: endpoint of a PUSH channel for one consumer that must get every
            mask (it slows the pipeline if it falls behind); "" for none.
        live: how streams and cameras connect (``LiveOptions`` fields: rtsp_transport,
            open_timeout_s, stall_timeout_s, connect_attempts, backoff_initial_s,
            backoff_max_s, width, height, fps).
        transport: ``ipc`` (one host, shared memory) or ``tcp`` (inline payloads).
        tcp_host: host the tcp endpoints bind on.
        tcp_base_port: first port of the stage endpoints when ``transport`` is tcp.
        workers: parallel inference processes (0 = auto: in lossless flow, where
            throughput counts, one per core up to 4, since single-threaded sessions side
            by side outrun one multi-threaded session on the CPU; in live flow, where
            latency counts, one).
        threads: threads per inference process (0 = the cores divided among workers).
        opacity: overlay opacity.
        legend: draw the legend.
        render_mode: ``blend`` (colours over the frame), ``mask`` (colours only) or
            ``side-by-side`` (frame and blend).
        render_classes: colour only these classes (names or ids); empty: all.
        view: ``HOST:PORT`` of the live view in a browser ("" for none).
        rtsp_out: ``rtsp://HOST:PORT/PATH`` to push the overlay to as H.264 ("" for none).
        display: show the overlay in an OpenCV window (needs a screen and an OpenCV
            build with a GUI).
        render: run the render stage even without ``record`` (0/1); auto when None.
        stage_delay_ms: artificial per-frame delay per stage kind (tests, demos of
            slow stages).
        ready_timeout_s: how long the stages may take to start.
        eval: score masks against the ground truth of dataset sources as they are made
            (confusion matrix, IoU, accuracy...; live and in stats.json).
        cityscapes_results: folder for predictions in the official Cityscapes results
            format (label ids, full resolution), "" for none.
        metrics_port: serve Prometheus metrics on this port (0: none).
        metrics_host: the host the metrics endpoint binds on.
        quiet: no live status line.
    """

    sources: tuple[str, ...] = ("test-pattern",)
    model: str = "espnet-cityscapes"
    weights: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    providers: tuple[str, ...] = ()
    cuda_graph: bool = False
    policy: FlowPolicy | None = None
    record: str | None = None
    publish: str = DEFAULT_PUBLISH
    max_frames: int = 0
    rate: str | None = None
    loop: bool = False
    live: dict[str, Any] = field(default_factory=dict)
    mask_encoding: str = "raw"
    mask_resolution: str = "frame"
    confidence: bool = False
    publish_lossless: str = ""
    transport: str = "ipc"
    tcp_host: str = "127.0.0.1"
    tcp_base_port: int = 5600
    workers: int = 0
    threads: int = 0
    opacity: float = 0.5
    legend: bool = True
    render_mode: str = "blend"
    render_classes: tuple[str, ...] = ()
    view: str = ""
    rtsp_out: str = ""
    display: bool = False
    render: bool | None = None
    stage_delay_ms: dict[str, float] = field(default_factory=dict)
    ready_timeout_s: float = 120.0
    eval: bool = False
    cityscapes_results: str = ""
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    quiet: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.sources, str):
            set_(self, "sources", (self.sources,))
        set_(self, "sources", tuple(str(s) for s in self.sources))
        if not self.sources:
            raise ConfigError("sources is empty; give at least one --source (a video, a folder, a glob or test-pattern)")
        if self.policy is not None:
            try:
                set_(self, "policy", FlowPolicy(self.policy))
            except ValueError:
                raise ConfigError(f"policy must be 'live' or 'lossless', found {self.policy!r}") from None
        from segstream.engines.backend_choice import BACKEND_CHOICES
        from segstream.engines.resolve import PRECISIONS

        if self.backend not in BACKEND_CHOICES:
            raise ConfigError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, found {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, found {self.precision!r}")
        set_(self, "providers", tuple(str(p) for p in self.providers))
        if self.mask_encoding not in ENCODINGS:
            raise ConfigError(f"mask_encoding must be one of {', '.join(ENCODINGS)}, found {self.mask_encoding!r}")
        if self.render_mode not in ("blend", "mask", "side-by-side"):
            raise ConfigError(f"render_mode must be blend, mask or side-by-side, found {self.render_mode!r}")
        set_(self, "render_classes", tuple(str(c) for c in self.render_classes))
        if self.rtsp_out and not self.rtsp_out.startswith("rtsp://"):
            raise ConfigError(f"rtsp_out takes rtsp://HOST:PORT/PATH, found {self.rtsp_out!r}")
        if self.display:
            check_display()
        if self.mask_resolution not in ("frame", "model"):
            raise ConfigError(f"mask_resolution must be 'frame' or 'model', found {self.mask_resolution!r}")
        if self.transport not in ("ipc", "tcp"):
            raise ConfigError(f"transport must be 'ipc' or 'tcp', found {self.transport!r}")
        if self.rate is not None:
            set_(self, "rate", str(self.rate))
            try:
                valid = self.rate in ("native", "max") or float(self.rate) > 0
            except ValueError:
                valid = False
            if not valid:
                raise ConfigError(f"rate must be 'native', 'max' or frames per second (e.g. 10), found {self.rate!r}")
        from segstream.pipeline.streams import LiveOptions

        try:
            LiveOptions(**self.live)
        except TypeError as exc:
            raise ConfigError(f"live: {exc}; known: {sorted(LiveOptions.__dataclass_fields__)}") from None
        except ValueError as exc:
            raise ConfigError(f"live: {exc}") from None
        if self.workers < 0 or self.workers > 8:
            raise ConfigError(f"workers must be between 0 (auto) and 8, found {self.workers}")
        if self.max_frames < 0:
            raise ConfigError(f"max_frames must be >= 0, found {self.max_frames}")
        if not 0.0 <= self.opacity <= 1.0:
            raise ConfigError(f"opacity must be between 0 and 1, found {self.opacity}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be a TCP port (1-65535, 0 for none), found {self.metrics_port}")
        kinds = {k.value for k in StageKind}
        bad = sorted(set(self.stage_delay_ms) - kinds)
        if bad:
            raise ConfigError(f"stage_delay_ms names unknown stages {bad}; stages are {sorted(kinds)}")

    def with_overrides(self, **overrides: Any) -> "PipelineConfig":
        """A copy with the non-None ``overrides`` applied (command-line flags)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown settings {unknown}")
        return dataclasses.replace(self, **changes)


def check_display() -> None:
    """Raise ConfigError with the fix if no OpenCV window can be shown here."""
    import os

    import cv2

    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "NONE")
    if gui.upper() == "NONE":
        raise ConfigError("--display needs an OpenCV build with a GUI, and this one has none (opencv-python-headless); "
                          "install opencv-python instead, or watch in a browser with --view")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("--display needs a screen, and no DISPLAY is set; run it on a desktop, or watch in a "
                          "browser with --view")


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read a YAML config (None: the defaults)."""
    if path is None:
        return PipelineConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, found {type(data).__name__}")
    if "source" in data:
        raise ConfigError(f"{path}: use 'sources: [...]' (a list), not 'source'")
    unknown = sorted(set(data) - set(PipelineConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {sorted(PipelineConfig.__dataclass_fields__)}")
    try:
        return PipelineConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
