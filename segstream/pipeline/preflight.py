"""Checks a run makes before any process starts, so a misconfigured run fails at once with
the fix instead of after its stages loaded."""

from __future__ import annotations

from pathlib import Path
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


FOLDER_SINKS = ("masks", "classifications", "timings", "cityscapes-results", "video")


def check_writable_folder(folder: str, what: str) -> None:
    """Fail unless ``folder`` is, or can be made, a folder this process can write in. A
    folder made for the check is removed again (a run that fails before it starts leaves
    nothing behind).

    Raises:
        ConfigError: a file in the way, a folder that cannot be made or written (read-only,
            /proc, no permission); says what was found and how to fix it.
    """
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {folder!r} cannot be a folder: {existing} is a file; give a folder path")
    made: list[Path] = []
    probe = path / ".segstream-write-check"
    try:
        for parent in reversed([path, *path.parents]):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what} {folder!r} is not writable ({exc.strerror or exc}); give a folder you can "
                          f"write in") from None
    finally:
        for parent in reversed(made):
            try:
                parent.rmdir()
            except OSError:
                pass


def check_outputs(config: "PipelineConfig") -> None:
    """Fail before starting when an output folder cannot be written (``--record``, a
    folder sink such as ``masks:DIR``, ``--cityscapes-results``).

    Raises:
        ConfigError: which setting, the path, and why.
    """
    from segstream.pipeline.graph import publish_sinks, render_sinks
    from segstream.pipeline.sinks import parse_sink

    if config.record:
        check_writable_folder(config.record, "--record")
    for uri in (*publish_sinks(config), *render_sinks(config)):
        kind, target = parse_sink(uri)
        if kind.scheme in FOLDER_SINKS and target != config.record:
            check_writable_folder(target, f"--sink {kind.scheme}:")


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
