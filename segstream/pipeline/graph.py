"""The process graph of a run: which stages, their endpoints, rings and readers.

    capture-i --> preprocess --> infer --> publish --(PUB)--> consumers
        \\                                    |
         `------- frame (by reference) ----> render --> overlay.mp4

(In live flow the inference workers preprocess: capture-i --> infer.)

Pure planning: no processes, no sockets. The supervisor turns the plan into processes.
"""

from __future__ import annotations

import secrets

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from segstream.engines.metadata import ModelMetadata, OutputKind
from segstream.engines.resolve import InferenceModel
from segstream.errors import ConfigError
from segstream.pipeline.batching import auto_batch
from segstream.pipeline.config import PipelineConfig
from segstream.pipeline.sinks import SinkStage, parse_sink
from segstream.pipeline.source_options import SourceOptions, capture_fields
from segstream.pipeline.spec import (
    CaptureSettings,
    InferSettings,
    PreprocessSettings,
    PublishSettings,
    RenderSettings,
    RingSpec,
    StageKind,
    StageSettings,
    StageSpec,
)
from segstream.pipeline.wire.choices import FlowPolicy, Transport, ipc_endpoint
from segstream.pipeline.wire.keys import CurveServer, RunKeys, load_publish_keys
from segstream.pipeline.wire.names import unique_name

logger = logging.getLogger(__name__)

# Ring slots per stage output, (lossless, live). Lossless rings are the flow-control
# window; live rings must outlast the pipeline's latency so render still finds the frame.
RING_SLOTS: dict[StageKind, tuple[int, int]] = {
    StageKind.CAPTURE: (8, 32),
    StageKind.PREPROCESS: (2, 8),  # lossless: one input ready while one is inferred (and more per worker)
    StageKind.INFER: (8, 32),  # label maps (and confidence); live: also the frames they were made from
    StageKind.PUBLISH: (8, 16),
}


SHARED_CAPTURE_WINDOW = 4  # lossless frames all captures of a run hold together, with several sources
MIN_CAPTURE_WINDOW = 1  # lossless slots of one capture's ring when the run's window is shared out
LIGHT_STAGE_NICE = 10  # light stages yield the cores to inference (see StageSpec.nice)
FILL_STAGE_NICE = 15  # and several max-rate replays to the stages behind them
GPU_AUTO_WORKERS = 2
MAX_AUTO_WORKERS = 4


@dataclass(frozen=True)
class RunPlan:
    """Stage specs plus the supervisor's own endpoints.

    Attributes:
        capture: lays out the capture of a source that joins the running pipeline
            (``--api``): ``capture(index, uri, source_id, options, sources)`` with the
            number of sources it makes.
        capture_readers: per output of a capture, the stage whose input connects to it.
        control_token: the run's secret that every stage puts in its events; the
            supervisor takes events only with it (another process that reaches the control
            socket cannot end the run or fail a source).
    """

    run_id: str
    policy: FlowPolicy
    stages: tuple[StageSpec, ...]
    control: str
    commands: str
    per_source_dirs: bool
    capture: Callable[[int, str, str, SourceOptions, int], StageSpec]
    capture_readers: tuple[str, ...]
    control_token: str = ""


def source_ids(sources: tuple[str, ...]) -> list[str]:
    """Unique ids for the sources, from their names (``clip``, ``clip-1``...)."""
    from segstream.pipeline.sources import default_source_id

    ids: list[str] = []
    for uri in sources:
        ids.append(unique_name(default_source_id(uri), ids))
    return ids


def publish_sinks(config: PipelineConfig) -> tuple[str, ...]:
    """The publish-side sink URIs of a run: ``--sink`` ones plus the shorthands."""
    uris: list[str] = []
    if config.record:
        uris += [f"masks:{config.record}", f"classifications:{config.record}", f"timings:{config.record}"]
    if config.eval:
        uris.append("eval:")
    if config.cityscapes_results:
        uris.append(f"cityscapes-results:{config.cityscapes_results}")
    if config.publish_lossless:
        uris.append(f"lossless:{config.publish_lossless}")
    return tuple(uris) + tuple(u for u in config.sinks if parse_sink(u)[0].stage is SinkStage.PUBLISH)


