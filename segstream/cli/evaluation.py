"""``segstream eval``, ``segstream gt-from-color`` and ``segstream report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from segstream.datasets.cityscapes import CLASS_NAMES
from segstream.errors import EvalError


def cmd_eval(args: argparse.Namespace) -> int:
    """``segstream eval PRED_DIR GT_SOURCE``."""
    if args.task == "instances":
        return _eval_instances(args)
    from segstream.evaluation.offline import OfflineEval, evaluate
    from segstream.evaluation.summary import format_scores

    summary = evaluate(OfflineEval(Path(args.predictions), args.ground_truth, args.label_ids, args.allow_missing),
                       CLASS_NAMES)
    return _report(summary, format_scores(summary), "frame(s)", args.json)


def _eval_instances(args: argparse.Namespace) -> int:
    """``segstream eval --task instances PRED_DIR coco:ROOT[:SPLIT]|cityscapes:ROOT[:SPLIT]``."""
    from segstream.evaluation.instance_offline import InstanceEval, evaluate_recorded_instances, format_instance_scores

    summary = evaluate_recorded_instances(InstanceEval(Path(args.predictions), args.ground_truth, args.allow_missing))
    return _report(summary, format_instance_scores(summary), "image(s)", args.json)


def _report(summary: dict, table: str, items: str, json_path: str | None) -> int:
    """Print the scores, say what was left out, and write them as JSON when asked."""
    print(table)
    if summary["missing"]:
        print(f"  {len(summary['missing'])} {items} without a prediction were left out")
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2))
        print(f"wrote {json_path}")
    return 0


def cmd_gt_from_color(args: argparse.Namespace) -> int:
    """``segstream gt-from-color COLOR.png... [-o DIR]``."""
    from segstream.evaluation.ground_truth import cityscapes_layout, convert_color_file

    if args.output and args.cityscapes_root:
        raise EvalError("-o and --cityscapes-root go to different places: give one")
    for name in args.files:
        try:
            if args.cityscapes_root:
                labels, image = cityscapes_layout(Path(name), Path(args.cityscapes_root), args.split)
                print(labels if image is None else f"{labels}\n{image}")
            else:
                print(convert_color_file(Path(name), Path(args.output or ".")))
        except ValueError as exc:
            raise EvalError(str(exc)) from None
    if args.cityscapes_root:
        print(f"replay and score it: segstream run --source cityscapes:{args.cityscapes_root}:{args.split} --eval")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``segstream report RUN_DIR [-o DIR]``."""
    from segstream.pipeline.telemetry.report import write_report

    paths = write_report(Path(args.run_dir), Path(args.output) if args.output else None)
    for path in paths:
        print(path)
    return 0


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``eval``, ``gt-from-color`` and ``report``."""
    p = sub.add_parser("eval", help="score recorded masks against a dataset's ground truth")
    p.add_argument("predictions", metavar="PRED_DIR", help="a --record folder, or a folder of <frame>.png label maps")
    p.add_argument("ground_truth", metavar="GT_SOURCE", help="cityscapes:ROOT[:SPLIT], kitti-semantics:ROOT, "
                                                             "kitti360:ROOT:SEQ; --task instances: coco:ROOT[:SPLIT] "
                                                             "or cityscapes:ROOT[:SPLIT] (gtFine_instanceIds.png)")
    p.add_argument("--task", choices=("semantic", "instances"), default="semantic",
                   help="semantic: mIoU of label maps; instances: COCO box and mask AP of an instance model's run")
    p.add_argument("--label-ids", action="store_true", help="predictions hold Cityscapes label ids "
                                                            "(--cityscapes-results), not train ids")
    p.add_argument("--allow-missing", action="store_true", help="score the frames that have a prediction")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("gt-from-color", help="Cityscapes *_gtFine_color.png to *_gtFine_labelIds.png")
    p.add_argument("files", nargs="+", metavar="COLOR.png")
    p.add_argument("-o", "--output", metavar="DIR", help="write the label ids here (default: the "
                   "current folder; never beside the input unless told so with -o)")
    p.add_argument("--cityscapes-root", metavar="DIR", help="instead, build a Cityscapes layout under DIR: the "
                   "label ids in gtFine/SPLIT/CITY/ and the matching *_leftImg8bit.png copied to leftImg8bit/, "
                   "ready for --source cityscapes:DIR:SPLIT --eval")
    p.add_argument("--split", default="val", help="the layout's split (default val)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_gt_from_color)

    p = sub.add_parser("report", help="plots of a recorded run (latency, throughput, accuracy) as PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a --record folder (stats.json, frames.jsonl)")
    p.add_argument("-o", "--output", metavar="DIR", help="where the PNGs go (default RUN_DIR/report)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_report)
