"""The evaluation commands of ``segstream``: ``eval``, ``gt-from-color`` and ``report``,
and the checks ``run --eval`` / ``--cityscapes-results`` make before a run starts."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.engines.cityscapes import CLASS_NAMES

if TYPE_CHECKING:
    from segstream.engines.metadata import ModelMetadata
    from segstream.pipeline.config import PipelineConfig

logger = logging.getLogger(__name__)


def check_scorable(config: "PipelineConfig", metadata: "ModelMetadata") -> None:
    """Fail before starting when ``--eval`` or ``--cityscapes-results`` cannot work.

    Raises:
        ConfigError: the model does not predict Cityscapes' 19 train ids, or (``--eval``)
            no source has ground truth.
    """
    from segstream.pipeline.config import ConfigError
    from segstream.pipeline.sources import open_source
    from segstream.pipeline.streams import is_live_uri

    if not (config.eval or config.cityscapes_results):
        return
    flag = "--eval" if config.eval else "--cityscapes-results"
    if tuple(metadata.class_names) != CLASS_NAMES:
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
                      f"kitti-semantics:ROOT, kitti360:ROOT:SEQ); {', '.join(config.sources)} has none")


def cmd_eval(args: argparse.Namespace) -> int:
    """``segstream eval PRED_DIR GT_SOURCE``."""
    from segstream.evaluation.offline import EvalError, OfflineEval, evaluate
    from segstream.evaluation.summary import format_scores
    from segstream.pipeline.config import ConfigError

    try:
        summary = evaluate(OfflineEval(Path(args.predictions), args.ground_truth, args.label_ids, args.allow_missing),
                           CLASS_NAMES)
    except EvalError as exc:
        raise ConfigError(str(exc)) from None
    print(format_scores(summary))
    if summary["missing"]:
        print(f"  {len(summary['missing'])} frame(s) without a prediction were left out")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_gt_from_color(args: argparse.Namespace) -> int:
    """``segstream gt-from-color COLOR.png... [-o DIR]``."""
    from segstream.evaluation.ground_truth import convert_color_file
    from segstream.pipeline.config import ConfigError

    for name in args.files:
        try:
            print(convert_color_file(Path(name), Path(args.output) if args.output else None))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``segstream report RUN_DIR [-o DIR]``."""
    from segstream.evaluation.report import ReportError, write_report
    from segstream.pipeline.config import ConfigError

    try:
        paths = write_report(Path(args.run_dir), Path(args.output) if args.output else None)
    except ReportError as exc:
        raise ConfigError(str(exc)) from None
    for path in paths:
        print(path)
    return 0


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``eval``, ``gt-from-color`` and ``report``."""
    p = sub.add_parser("eval", help="score recorded masks against a dataset's ground truth")
    p.add_argument("predictions", metavar="PRED_DIR", help="a --record folder, or a folder of <frame>.png label maps")
    p.add_argument("ground_truth", metavar="GT_SOURCE", help="cityscapes:ROOT[:SPLIT], kitti-semantics:ROOT, "
                                                             "kitti360:ROOT:SEQ")
    p.add_argument("--label-ids", action="store_true", help="predictions hold Cityscapes label ids "
                                                            "(--cityscapes-results), not train ids")
    p.add_argument("--allow-missing", action="store_true", help="score the frames that have a prediction")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("gt-from-color", help="Cityscapes *_gtFine_color.png to *_gtFine_labelIds.png")
    p.add_argument("files", nargs="+", metavar="COLOR.png")
    p.add_argument("-o", "--output", metavar="DIR", help="write here (default: beside each file)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_gt_from_color)

    p = sub.add_parser("report", help="plots of a recorded run (latency, throughput, accuracy) as PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a --record folder (stats.json, frames.jsonl)")
    p.add_argument("-o", "--output", metavar="DIR", help="where the PNGs go (default RUN_DIR/report)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_report)