def render_sinks(config: PipelineConfig) -> tuple[str, ...]:
    """The render-side sink URIs of a run: ``--sink`` ones plus the shorthands."""
    uris: list[str] = []
    if config.record:
        uris.append(f"video:{config.record}")
    if config.view:
        uris.append(f"view:{config.view}")
    if config.rtsp_out:
        uris.append(config.rtsp_out)
    if config.display:
        uris.append("window:")
    return tuple(uris) + tuple(u for u in config.sinks if parse_sink(u)[0].stage is SinkStage.RENDER)


# Which stage kinds read (and release) each kind's output ring, in reader-id order, and
# which parts each reader takes from it. The one place ring readers are decided. Readers are
# listed in pipeline order: a later reader gets the ring's frames through the earlier ones
# (render through preprocess), which a restart relies on (restarts.Restarter.retire).
RING_READERS: dict[StageKind, tuple[tuple[StageKind, tuple[str, ...]], ...]] = {
    StageKind.CAPTURE: ((StageKind.PREPROCESS, ("frame",)), (StageKind.RENDER, ("frame",))),
    StageKind.PREPROCESS: ((StageKind.INFER, ("input",)),),
    StageKind.INFER: ((StageKind.PUBLISH, ("labels", "confidence", "instance_ids")),),
    StageKind.PUBLISH: ((StageKind.RENDER, ("mask", "instance_ids")),),
}


def ring_spec(run_id: str, name: str, kind: StageKind, slots: int, present: set[StageKind]) -> RingSpec:
    """The output ring of stage ``name``: its readers are the kinds of ``RING_READERS``
    that this run has."""
    readers = tuple(reader for reader, _ in RING_READERS.get(kind, ()) if reader in present)
    return RingSpec(f"segstream-{run_id}-{name}", slots, readers)


def reads_of(kind: StageKind, present: set[StageKind]) -> dict[str, int]:
    """The reader id of stage ``kind`` per part it reads from an upstream ring."""
    out: dict[str, int] = {}
    for writer, readers in RING_READERS.items():
        if writer not in present:
            continue
        ids = [reader for reader, _ in readers if reader in present]
        for reader, parts in readers:
            if reader is kind and reader in ids:
                out.update({part: ids.index(reader) for part in parts})
    return out


