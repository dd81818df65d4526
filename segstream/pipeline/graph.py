"""The process graph of a run: which stages, their endpoints, rings and readers.

    capture-i --> preprocess --> infer --> publish --(PUB)--> consumers
        \\                                    |
         `------- frame (by reference) ----> render --> overlay.mp4

Pure planning: no processes, no sockets. The supervisor turns the plan into processes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from segstream.engines.metadata import ModelMetadata
from segstream.engines.resolve import InferenceModel
from segstream.pipeline.config import ConfigError, PipelineConfig
from segstream.pipeline.policies import FlowPolicy
from segstream.pipeline.stage import StageKind, StageSpec
from segstream.pipeline.transport import ipc_endpoint

logger = logging.getLogger(__name__)

# Ring slots per stage output, (lossless, live). Lossless rings are the flow-control
# window; live rings must outlast the pipeline's latency so render still finds the frame.
RING_SLOTS: dict[StageKind, tuple[int, int]] = {
    StageKind.CAPTURE: (8, 32),
    StageKind.PREPROCESS: (4, 8),
    StageKind.INFER: (8, 32),  # label maps (and confidence); live: also the frames they were made from
    StageKind.PUBLISH: (8, 16),
}


LIGHT_STAGE_NICE = 10  # light stages yield the cores to inference (see StageSpec.nice)
GPU_AUTO_WORKERS = 2
MAX_AUTO_WORKERS = 4


@dataclass(frozen=True)
class RunPlan:
    """Stage specs plus the supervisor's own endpoints."""

    run_id: str
    policy: FlowPolicy
    stages: tuple[StageSpec, ...]
    control: str
    commands: str
    per_source_dirs: bool


def source_ids(sources: tuple[str, ...]) -> list[str]:
    """Unique ids for the sources, from their names (``clip``, ``clip-1``...)."""
    from segstream.pipeline.sources import default_source_id

    ids: list[str] = []
    for uri in sources:
        base = default_source_id(uri)
        candidate, k = base, 1
        while candidate in ids:
            candidate = f"{base}-{k}"
            k += 1
        ids.append(candidate)
    return ids


def plan_run(config: PipelineConfig, policy: FlowPolicy, run_id: str, run_dir: Path, model: InferenceModel) -> RunPlan:
    """Lay out the stages of one run."""
    metadata = model.metadata
    port = iter(range(config.tcp_base_port, config.tcp_base_port + 100))

    def endpoint(name: str) -> str:
        if config.transport == "tcp":
            return f"tcp://{config.tcp_host}:{next(port)}"
        return ipc_endpoint(run_dir, f"{name}.sock")

    live = policy is FlowPolicy.LIVE
    render = config.render if config.render is not None else (
        config.record is not None or bool(config.view) or bool(config.rtsp_out) or config.display)
    per_source = len(config.sources) > 1
    control, commands = endpoint("control"), endpoint("commands")
    meta = _metadata_dict(metadata)
    delay = config.stage_delay_ms
    rate = config.rate or ("native" if live else "max")

    def spec(name: str, kind: StageKind, **kw: object) -> StageSpec:
        slots = RING_SLOTS.get(kind, (0, 0))[1 if live else 0]
        # Inference keeps its priority; so does a paced capture, whose timing counts.
        full_priority = kind is StageKind.INFER or (kind is StageKind.CAPTURE and rate != "max")
        return StageSpec(name=name, kind=kind, run_id=run_id, policy=policy, control=control, commands=commands,
                         ring_slots=slots, nice=0 if full_priority else LIGHT_STAGE_NICE, sources=len(config.sources),
                         delay_ms=float(delay.get(kind.value, 0.0)), **kw)  # type: ignore[arg-type]

    stages: list[StageSpec] = []
    capture_outputs = []
    for i, (uri, sid) in enumerate(zip(config.sources, source_ids(config.sources))):
        out = endpoint(f"capture-{i}")
        capture_outputs.append(out)
        stages.append(spec(f"capture-{i}", StageKind.CAPTURE, outputs=(out,), ring_readers=2 if render else 1,
                           settings={"source": uri, "source_id": sid, "max_frames": config.max_frames,
                                     "rate": rate, "loop": config.loop, "live": dict(config.live)}))
    workers, threads = worker_layout(config, policy, model.choice.device)
    pre_outs = tuple(endpoint(f"preprocess-{k}") for k in range(workers))
    infer_outs = tuple(endpoint(f"infer-{k}") for k in range(workers))
    publish_out = (endpoint("publish"),) if render else ()
    stages.append(spec("preprocess", StageKind.PREPROCESS, inputs=tuple(capture_outputs), outputs=pre_outs,
                       ring_readers=1, reader_ids={"frame": 0},
                       settings={"metadata": meta, "images": model.choice.takes_images}))
    for k in range(workers):
        # The workers share reader id 0 of the tensor ring and each write a labels ring
        # read by publish (reader id 0 of each).
        stages.append(spec("infer" if workers == 1 else f"infer-{k}", StageKind.INFER, inputs=(pre_outs[k],),
                           outputs=(infer_outs[k],), ring_readers=1, reader_ids={"input": 0},
                           reader_in_order=workers == 1,
                           settings={"model": model.path, "backend": model.choice.backend,
                                     "engine": model.engine_options(threads), "confidence": config.confidence}))
    stages.append(spec("publish", StageKind.PUBLISH, inputs=infer_outs, outputs=publish_out,
                       eos_per_source=workers, reorder=workers > 1,
                       ring_readers=1 if render else 0, reader_ids={"labels": 0},
                       settings={"endpoint": config.publish or None, "record": config.record,
                                 "per_source_dirs": per_source, "ignore_index": metadata.ignore_index,
                                 "model": metadata.name, "mask_encoding": config.mask_encoding,
                                 "mask_resolution": config.mask_resolution,
                                 "lossless_endpoint": config.publish_lossless or None, "eval": config.eval,
                                 "cityscapes_results": config.cityscapes_results or None,
                                 "classes": metadata.num_classes}))
    if render:
        stages.append(spec("render", StageKind.RENDER, inputs=publish_out, reader_ids={"frame": 1, "mask": 0},
                           settings={"metadata": meta, "record": config.record, "per_source_dirs": per_source,
                                     "opacity": config.opacity, "legend": config.legend,
                                     "mode": config.render_mode, "view": config.view or None,
                                     "rtsp_out": config.rtsp_out or None, "display": config.display,
                                     "classes": class_ids(config.render_classes, metadata)}))
    return RunPlan(run_id, policy, tuple(stages), control, commands, per_source)


def class_ids(names: tuple[str, ...], metadata: ModelMetadata) -> list[int] | None:
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
    return ids


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


def _metadata_dict(metadata: ModelMetadata) -> dict[str, object]:
    return json.loads(metadata.to_json())
