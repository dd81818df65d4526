"""The run configuration: one frozen dataclass in which every setting is declared once.

Each field names its type, default, help, command-line flag and YAML place
(``settings.setting``); ``segstream run``'s flags and the YAML reader are made from these
declarations. YAML takes sections, or the flat keys of older configs::

    sources: {uris: [../shared/data/solidWhiteRight.mp4], rate: max}
    engine: {model: espnet-cityscapes, backend: auto}
    flow: {policy: lossless}
    outputs: {record: segstream-out/dashcam, publish: "tcp://127.0.0.1:5560"}
    telemetry: {metrics_port: 9100}
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segstream.engines.backends.base import MAX_BATCH
from segstream.engines.backends.choice import Backend
from segstream.engines.resolve import EnginePrecision
from segstream.errors import ConfigError
from segstream.pipeline.overlay import RenderMode
from segstream.pipeline.settings import coerce_fields, from_mapping, setting
from segstream.pipeline.source_allow import check_patterns
from segstream.pipeline.sources.streams import LiveOptions
from segstream.pipeline.spec import MAX_RATE, MaskResolution, StageKind, frame_rate
from segstream.pipeline.typed_json import load_dataclass
from segstream.pipeline.wire.choices import FlowPolicy, RestartPolicy, Transport
from segstream.pipeline.wire.messages import MaskEncoding

logger = logging.getLogger(__name__)

__all__ = ["ConfigError", "PipelineConfig", "load_config", "check_display", "DEFAULT_PUBLISH"]

DEFAULT_PUBLISH = "tcp://127.0.0.1:5560"
MAX_THREADS = 256  # threads per inference process


def _commas(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _as_text(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of one ``segstream run`` (``segstream run --help`` lists the flags)."""

    # -- sources -------------------------------------------------------------------------
    sources: tuple[str, ...] = setting(
        ("test-pattern",), "video file, image folder, glob, test-pattern[:WxH[@FPS]], rtsp://..., camera:N, "
        "/dev/videoN or a dataset (cityscapes:ROOT, kitti-raw:DIR, ...); repeat for several",
        flag="--source", section="sources", yaml="uris", metavar="SRC", append=True)
    max_frames: int = setting(0, "stop each source after N frames (0: all)", flag="--max-frames", section="sources",
                              metavar="N")
    rate: str | None = setting(None, "replay pacing: the dataset's own timing (native), N frames per second, or as "
                               "fast as possible (max); default: max in lossless flow, native in live flow",
                               flag="--rate", section="sources", metavar="native|N|max", coerce=_as_text)
    loop: bool = setting(False, "start video files over at their end", flag="--loop", section="sources")
    reduced_decode: bool = setting(False, "decode JPEG images at 1/2, 1/4 or 1/8 size where that still covers the "
                                   "model's input (faster; masks still at full size; not with an overlay, which "
                                   "needs the whole frame, nor with instance models)", flag="--reduced-decode",
                                   section="sources")
    live: LiveOptions = setting(help="how streams and cameras connect", section="sources",
                                default_factory=LiveOptions)
    # -- engine --------------------------------------------------------------------------
    model: str = setting("espnet-cityscapes", "zoo model name (segstream models) or an .onnx file with metadata",
                         flag="--model", section="engine")
    weights: str | None = setting(None, "weights file for a zoo model (default: lookup, see README)",
                                  flag="--weights", section="engine")
    random_weights: bool = setting(False, "run a zoo model that has no trained weights untrained, on purpose "
                                          "(its masks mean nothing; every run warns)",
                                   flag="--random-weights", section="engine")
    backend: Backend = setting(Backend.AUTO, "inference backend (auto: TensorRT, else ONNX Runtime CUDA, else "
                               "ONNX Runtime CPU)", flag="--backend", section="engine")
    precision: EnginePrecision = setting(EnginePrecision.FP32, "GPU backends: engine precision",
                                         flag="--precision", section="engine")
    providers: tuple[str, ...] = setting((), "ONNX Runtime providers in order, e.g. tensorrt,cuda,cpu",
                                         flag="--providers", section="engine", metavar="P,P", parse=_commas)
    cuda_graph: bool = setting(False, "torch on CUDA: replay a CUDA graph", flag="--cuda-graph", section="engine")
    triton_url: str = setting("grpc://127.0.0.1:8001", "--backend triton: the Triton server's gRPC address; --model "
                              "names the model there", flag="--triton-url", section="engine", metavar="grpc://HOST:PORT")
    triton_shm: str = setting("", "--backend triton, server on this host: send images through shared memory, "
                              "system (the default) or cuda (both sides on the GPU)", flag="--triton-shm",
                              section="engine", metavar="system|cuda", const="system")
    workers: int = setting(0, "parallel inference processes (0: auto, one per core up to 4 in lossless flow, "
                           "one in live flow)", flag="--workers", section="engine")
    threads: int = setting(0, "threads per inference process (0: the cores divided among workers)",
                           flag="--threads", section="engine")
    batch: int = setting(0, "frames of different sources inferred together (0: auto, 1 on CPU, up to 8 on a GPU, "
                         "4 requests in flight with --backend triton)",
                         flag="--batch", section="engine", metavar="N")
    batch_timeout_ms: float | None = setting(None, "how long inference waits to fill a batch (default: a third of "
                                             "the fastest source's frame interval)", flag="--batch-timeout-ms",
                                             section="engine", metavar="T")
    # -- flow ----------------------------------------------------------------------------
    policy: FlowPolicy | None = setting(None, "flow policy (default: lossless for files, live for live sources)",
                                        flag="--policy", section="flow")
    transport: Transport = setting(Transport.IPC, "ipc (one host, shared memory) or tcp (inline payloads)",
                                   flag="--transport", section="flow", group="security")
    tcp_host: str = setting("127.0.0.1", "host the tcp endpoints bind on", section="flow")
    tcp_base_port: int = setting(5600, "first port of the stage endpoints over tcp", section="flow")
    ready_timeout_s: float = setting(120.0, "how long the stages may take to start (s)", section="flow")
    restart: RestartPolicy = setting(RestartPolicy.ON_FAILURE, "restart a stage process that dies (the others go "
                                     "on) or end the run", flag="--restart", section="flow")
    max_restarts: int = setting(5, "restarts of one stage allowed per 10 minutes before the run fails",
                                flag="--max-restarts", section="flow", metavar="N")
    stage_delay_ms: dict[str, float] = setting(help="artificial per-frame delay per stage kind (tests, demos)",
                                               section="flow", default_factory=dict)
    # -- outputs -------------------------------------------------------------------------
    record: str | None = setting(None, "write masks/, overlay.mp4, frames.jsonl and stats.json here",
                                 flag="--record", section="outputs", metavar="DIR")
    publish: str = setting(DEFAULT_PUBLISH, "results PUB endpoint ('' for none)", flag="--publish",
                           section="outputs", metavar="ENDPOINT")
    publish_lossless: str = setting("", "also a PUSH channel for one consumer that must get every mask "
                                    "(backpressure)", flag="--publish-lossless", section="outputs",
                                    metavar="ENDPOINT")
    publish_keys: str = setting("", "CURVE keys for the tcp:// publish endpoints: DIR/server.key_secret and the "
                                "consumers allowed in DIR/authorized/*.key (segstream keys DIR --client NAME)",
                                flag="--publish-keys", section="outputs", metavar="DIR", group="security")
    mask_encoding: MaskEncoding | None = setting(
        None, "published mask encoding (default: png when a broker sink is set, where a raw 960x540 mask takes "
        "~500 KB an entry and a png one ~16 KB; raw otherwise)", flag="--mask-encoding", section="outputs")
    mask_resolution: MaskResolution = setting(MaskResolution.FRAME, "publish masks at frame or model resolution",
                                              flag="--mask-resolution", section="outputs")
    confidence: bool = setting(False, "publish a per-pixel confidence map (uint8) with each mask",
                               flag="--confidence", section="outputs")
    sinks: tuple[str, ...] = setting((), "an output by URI (masks:DIR, video:DIR, view:HOST:PORT, rtsp://..., "
                                     "eval:, ...; see docs/architecture.md); repeat for several", flag="--sink",
                                     section="outputs", metavar="URI", append=True)
    sink_maxlen: int = setting(10_000, "entries a redis:// sink's stream keeps (XADD MAXLEN ~ N; 0: no cap)",
                               flag="--sink-maxlen", section="outputs", metavar="N")
    sink_budget_mb: int = setting(1024, "memory a redis:// sink's stream may take at --sink-maxlen entries: the "
                                  "sink measures its entries and warns when the stream would outgrow this",
                                  flag="--sink-budget-mb", section="outputs", metavar="MB")
    sink_wait_s: float = setting(30.0, "lossless flow: how long a sink that cannot write (disk full, broker full "
                                 "or down) holds the pipeline back before it stops with an error naming it (the "
                                 "run goes on without it)", flag="--sink-wait-s", section="outputs", metavar="S")
    eval: bool = setting(False, "score masks against the sources' ground truth as they are made (IoU, accuracy, "
                         "F1; live and in stats.json)", flag="--eval", section="outputs")
    cityscapes_results: str = setting("", "write predictions for the official Cityscapes evaluation (label ids, "
                                      "full resolution)", flag="--cityscapes-results", section="outputs",
                                      metavar="DIR")
    view: str = setting("", "live view in a browser", flag="--view", section="outputs", metavar="HOST:PORT",
                        const="127.0.0.1:8080")
    rtsp_out: str = setting("", "push the overlay as H.264 to an RTSP server", flag="--rtsp-out",
                            section="outputs", metavar="rtsp://HOST:PORT/PATH")
    display: bool = setting(False, "show the overlay in a window", flag="--display", section="outputs")
    render: bool | None = setting(None, "run the render stage even without an output that needs it "
                                  "(default: when one does)", section="outputs")
    opacity: float = setting(0.5, "overlay opacity 0-1", flag="--opacity", section="outputs")
    legend: bool = setting(True, "the legend (class colours and names) on the overlay; --no-legend leaves it out",
                           flag="--no-legend", section="outputs", negate=True)
    render_mode: RenderMode = setting(RenderMode.BLEND, "what the overlay shows", flag="--render-mode",
                                      section="outputs")
    render_classes: tuple[str, ...] = setting((), "colour only these classes, e.g. road,car (names or ids)",
                                              flag="--classes", section="outputs", parse=_commas)
    # -- telemetry -----------------------------------------------------------------------
    metrics_port: int = setting(0, "serve Prometheus metrics at http://127.0.0.1:N/metrics (0: none)",
                                flag="--metrics-port", section="telemetry", metavar="N")
    metrics_host: str = setting("127.0.0.1", "the host the metrics endpoint binds on", section="telemetry")
    quiet: bool = setting(False, "no live status line", flag="--quiet", section="telemetry")
    # -- control -------------------------------------------------------------------------
    api: str = setting("", "HTTP control API: add and remove sources while the pipeline runs (JSON; see "
                       "docs/api.md); with no --source the run waits for sources until stopped",
                       flag="--api", section="control", metavar="[HOST:]PORT")
    api_token: str = setting("", "bearer token the control API requires (required for a non-loopback --api)",
                             flag="--api-token", section="control", metavar="TOKEN", group="security")
    api_allow: tuple[str, ...] = setting((), "sources an API client may add: a pattern of URIs (rtsp://10.0.0.*/*, "
                                         "/data/videos/*; paths resolved, see docs/api.md); repeat for several; "
                                         "none: any", flag="--api-allow", section="control", metavar="PATTERN",
                                         append=True, group="security")

    def __post_init__(self) -> None:
        coerce_fields(self)
        set_ = object.__setattr__
        set_(self, "sources", tuple(str(s) for s in self.sources))
        set_(self, "providers", tuple(str(p) for p in self.providers))
        set_(self, "api_allow", tuple(str(p) for p in self.api_allow))
        set_(self, "render_classes", tuple(str(c) for c in self.render_classes))
        if isinstance(self.live, dict):
            set_(self, "live", load_dataclass(LiveOptions, self.live, "live", ConfigError))
        if not self.sources and not self.api:
            raise ConfigError("sources is empty; give at least one --source (a video, a folder, a glob or "
                              "test-pattern), or --api PORT to add sources while the pipeline runs")
        if self.api:
            api_address(self.api, self.api_token)
        try:
            check_patterns(self.api_allow)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.batch < 0 or self.batch > MAX_BATCH:
            raise ConfigError(f"batch must be between 0 (auto) and {MAX_BATCH}, found {self.batch}")
        if self.batch_timeout_ms is not None and not 0 <= self.batch_timeout_ms <= 10_000:
            raise ConfigError(f"batch_timeout_ms must be between 0 and 10000 ms, found {self.batch_timeout_ms}")
        if self.rtsp_out and not self.rtsp_out.startswith("rtsp://"):
            raise ConfigError(f"rtsp_out takes rtsp://HOST:PORT/PATH, found {self.rtsp_out!r}")
        if self.display:
            check_display()
        if self.rate is not None:
            set_(self, "rate", str(self.rate))
            if self.rate not in ("native", "max") and not frame_rate(self.rate):
                raise ConfigError(f"rate must be 'native', 'max' or frames per second above 0 and at most "
                                  f"{MAX_RATE:g} (e.g. 10), found {self.rate!r}")
        if self.workers < 0 or self.workers > 8:
            raise ConfigError(f"workers must be between 0 (auto) and 8, found {self.workers}")
        if not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be between 0 (the cores divided among workers) and {MAX_THREADS}, "
                              f"found {self.threads}")
        for name in ("publish", "publish_lossless"):
            endpoint = getattr(self, name)
            if endpoint and not endpoint.startswith(("tcp://", "ipc://")):
                raise ConfigError(f"{name} takes a ZeroMQ endpoint, tcp://HOST:PORT or ipc:///PATH ('' for none), "
                                  f"found {endpoint!r}; for a broker use --sink redis://..., kafka://... or "
                                  f"mqtt://...")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, found {self.max_restarts}")
        if self.triton_shm not in ("", "system", "cuda"):
            raise ConfigError(f"--triton-shm takes system or cuda, found {self.triton_shm!r}")
        if self.sink_maxlen < 0:
            raise ConfigError(f"sink_maxlen must be >= 0 (0: no cap), found {self.sink_maxlen}")
        if not (math.isfinite(self.sink_wait_s) and 0 < self.sink_wait_s <= 3600):
            raise ConfigError(f"sink_wait_s must be a number of seconds in (0, 3600], found {self.sink_wait_s}")
        if self.sink_budget_mb < 1:
            raise ConfigError(f"sink_budget_mb must be at least 1 (MB), found {self.sink_budget_mb}")
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
        from segstream.pipeline.sinks import parse_sink

        for uri in self.sinks:
            parse_sink(uri)

    @property
    def published_mask_encoding(self) -> MaskEncoding:
        """The encoding masks are published in: the one asked for, else png where a broker
        sink keeps them (raw masks would take ~30x the broker's memory), else raw."""
        if self.mask_encoding is not None:
            return self.mask_encoding
        from segstream.pipeline.brokers import is_broker_uri

        return MaskEncoding.PNG if any(is_broker_uri(uri) for uri in self.sinks) else MaskEncoding.RAW

    def with_overrides(self, **overrides: Any) -> "PipelineConfig":
        """A copy with the non-None ``overrides`` applied (command-line flags); a dict for
        ``live`` updates only the options it names."""
        from segstream.pipeline.settings import apply

        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown settings {unknown}; known: {sorted(self.__dataclass_fields__)}")
        return apply(self, changes)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def api_address(text: str, token: str = "") -> tuple[str, int]:
    """``[HOST:]PORT`` of ``--api`` as ``(host, port)`` (host 127.0.0.1 by default).

    Raises:
        ConfigError: not of that form, or a non-loopback host without a token (anyone on
            the network could add sources to the pipeline).
    """
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"--api takes [HOST:]PORT, e.g. 8081 or 127.0.0.1:8081 (0: any free port), found {text!r}")
    if host not in LOOPBACK and not token:
        raise ConfigError(f"--api {text} listens beyond this machine: give --api-token TOKEN too, which every "
                          f"request must then send as 'Authorization: Bearer TOKEN'")
    return host, port


def check_display() -> None:
    """Raise ConfigError with the fix if no OpenCV window can be shown here."""
    import cv2

    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "NONE")
    if gui.upper() == "NONE":
        raise ConfigError("--display needs an OpenCV build with a GUI, and this one has none (opencv-python-headless); "
                          "install opencv-python instead, or watch in a browser with --view")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("--display needs a screen, and no DISPLAY is set; run it on a desktop, or watch in a "
                          "browser with --view")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently, so a setting written twice would be half ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read a YAML config (None: the defaults); every key and value is checked.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown (the known ones are
            listed) or a value has the wrong type.
    """
    if path is None:
        return PipelineConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          f"save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if isinstance(data, dict) and "source" in data:
        raise ConfigError(f"{path}: use 'sources: [...]' (a list), not 'source'")
    if isinstance(data, dict) and isinstance(data.get("sources"), str):
        data = {**data, "sources": [data["sources"]]}
    return from_mapping(PipelineConfig, data, str(path))