def plan_run(config: PipelineConfig, policy: FlowPolicy, run_id: str, run_dir: Path, model: InferenceModel,
             keys: RunKeys | None = None) -> RunPlan:
    """Lay out the stages of one run (``keys``: CURVE keys of its tcp:// sockets)."""
    metadata = model.metadata
    # an instance model evaluated live: replays send their instance ground truth too
    instance_eval = config.eval and metadata.output(OutputKind.INSTANCE_COUNT) is not None
    port = iter(range(config.tcp_base_port, config.tcp_base_port + 100))

    def endpoint(name: str) -> str:
        if config.transport is Transport.TCP:
            number = next(port, None)
            if number is None:
                raise ConfigError(f"the run has used its 100 tcp ports from tcp_base_port {config.tcp_base_port} "
                                  f"for stage endpoints; use --transport ipc for this many sources")
            return f"tcp://{config.tcp_host}:{number}"
        return ipc_endpoint(run_dir, f"{name}.sock")

    live = policy is FlowPolicy.LIVE
    publish_uris, render_uris = publish_sinks(config), render_sinks(config)
    render = config.render if config.render is not None else bool(render_uris)
    open_ended = bool(config.api)  # sources come and go through the control API
    per_source = len(config.sources) > 1 or open_ended
    # Live flow preprocesses inside the inference workers: a stage of its own would
    # preprocess every frame the camera sends, at the camera's rate, although a worker
    # takes only the newest when it is free (the rest is thrown away), and it would steal
    # the CPU inference needs. A worker preprocesses only what it infers.
    present = {StageKind.CAPTURE, StageKind.INFER, StageKind.PUBLISH} | (set() if live else {StageKind.PREPROCESS})
    if render:
        present.add(StageKind.RENDER)
    control, commands = endpoint("control"), endpoint("commands")
    control_token = secrets.token_hex(16)
    rate = config.rate or ("native" if live else "max")
    ids = tuple(source_ids(config.sources))

    workers, threads = worker_layout(config, policy, model.choice.device)
    reduce_to = reduced_decode_size(config, metadata, render)
    batch = auto_batch(config.batch, model.choice.device, None if open_ended else len(ids))

    def spec(name: str, kind: StageKind, settings: StageSettings, sources: int = len(ids), **kw: object) -> StageSpec:
        slots = RING_SLOTS.get(kind, (0, 0))[1 if live else 0]
        if kind is StageKind.CAPTURE and not live:
            # A lossless capture's ring is its read-ahead window. One window per run, shared
            # out evenly: with a window per source, N sources would keep N times the frames
            # in flight, and their latency would grow N-fold for no more throughput. One
            # source cannot fill its 8 slots (it decodes at about the pipeline's rate); N
            # sources fill whatever they get, so together they get what one source uses
            # (about 4). A batch needs its frames in flight at once.
            slots = max(MIN_CAPTURE_WINDOW, max(SHARED_CAPTURE_WINDOW, 2 * batch) // sources) if sources > 1 \
                else max(slots, 2 * batch)
        elif kind is StageKind.PREPROCESS:
            slots = max(slots, (batch + 1) * workers)  # every worker holds a batch while one more is made
        elif kind is StageKind.INFER:
            slots = max(slots, 2 * batch)  # a batch's results are all written before the first is sent
        # Inference keeps its priority; so does a paced capture, whose timing counts. With
        # several sources, publish, which finishes frames (a millisecond or two each), does
        # too: yielding, it waited behind workers that keep both cores busy while the
        # captures fill the window, and frames piled up before it (4 sources: 20-80 ms p50
        # there); and max-rate replays, which only fill the pipeline, yield to every stage
        # that drains it. One source alone keeps the plain order (its capture is what the
        # pipeline waits for; measured, a full-priority publish cost ESPNet's lossless run
        # with two workers about 3 %).
        several = sources > 1
        full_priority = kind is StageKind.INFER or (kind is StageKind.PUBLISH and several) \
            or (kind is StageKind.CAPTURE and rate != "max")
        filling = kind is StageKind.CAPTURE and several
        nice = 0 if full_priority else FILL_STAGE_NICE if filling else LIGHT_STAGE_NICE
        outputs = kw.get("outputs", ())
        ring = ring_spec(run_id, name, kind, slots, present) if outputs else None
        return StageSpec(name=name, kind=kind, run_id=run_id, policy=policy, settings=settings, control=control,
                         commands=commands, ring=ring, reads=reads_of(kind, present),
                         nice=nice, sources=len(config.sources), source_ids=ids,
                         delay_ms=float(config.stage_delay_ms.get(kind.value, 0.0)), keys=keys,
                         open_ended=open_ended, control_token=control_token, **kw)  # type: ignore[arg-type]

    stages: list[StageSpec] = []
    # Live: each capture sends to every worker straight (one endpoint per worker, so end of
    # stream reaches them all); lossless: every capture sends to the preprocess stage.
    per_capture = workers if live else 1

    def capture(index: int, uri: str, sid: str, options: SourceOptions, sources: int) -> StageSpec:
        outs = tuple(endpoint(f"capture-{index}" if per_capture == 1 else f"capture-{index}-{k}")
                     for k in range(per_capture))
        fields = capture_fields(options, config)
        settings = CaptureSettings(source=uri, source_id=sid, instance_gt=instance_eval, reduce_to=reduce_to,
                                   **{**fields, "rate": fields["rate"] or rate})
        return spec(f"capture-{index}", StageKind.CAPTURE, settings, sources=sources, outputs=outs)

    captures = [capture(i, uri, sid, SourceOptions(), len(ids)) for i, (uri, sid) in enumerate(zip(config.sources, ids))]
    stages.extend(captures)
    capture_outputs = [c.outputs for c in captures]
    infer_names = tuple("infer" if workers == 1 else f"infer-{k}" for k in range(workers))
    if live:
        infer_inputs = [tuple(outs[k] for outs in capture_outputs) for k in range(workers)]
        capture_readers = infer_names
    else:
        capture_readers = ("preprocess",)
        pre_outs = tuple(endpoint(f"preprocess-{k}") for k in range(workers))
        infer_inputs = [(out,) for out in pre_outs]
        stages.append(spec("preprocess", StageKind.PREPROCESS,
                           PreprocessSettings(metadata=metadata, images=model.choice.takes_images),
                           inputs=tuple(outs[0] for outs in capture_outputs), outputs=pre_outs))
    infer_outs = tuple(endpoint(f"infer-{k}") for k in range(workers))
    publish_out = (endpoint("publish"),) if render else ()
    for k in range(workers):
        # The workers share one reader id of the tensor ring; each writes a labels ring.
        stages.append(spec(infer_names[k], StageKind.INFER, InferSettings(
            model=str(model.path), backend=model.choice.backend, engine=model.engine_options(threads),
            confidence=config.confidence, preprocess=live, batch=batch, batch_timeout_ms=config.batch_timeout_ms),
            inputs=infer_inputs[k], outputs=(infer_outs[k],),
            reader_in_order=workers == 1))
    stages.append(spec("publish", StageKind.PUBLISH, PublishSettings(
        metadata=metadata, endpoint=config.publish, mask_encoding=config.published_mask_encoding,
        mask_resolution=config.mask_resolution, sinks=publish_uris, per_source_dirs=per_source,
        publish_keys=public_keys(config), sink_maxlen=config.sink_maxlen, sink_budget_mb=config.sink_budget_mb,
        sink_wait_s=config.sink_wait_s),
        inputs=infer_outs, outputs=publish_out, eos_per_source=workers, reorder=workers > 1))
    if render:
        stages.append(spec("render", StageKind.RENDER, RenderSettings(
            metadata=metadata, opacity=config.opacity, legend=config.legend, mode=config.render_mode,
            classes=class_ids(config.render_classes, metadata), sinks=render_uris, per_source_dirs=per_source,
            sink_wait_s=config.sink_wait_s),
            inputs=publish_out))
    return RunPlan(run_id, policy, tuple(stages), control, commands, per_source, capture, capture_readers,
                   control_token)


def public_keys(config: PipelineConfig) -> CurveServer | None:
    """The CURVE keys of the public endpoints (``--publish-keys``), checked."""
    if not config.publish_keys:
        return None
    endpoints = [e for e in (config.publish, config.publish_lossless) if e]
    if not any(e.startswith("tcp://") for e in endpoints):
        raise ConfigError(f"--publish-keys protects tcp:// endpoints, and none is published on tcp ({endpoints}); "
                          f"ipc:// endpoints are protected by their folder's permissions")
    return load_publish_keys(config.publish_keys)


def class_ids(names: tuple[str, ...], metadata: ModelMetadata) -> tuple[int, ...] | None:
    """Class ids for names or ids given by the user; None for "all classes"."""
    if not names:
        return None
    ids = []
    for name in names:
        if name.isdigit() and int(name) < metadata.num_classes:
            ids.append(int(name))
        elif name in metadata.class_names:
            ids.append(metadata.class_names.index(name))
        else:
            raise ConfigError(f"unknown class {name!r} for render_classes; the model's classes are "
                              f"{', '.join(metadata.class_names)}")
    return tuple(ids)


def reduced_decode_size(config: PipelineConfig, metadata: ModelMetadata, render: bool) -> tuple[int, int] | None:
    """The (height, width) JPEG frames may be decoded down to (``--reduced-decode``): the
    model's input; None where frames must stay whole: an overlay is drawn on them, or an
    instance model places its boxes and masks in the frame's pixels."""
    if not config.reduced_decode:
        return None
    if render or metadata.output(OutputKind.INSTANCE_COUNT) is not None:
        logger.warning("--reduced-decode is ignored: %s needs whole frames",
                       "the overlay" if render else "an instance model")
        return None
    return metadata.input_height, metadata.input_width


def worker_layout(config: PipelineConfig, policy: FlowPolicy, device: str = "cpu") -> tuple[int, int]:
    """How many inference processes, with how many threads each.

    On a GPU, two processes in lossless flow (one uploads and copies back while the other
    computes); each holds its own CUDA context and engine, so more only costs memory.
    """
    cores = os.cpu_count() or 1
    auto = min(cores, MAX_AUTO_WORKERS) if device == "cpu" else GPU_AUTO_WORKERS
    workers = config.workers or (auto if policy is FlowPolicy.LOSSLESS else 1)
    threads = config.threads or max(1, cores // workers)
    return workers, threads

