"""Checks a run makes before any process starts, so a misconfigured run fails at once with
the fix instead of after its stages loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from segstream.datasets.cityscapes import CLASS_NAMES
from segstream.errors import ConfigError
from segstream.pipeline.wire.choices import FlowPolicy

if TYPE_CHECKING:
    from segstream.engines.metadata import ModelMetadata
    from segstream.pipeline.config import PipelineConfig


def check_scorable(config: "PipelineConfig", metadata: "ModelMetadata") -> None:
    """Fail before starting when ``--eval`` or ``--cityscapes-results`` cannot work.

    Raises:
        ConfigError: the model does not predict Cityscapes' 19 train ids, or (``--eval``)
            no source has ground truth.
    """
    from segstream.engines.metadata import OutputKind
    from segstream.pipeline.sources import is_live_uri, open_source

    if not (config.eval or config.cityscapes_results):
        return
    flag = "--eval" if config.eval else "--cityscapes-results"
    instances = metadata.output(OutputKind.INSTANCE_COUNT) is not None
    if instances and config.cityscapes_results:
        raise ConfigError(f"--cityscapes-results writes Cityscapes' semantic label ids; {metadata.name} is an instance "
                          f"model: score it with --eval (Cityscapes instance ids) or segstream eval --task instances")
    if tuple(metadata.class_names) != CLASS_NAMES and not instances:
        raise ConfigError(f"{flag} scores Cityscapes' 19 train ids (road ... bicycle); model {metadata.name} predicts "
                          f"{len(metadata.class_names)} other classes; use a Cityscapes model such as "
                          f"espnet-cityscapes")
    if not config.eval:
        return
    for uri in config.sources:
        if is_live_uri(uri):
            continue
        source = open_source(uri)
        has_gt = bool(source.gt_kind)
        source.close()
        if has_gt:
            return
    raise ConfigError(f"--eval needs a source whose frames carry ground truth (cityscapes:ROOT:SPLIT with gtFine, "
                      f"kitti-semantics:ROOT, kitti360:ROOT:SEQ; for an instance model cityscapes:ROOT:SPLIT with "
                      f"gtFine_instanceIds.png); {', '.join(config.sources)} has none")


def default_policy(sources: tuple[str, ...]) -> FlowPolicy:
    """Lossless for files, folders and datasets; live as soon as one source is live.

    Files are opened once here, so a missing one is a clear error before any process
    starts; streams and cameras are not (connecting is the capture stage's job). A run
    with no sources yet (``--api``: they come later) is live, like a service of cameras.
    """
    from segstream.pipeline.sources import is_live_uri, open_source

    live = not sources
    for uri in sources:
        if is_live_uri(uri):
            live = True
            continue
        source = open_source(uri)
        live = live or source.live
        source.close()
    return FlowPolicy.LIVE if live else FlowPolicy.LOSSLESS
